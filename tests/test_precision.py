"""Reduced precision: bf16 UNet/CLIP on the CPU stays close to fp32; the VAE always runs in fp32 (as sgm)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import randomize_
from kinetograph.io.checkpoint import save_original
from kinetograph.models.svd import SVD
from kinetograph.pipeline.image_to_video import ImageToVideo
from kinetograph.presets import PRESETS


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = randomize_(SVD(PRESETS["tiny"].model), seed=8, std=0.03).eval()
    return save_original(model, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", "tiny")


def test_bfloat16_close_to_float32_and_vae_stays_float32(checkpoint):
    from skimage import data

    photo = data.astronaut()
    kw = dict(height=64, width=64, num_frames=3, num_inference_steps=3, seed=2)
    full = ImageToVideo.from_checkpoint(checkpoint)
    half = ImageToVideo.from_checkpoint(checkpoint, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    assert {p.dtype for p in half.model.unet.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in half.model.vae.parameters()} == {torch.float32}
    a, b = full(photo, **kw).frames.astype(np.int16), half(photo, **kw).frames.astype(np.int16)
    diff = np.abs(a - b)
    assert diff.mean() < 3.0, diff.mean()  # bf16 keeps ~3 significant digits
    assert not np.array_equal(a, b)  # it really ran in bf16
