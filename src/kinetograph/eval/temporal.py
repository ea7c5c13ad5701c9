"""Temporal consistency: flicker and flow-warping error.

Flicker looks at whole-frame statistics that should change slowly in a clean video: mean
luminance (global brightness pumping) and high-frequency energy (detail that appears and
vanishes, "boiling" texture). Warping error (Lai et al. 2018, "Learning Blind Video Temporal
Consistency") predicts frame t+1 by warping frame t along the optical flow and measures what
the motion does not explain, ignoring occluded pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from kinetograph.eval.clips import check_video, luminance
from kinetograph.eval.flow import FlowConfig, VideoFlow, sample, video_flow
from kinetograph.eval.motion import pair_fits


@dataclass(frozen=True)
class Flicker:
    luminance: float  # mean |Y_{t+1} - Y_t| of the frame-mean luma, gray levels (0-255) per frame
    high_frequency: float  # mean |E_{t+1} - E_t| / mean E of high-frequency energy E, relative
    # The same with each frame compared to the mean of its two neighbours instead of the previous
    # frame: a steady trend (a pan revealing a darker sky, a zoom enlarging detail) cancels, an
    # oscillation does not. Zero for clips of two frames.
    luminance_jitter: float  # mean |Y_t - (Y_{t-1} + Y_{t+1}) / 2|, gray levels
    high_frequency_jitter: float  # mean |E_t - (E_{t-1} + E_{t+1}) / 2| / mean E


def high_frequency_energy(frames: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Per-frame mean squared luma detail Y - GaussianBlur(Y, sigma), shape (t,)."""
    energies = []
    for y in luminance(frames):
        detail = y - cv2.GaussianBlur(y, (0, 0), sigma)
        energies.append(float(np.mean(detail**2)))
    return np.array(energies)


def _jitter(x: np.ndarray) -> float:
    if len(x) < 3:
        return 0.0
    return float(np.abs(x[1:-1] - (x[:-2] + x[2:]) / 2).mean())


def flicker(video: np.ndarray, sigma: float = 1.0) -> Flicker:
    """Frame-to-frame change of mean luminance and of high-frequency energy (lower is steadier)."""
    check_video(video, min_frames=2)
    mean_luma = luminance(video).mean(axis=(1, 2))  # (t,)
    energy = high_frequency_energy(video, sigma)  # (t,)
    scale = max(float(energy.mean()), 1e-8)
    return Flicker(
        luminance=float(np.abs(np.diff(mean_luma)).mean()),
        high_frequency=float(np.abs(np.diff(energy)).mean() / scale),
        luminance_jitter=_jitter(mean_luma),
        high_frequency_jitter=_jitter(energy) / scale,
    )


def warping_error(
    video: np.ndarray, flow: VideoFlow | None = None, cfg: FlowConfig = FlowConfig()
) -> float:
    """Mean squared RGB error (values in [0, 1]) between frame t+1 and frame t warped onto it.

    For each pixel p of frame t+1 the backward flow b (t+1 -> t) gives its source p + b(p) in
    frame t; pixels that fail the forward-backward test are occluded or new and are skipped.
    Computed at flow resolution; averaged over pairs.
    """
    flow = flow if flow is not None else video_flow(video, cfg)
    frames = flow.frames.astype(np.float32) / 255.0
    errors = []
    for t, pair in enumerate(flow.pairs):
        predicted = sample(frames[t], pair.backward)  # frame t on frame t+1's grid
        squared = np.mean((frames[t + 1] - predicted) ** 2, axis=-1)  # (h, w)
        mask = (
            pair.backward_valid if pair.backward_valid.any() else np.ones_like(pair.backward_valid)
        )
        errors.append(float(squared[mask].mean()))
    return float(np.mean(errors))


def carry_over(video: np.ndarray, flow: VideoFlow | None = None, cfg: FlowConfig = FlowConfig()) -> float:
    """PSNR (dB, at flow resolution) of the last frame against frame 0 moved by the camera.

    The camera motion is each frame pair's similarity fit (`motion.pair_fits`, the one the
    motion class reads), chained from frame 0 to the last frame; frame 0 warped by that chain is
    what a camera carrying the picture along would show. A faithful move keeps it (a rendered pan
    over a photo: ~30 dB and up), a still shot scores its own steadiness, and a video that smears
    the picture while moving scores low, which flicker and warping error miss (a smear is steady).
    Only pixels that frame 0 covers count. 100 dB for an exact copy.
    """
    flow = flow if flow is not None else video_flow(video, cfg)
    frames = flow.frames.astype(np.float64)
    h, w = frames.shape[1:3]
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    chain = np.eye(3)
    for tx, ty, s, r in pair_fits(flow):
        a = np.array([[1 + s, -r], [r, 1 + s]])  # p -> p + f(p), about the centre c
        step = np.eye(3)
        step[:2, :2], step[:2, 2] = a, c + np.array([tx, ty]) - a @ c
        chain = step @ chain
    moved = cv2.warpAffine(frames[0], chain[:2], (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    covered = cv2.warpAffine(np.ones((h, w)), chain[:2], (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    inside = covered > 0.999
    if inside.mean() < 0.05:  # the camera left frame 0 behind: nothing to compare
        return float("nan")
    mse = float(np.mean((frames[-1][inside] - moved[inside]) ** 2))
    return 100.0 if mse == 0 else float(10 * np.log10(255.0**2 / mse))
