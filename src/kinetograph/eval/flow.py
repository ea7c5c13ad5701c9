"""Dense optical flow between consecutive frames (`kinetograph.flow.farneback`) and where it can be trusted.

Convention (as in `kinetograph.flow`): a flow field `f` from frame a to frame b, shape (h, w, 2),
holds (dx, dy) in pixels such that the content at (x, y) in a is found at (x + dx, y + dy) in b;
x grows rightwards and y downwards. A pixel is trusted ("valid") when the forward and backward flows agree (the
forward-backward consistency test of Sundaram et al. 2010) and its match lands inside the
frame: this removes occluded and newly revealed content, e.g. the strip a pan brings in.
Motion statistics also need texture: in flat regions (sky, walls) flow is ill-posed and
Farneback returns ~0 there, which the consistency test cannot catch, so `PairFlow.textured`
marks pixels whose structure tensor has a clear minimum eigenvalue (Shi and Tomasi 1994).

Flow is computed on frames downscaled so their longer side is at most `FlowConfig.max_side`
(cost); `VideoFlow.scale` converts flow-grid pixels to output pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from kinetograph.eval.clips import check_video, luminance
from kinetograph.flow import FarnebackConfig, farneback


@dataclass(frozen=True)
class FlowConfig:
    max_side: int = 512  # frames are downscaled (area) to this longer side before flow
    # Farneback settings (meanings in kinetograph.flow.FarnebackConfig); levels follow coarsest_side.
    winsize: int = FarnebackConfig.winsize
    iterations: int = FarnebackConfig.iterations
    poly_n: int = FarnebackConfig.poly_n
    poly_sigma: float = FarnebackConfig.poly_sigma
    coarsest_side: int = FarnebackConfig.coarsest_side
    fb_alpha: float = 0.01  # consistency: |f + b|^2 < alpha (|f|^2 + |b|^2) + beta
    fb_beta: float = 0.5
    min_texture: float = 1e-4  # min structure-tensor eigenvalue (gray in [0, 1], 5x5 block)

    @property
    def farneback(self) -> FarnebackConfig:
        return FarnebackConfig(
            winsize=self.winsize, iterations=self.iterations, poly_n=self.poly_n,
            poly_sigma=self.poly_sigma, coarsest_side=self.coarsest_side,
        )


@dataclass(frozen=True)
class PairFlow:
    """Flows between frames t and t+1, on the flow grid (h, w)."""

    forward: np.ndarray  # (h, w, 2) t -> t+1
    backward: np.ndarray  # (h, w, 2) t+1 -> t
    forward_valid: np.ndarray  # (h, w) bool on frame t's grid
    backward_valid: np.ndarray  # (h, w) bool on frame t+1's grid
    textured: np.ndarray  # (h, w) bool on frame t's grid: enough texture for flow to be measurable


@dataclass(frozen=True)
class VideoFlow:
    frames: np.ndarray  # (t, h, w, 3) uint8, the video at flow resolution
    pairs: list[PairFlow]  # t - 1 pairs
    scale: float  # output pixels per flow-grid pixel (>= 1)


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return xs, ys


def sample(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """`image` looked up at (x + dx, y + dy) for every grid pixel (bilinear, edge-replicated).

    With `flow` from frame a to frame b and `image` = frame b this warps b onto a's grid.
    """
    h, w = flow.shape[:2]
    xs, ys = _grid(h, w)
    return cv2.remap(
        image,
        xs + flow[..., 0],
        ys + flow[..., 1],
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )


def consistent(
    flow_ab: np.ndarray, flow_ba: np.ndarray, cfg: FlowConfig = FlowConfig()
) -> np.ndarray:
    """Bool (h, w) on a's grid: the match lands inside b and b's flow leads back (Sundaram 2010)."""
    h, w = flow_ab.shape[:2]
    xs, ys = _grid(h, w)
    x2, y2 = xs + flow_ab[..., 0], ys + flow_ab[..., 1]
    inside = (x2 >= 0) & (x2 <= w - 1) & (y2 >= 0) & (y2 <= h - 1)
    back = sample(flow_ba, flow_ab)  # b's flow at the matched point
    round_trip = np.sum((flow_ab + back) ** 2, axis=-1)
    tolerance = (
        cfg.fb_alpha * (np.sum(flow_ab**2, axis=-1) + np.sum(back**2, axis=-1)) + cfg.fb_beta
    )
    return inside & (round_trip < tolerance)


def textured(gray: np.ndarray, cfg: FlowConfig = FlowConfig()) -> np.ndarray:
    """Bool (h, w): pixels of a gray image (0-255) where the structure tensor's smaller
    eigenvalue exceeds `cfg.min_texture`, i.e. where flow is determined in both directions."""
    eig = cv2.cornerMinEigenVal((gray / 255.0).astype(np.float32), 5, 3)
    return eig > cfg.min_texture


def downscale(video: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """The video resized (area) so its longer side is at most `max_side`, and the scale factor."""
    t, h, w, _ = video.shape
    scale = max(h, w) / max_side
    if scale <= 1:
        return video, 1.0
    size = (max(1, round(w / scale)), max(1, round(h / scale)))
    small = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in video])
    return small, w / size[0]


def video_flow(video: np.ndarray, cfg: FlowConfig = FlowConfig()) -> VideoFlow:
    """Forward and backward flow with validity masks for every consecutive frame pair.

    Two Farneback calls per pair; compute once and pass the result to every flow-based metric.
    """
    check_video(video, min_frames=2)
    frames, scale = downscale(video, cfg.max_side)
    gray = luminance(frames)  # (t, h, w)
    pairs = []
    for a, b in zip(gray[:-1], gray[1:]):
        fwd, bwd = farneback(a, b, cfg.farneback), farneback(b, a, cfg.farneback)
        pairs.append(
            PairFlow(
                fwd, bwd, consistent(fwd, bwd, cfg), consistent(bwd, fwd, cfg), textured(a, cfg)
            )
        )
    return VideoFlow(frames=frames, pairs=pairs, scale=scale)
