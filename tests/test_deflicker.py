"""pipeline/deflicker.py: each frame's mean colour moved onto the clip's local linear trend."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from conftest import randomize_
from kinetograph.data.camera_motion import CameraMotionConfig, CameraMove, render
from kinetograph.eval.evaluate import evaluate_video
from kinetograph.io.checkpoint import save_original
from kinetograph.models.svd import SVD
from kinetograph.pipeline.deflicker import deflicker
from kinetograph.pipeline.image_to_video import ImageToVideo
from kinetograph.presets import PRESETS


def test_by_hand():
    """Means 0, 3, 0 with radius 2: frame 1's line through (-1, 0), (0, 3), (1, 0) is flat at 1;
    frame 2's through (-2, 0), (-1, 3), (0, 0) too. Frame 0 is kept unless asked, and then its
    line through (0, 0), (1, 3), (2, 0) is also flat at 1."""
    x = torch.zeros(3, 2, 4, 5)
    x[1] += 3.0
    x[:, 1] += 10.0  # a second channel, offset: fitted on its own
    x[0, 0, 0, 0] = 0.5  # pixels keep their differences within a frame
    x[0, 0, 0, 1] = -0.5
    out = deflicker(x)
    assert torch.equal(out[0], x[0])
    torch.testing.assert_close(out[1:, 0].mean(dim=(1, 2)), torch.tensor([1.0, 1.0], dtype=torch.float32))
    torch.testing.assert_close(out[1:, 1].mean(dim=(1, 2)), torch.tensor([11.0, 11.0]))
    torch.testing.assert_close(out - out.mean(dim=(2, 3), keepdim=True), x - x.mean(dim=(2, 3), keepdim=True))
    torch.testing.assert_close(deflicker(x, keep_first=False)[0, 0].mean(), torch.tensor(1.0))
    assert torch.equal(deflicker(x[:2]), x[:2])  # two frames: no trend to fit


def _pan(frames: int = 14) -> np.ndarray:
    """A rendered pan over a real photo, (t, H, W, 3) uint8: what the training clips are."""
    cfg = CameraMotionConfig(height=96, width=96, num_frames=frames, fps=8.0)
    return render(data.astronaut(), CameraMove("pan_right", 20.0), cfg, np.random.default_rng(0))


def _tensor(v: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(v).permute(0, 3, 1, 2).double()


def _uint8(x: torch.Tensor) -> np.ndarray:
    return x.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def test_a_linear_brightness_ramp_passes_and_jitter_on_a_real_pan_goes():
    clip = _tensor(_pan())
    # A still frame growing 3 gray levels brighter each frame: a trend, kept exactly.
    still = clip[:1].repeat(14, 1, 1, 1) * 0.8 + 3.0 * torch.arange(14.0, dtype=torch.float64)[:, None, None, None]
    torch.testing.assert_close(deflicker(still), still)
    jitter = torch.tensor(np.random.default_rng(1).uniform(-3, 3, size=(14, 1, 1, 1)))
    jitter[0] = 0
    noisy = clip + jitter
    fixed = deflicker(noisy)
    before, after, clean = (evaluate_video(_uint8(v)) for v in (noisy, fixed, clip))
    assert after.flicker_luminance_jitter < 0.3 * before.flicker_luminance_jitter
    assert after.flicker_luminance_jitter < clean.flicker_luminance_jitter + 0.5
    assert (fixed - clip).abs().mean() < 0.5 * (noisy - clip).abs().mean()  # measured 0.31x
    assert torch.equal(fixed[0], noisy[0])


def test_pipeline_deflickers_after_decoding_when_asked_and_the_presets_choose(tmp_path):
    """Only the default model's preset deflickers by default (SVD's behaviour elsewhere). With
    it, frame 0 is the same and every other frame moves by one colour per channel (the uint8
    rounding aside); the motion is the same."""
    assert PRESETS["mini256"].sampling.deflicker
    assert not any(PRESETS[n].sampling.deflicker for n in ("svd", "svd_xt", "svd_xt_1_1", "svd_image_decoder", "tiny"))
    model = randomize_(SVD(PRESETS["tiny"].model), seed=5).eval()
    pipe = ImageToVideo.from_checkpoint(save_original(model, tmp_path / "tiny.safetensors", "tiny"))
    photo = Image.fromarray(data.coffee()).resize((64, 64), Image.LANCZOS)
    kw = dict(height=64, width=64, num_frames=6, num_inference_steps=3, seed=2)
    plain = pipe(photo, **kw).frames.astype(np.int16)
    assert np.array_equal(plain, pipe(photo, deflicker=False, **kw).frames)  # the tiny preset: off
    steady = pipe(photo, deflicker=True, **kw).frames.astype(np.int16)
    assert np.array_equal(steady[0], plain[0])
    diff = steady - plain  # (t, H, W, 3)
    per_frame = np.median(diff.reshape(6, -1, 3), axis=1)  # (t, 3)
    assert np.abs(diff - per_frame[:, None, None, :]).max() <= 1  # one shift per frame and channel
    assert np.abs(per_frame[1:]).max() >= 1  # a random model's frames do jitter
