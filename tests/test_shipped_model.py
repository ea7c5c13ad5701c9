"""The shipped default model itself (src/kinetograph/models/assets/kinetograph-mini256.safetensors):
it is there, matches its recorded SHA-256, loads as preset `mini256`, and a short generation on a
photo no training clip used moves the camera the way the prompt says, in wordings no caption used:
the network alone (camera prior off) and, the preset's default, from the photo moved as the camera
head reads the prompt (the camera prior), which must carry the picture through the move.

The full measurement (28 text cases, 20 bucket cases at 256x256) is `python bench/default_model.py
--eval-only`; this is the part of it that fits in CI: one photo at the shipped 256x256, 14 frames,
12 sampler steps (~10 s a video on two cores).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data as skdata

from kinetograph import default_model
from kinetograph.eval.fidelity import psnr
from kinetograph.eval.motion import camera_motion
from kinetograph.eval.temporal import carry_over
from kinetograph.pipeline.image_to_video import ImageToVideo
from kinetograph.pipeline.preprocess import load_image, resize_and_crop

pytestmark = pytest.mark.skipif(not default_model.SHA256, reason="this version ships no default model")

SIZE = 256
STEPS = 12


@pytest.fixture(scope="module")
def pipe() -> ImageToVideo:
    path = default_model.default_checkpoint()  # checks the recorded SHA-256
    return ImageToVideo.from_checkpoint(path, dtype=torch.float32)


def test_the_shipped_file_is_there_and_small():
    assert default_model.PATH.is_file(), "the recorded hash names a file this checkout lacks"
    assert default_model.sha256(default_model.PATH) == default_model.SHA256
    assert default_model.PATH.stat().st_size < 60e6  # committed as a normal git file


def test_it_loads_as_mini256_in_float16(pipe: ImageToVideo):
    from kinetograph.io.safetensors import load_state_dict

    assert pipe.preset.name == "mini256"
    tensors = load_state_dict(default_model.PATH)
    assert {t.dtype for t in tensors.values()} == {torch.float16}


# Held-out photo (the eval suites' `coffee`), one wording per move that no caption uses.
CASES = [
    ("the view slides over to the left", "left"),
    ("the view slides over to the right", "right"),
    ("the view tilts up toward the top", "up"),
    ("the view tilts down toward the bottom", "down"),
    ("a still shot of it", "static"),
]
# Zooms: 6 of the text suite's 8 zoom cases pass at 256x256 and 20 steps (docs/model-card.md), some
# near the evaluation's static threshold (0.36 px/frame); at 128x128 and 12 steps they move less,
# so for them this asserts the way only, `CameraMotion.direction`, and the model card carries the
# misses.
ZOOMS = [
    ("the shot pushes in closer", "zoom_in"),
    ("the shot pulls back", "zoom_out"),
]
# Frame 0 against the photo: pinned to it (the preset's default), so it is the autoencoder's round
# trip (22.1 dB on coffee at 128x128, 24.6 at 256; generated instead it kept 18.8-23.5 here).
MIN_PSNR = 21.5


def generate(pipe: ImageToVideo, prompt: str, camera_prior: float | None = 0.0) -> np.ndarray:
    """The video's frames; by default the network alone (camera prior off)."""
    photo = resize_and_crop(load_image(skdata.coffee()), SIZE, SIZE)
    video = pipe(photo, prompt, height=SIZE, width=SIZE, num_inference_steps=STEPS, seed=0, camera_prior=camera_prior)
    assert video.frames.shape == (14, SIZE, SIZE, 3)
    assert psnr(np.asarray(photo), video.frames[0]) > MIN_PSNR
    return video.frames


@pytest.mark.parametrize("prompt,expected", CASES)
def test_a_short_generation_moves_as_prompted(pipe: ImageToVideo, prompt: str, expected: str):
    motion = camera_motion(generate(pipe, prompt))
    assert motion.label.value == expected, motion


@pytest.mark.parametrize("prompt,expected", ZOOMS)
def test_a_zoom_goes_the_prompted_way(pipe: ImageToVideo, prompt: str, expected: str):
    motion = camera_motion(generate(pipe, prompt))
    assert motion.direction.value == expected, motion


def test_the_presets_camera_prior_moves_as_read_and_carries_the_picture(pipe: ImageToVideo):
    """The preset's default samples from the photo moved as the head reads the prompt: every move
    of CASES and ZOOMS goes the prompted way, and a pan keeps the picture it carries (carry-over,
    the last frame against frame 0 moved by the measured camera) far better than the network alone,
    which smears it (docs/model-card.md)."""
    assert pipe.preset.sampling.camera_prior > 0
    for prompt, expected in CASES + ZOOMS:
        frames = generate(pipe, prompt, camera_prior=None)
        assert camera_motion(frames).label.value == expected, prompt
        if expected == "left":
            alone = carry_over(generate(pipe, prompt))
            assert carry_over(frames) > alone + 4.0, (carry_over(frames), alone)


def test_the_transport_probe_measures_detail_lost_to_noise_and_travel():
    """bench/default_model.py --transport (the model card's account of the smear), on one held-out
    photo at 128x128: the autoencoder keeps a rendered move, the one-step denoiser keeps less of
    it from more noise and from further travel, and nowhere falls to noise (which a clip and
    its conditioning out of step, or frames compared out of order, would give)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "default_model.py"
    spec = importlib.util.spec_from_file_location("bench_default_model", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.transport_probe(default_model.PATH, size=128, photos=("coffee",))
    assert set(rows) == {"pan_left", "zoom_in"}
    for move, r in rows.items():
        assert all(r[f"autoencoder_frame_{f}"] > 22 for f in (1, 6, 13)), (move, r)
        assert r["sigma_0.3_frame_1"] > r["sigma_1_frame_13"], (move, r)
        assert all(r[f"autoencoder_frame_{f}"] > r[f"sigma_1_frame_{f}"] for f in (1, 6, 13)), (move, r)
        assert min(r.values()) > 16, (move, r)  # coffee: 18.0 at worst; a frame against the wrong one: 12-15


def test_a_prompt_that_names_no_camera_move_gets_none(pipe: ImageToVideo):
    """The camera gate: prompts that describe only the picture or things moving in it, written
    blind (tests/data/scene_prompts.json), ask for no move, so neither the prior nor the caption
    forces one on them; the head alone read a move into most of them. The prompts of CASES and
    ZOOMS still ask for theirs."""
    import json
    from pathlib import Path

    held = json.loads((Path(__file__).parent / "data" / "scene_prompts.json").read_text())
    readings = [pipe.camera_reading(t) for t in held["scene"] + held["subject_motion"]]
    assert np.mean([r.asked is None for r in readings]) >= 0.95
    assert np.mean([r.p >= 0.5 for r in readings]) >= 0.5  # the head alone
    assert pipe.camera_prior_plan("a cat on a sofa", None, None) == (0.0, None)
    assert pipe.camera_caption("a cat on a sofa") is None
    moves = {"left": "pan_left", "right": "pan_right", "up": "tilt_up", "down": "tilt_down", "zoom_in": "zoom_in",
             "zoom_out": "zoom_out", "static": "static"}
    for prompt, expected in CASES + ZOOMS:
        assert pipe.camera_reading(prompt).asked == moves[expected], prompt
