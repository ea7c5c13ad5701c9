"""The shipped default model itself (src/kinetograph/models/assets/kinetograph-mini256.safetensors):
it is there, matches its recorded SHA-256, loads as preset `mini256`, and a short generation on a
photo no training clip used moves the camera the way the prompt says, in wordings no caption used.

The full measurement (28 text cases, 20 bucket cases at 256x256) is `python bench/default_model.py
--eval-only`; this is the part of it that fits in CI: 128x128, 14 frames, few sampler steps.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data as skdata

from kinetograph import default_model
from kinetograph.eval.fidelity import psnr
from kinetograph.eval.motion import camera_motion
from kinetograph.pipeline.image_to_video import ImageToVideo
from kinetograph.pipeline.preprocess import load_image, resize_and_crop

pytestmark = pytest.mark.skipif(not default_model.SHA256, reason="this version ships no default model")

SIZE = 128
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


# Held-out photo (the eval suites' `coffee`), one wording per direction that no caption uses.
CASES = [
    ("the view slides over to the left", "left"),
    ("the view slides over to the right", "right"),
    ("the shot pushes in closer", "zoom_in"),
]


@pytest.mark.parametrize("prompt,expected", CASES)
def test_a_short_generation_moves_as_prompted(pipe: ImageToVideo, prompt: str, expected: str):
    photo = resize_and_crop(load_image(skdata.coffee()), SIZE, SIZE)
    video = pipe(photo, prompt, height=SIZE, width=SIZE, num_inference_steps=STEPS, seed=0)
    assert video.frames.shape == (14, SIZE, SIZE, 3)
    motion = camera_motion(video.frames)
    assert motion.label.value == expected, motion
    assert psnr(np.asarray(photo), video.frames[0]) > 20
