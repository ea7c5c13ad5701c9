"""Evaluation: what a generated video is worth (`kinetograph eval`, see docs/evaluation.md).

Modules, read in this order:
  clips.py       uint8 (t, h, w, 3) videos: checks, reading (.npy, frame folders; files via io.video), fitting the input image
  fidelity.py    PSNR / SSIM of frame 0 against the conditioning image
  flow.py        Farneback optical flow, forward-backward consistency, texture mask
  temporal.py    flicker (luminance, high-frequency energy) and warping error
  motion.py      mean flow magnitude and the dominant camera-motion class (the convention)
  prompts.py     prompt text -> expected camera-motion class
  control.py     control fidelity: class accuracy, Spearman(bucket, magnitude)
  fvd.py         I3D (piergiaj/VideoGPT layout) features and the Frechet distance
  clip_score.py  CLIP text-video score and frame consistency from supplied embedders
  synthetic.py   clips with known camera motion over a still photo (ground truth)
  evaluate.py    all per-video metrics with one flow computation
  suite.py       suite files (images x prompts x buckets x seeds); suites/default.json
  report.py      contact sheets, plots, report.json, report.html
  cli.py         eval_command (generation injected) and the Typer command

Submodules are imported explicitly; importing `kinetograph.eval` loads nothing heavy.
"""
