"""First-frame fidelity: how closely frame 0 reproduces the conditioning image.

SVD is asked to start from the input image, so frame 0 is compared with the image brought to
the output size (`fit_image`: cover-resize + center crop). PSNR over RGB with peak 255; SSIM of
Wang et al. (2004) with its standard settings (Gaussian window sigma 1.5, population
covariances), averaged over the RGB channels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from skimage.metrics import structural_similarity

from kinetograph.errors import InputError
from kinetograph.eval.clips import check_image, check_video, fit_image

PrepareImage = Callable[[np.ndarray, tuple[int, int]], np.ndarray]


def _same_shape(a: np.ndarray, b: np.ndarray) -> None:
    check_image(a, "first image")
    check_image(b, "second image")
    if a.shape != b.shape:
        raise InputError(f"images differ in size: {a.shape} vs {b.shape}; resize one first")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 RGB images; inf when they are identical."""
    _same_shape(a, b)
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(255.0**2 / mse))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity in [-1, 1] of two uint8 RGB images (Wang et al. 2004)."""
    _same_shape(a, b)
    if min(a.shape[:2]) < 7:
        raise InputError(f"SSIM needs images of at least 7x7 pixels, got {a.shape[:2]}")
    value = structural_similarity(
        a,
        b,
        channel_axis=-1,
        data_range=255,
        gaussian_weights=True,  # the 11x11, sigma 1.5 window of the paper
        sigma=1.5,
        use_sample_covariance=False,
    )
    return float(value)


@dataclass(frozen=True)
class FirstFrameFidelity:
    psnr: float  # dB, inf when frame 0 equals the fitted image
    ssim: float


def first_frame_fidelity(
    video: np.ndarray, image: np.ndarray, prepare: PrepareImage = fit_image
) -> FirstFrameFidelity:
    """PSNR and SSIM of frame 0 against the conditioning image at the output size.

    `prepare(image, (h, w))` brings the image to the output size; pass the pipeline's own
    preprocessing when it differs from cover-resize + center crop.
    """
    check_video(video)
    target = prepare(check_image(image, "conditioning image"), video.shape[1:3])
    return FirstFrameFidelity(psnr=psnr(video[0], target), ssim=ssim(video[0], target))
