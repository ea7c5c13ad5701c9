"""Motion: how much the content moves, and which way the camera went.

Convention (stated once, used everywhere): classes name the CAMERA's motion, measured from the
CONTENT's optical flow, which moves the opposite way.
- left:  the camera pans/trucks left   -> content moves right (mean flow dx > 0)
- right: the camera pans/trucks right  -> content moves left  (dx < 0)
- up:    the camera tilts/cranes up    -> content moves down  (dy > 0; image y grows downwards)
- down:  the camera tilts/cranes down  -> content moves up    (dy < 0)
- zoom_in:  content expands from the centre (flow divergence > 0)
- zoom_out: content contracts towards the centre (divergence < 0)
- static: neither translation nor zoom reaches `MotionConfig.static_threshold`.
`CameraMotion.direction` is the class at a tenth of the threshold (static only for no motion to
speak of): it tells a model that moves the right way too slowly from one that moves the wrong way.

Each frame pair's flow is fitted, over the trusted pixels, with a similarity motion about the
frame centre c: f(p) = t + s (p - c) + r perp(p - c). t is the mean flow (the translation at the
centre), 2 s the divergence and r the rotation rate. Averaged over pairs, the translation speed
|t| is compared with the zoom speed |s| * (mean pixel distance from c); the larger one names
the class.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from kinetograph.eval.flow import FlowConfig, PairFlow, VideoFlow, video_flow


class MotionClass(StrEnum):
    LEFT = "left"
    RIGHT = "right"
    UP = "up"
    DOWN = "down"
    ZOOM_IN = "zoom_in"
    ZOOM_OUT = "zoom_out"
    STATIC = "static"


@dataclass(frozen=True)
class MotionConfig:
    # Below this speed (fraction of the frame diagonal per frame) the camera counts as static:
    # 0.001 is ~1.2 px/frame at 1024x576 and ~0.12 px/frame at 96x64.
    static_threshold: float = 0.001


@dataclass(frozen=True)
class CameraMotion:
    label: MotionClass
    translation: tuple[float, float]  # mean content flow (dx, dy), output pixels per frame
    divergence: float  # 2 s, per frame; > 0 when content expands
    rotation: float  # r, radians per frame, counter-clockwise on screen is negative (y down)
    translation_speed: float  # |translation|, output pixels per frame
    zoom_speed: float  # |s| * mean distance from the centre, output pixels per frame
    direction: MotionClass  # the class at a tenth of the static threshold: the way even a slow move goes


def motion_mask(pair: PairFlow) -> np.ndarray:
    """Pixels whose flow is trusted for motion statistics: consistent and textured.

    Falls back to consistent pixels when under 1% are textured (a flat frame), then to all
    pixels (a cut), so every pair yields a number.
    """
    mask = pair.forward_valid & pair.textured
    if mask.mean() >= 0.01:
        return mask
    return pair.forward_valid if pair.forward_valid.any() else np.ones_like(pair.forward_valid)


def mean_flow_magnitude(
    video: np.ndarray, flow: VideoFlow | None = None, cfg: FlowConfig = FlowConfig()
) -> float:
    """Mean optical-flow magnitude over trusted pixels (`motion_mask`) and frame pairs, in
    output pixels per frame."""
    flow = flow if flow is not None else video_flow(video, cfg)
    magnitudes = []
    for pair in flow.pairs:
        speed = np.linalg.norm(pair.forward, axis=-1)  # (h, w)
        magnitudes.append(float(speed[motion_mask(pair)].mean()))
    return float(np.mean(magnitudes)) * flow.scale


def fit_similarity(flow: np.ndarray, mask: np.ndarray) -> tuple[float, float, float, float]:
    """Least-squares (tx, ty, s, r) of f(p) = t + s (p - c) + r perp(p - c) over `mask` pixels.

    perp(x, y) = (-y, x); c is the frame centre. Units are those of `flow`.
    """
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    dx = xs.astype(np.float64) - (w - 1) / 2
    dy = ys.astype(np.float64) - (h - 1) / 2
    u = flow[ys, xs, 0].astype(np.float64)
    v = flow[ys, xs, 1].astype(np.float64)
    ones, zeros = np.ones_like(dx), np.zeros_like(dx)
    # Rows for u: [1, 0, dx, -dy]; rows for v: [0, 1, dy, dx].
    a = np.concatenate([np.stack([ones, zeros, dx, -dy], 1), np.stack([zeros, ones, dy, dx], 1)])
    b = np.concatenate([u, v])
    (tx, ty, s, r), *_ = np.linalg.lstsq(a, b, rcond=None)
    return float(tx), float(ty), float(s), float(r)


def pair_fits(flow: VideoFlow) -> np.ndarray:
    """(pairs, 4): each frame pair's (tx, ty, s, r) over its trusted pixels, at flow resolution."""
    return np.array([fit_similarity(p.forward, motion_mask(p)) for p in flow.pairs])


def classify(
    translation: tuple[float, float],
    zoom_speed: float,
    divergence: float,
    diagonal: float,
    cfg: MotionConfig = MotionConfig(),
) -> MotionClass:
    """The camera-motion class from the content's mean flow and zoom (see module docstring)."""
    tx, ty = translation
    speed = float(np.hypot(tx, ty))
    if max(speed, zoom_speed) < cfg.static_threshold * diagonal:
        return MotionClass.STATIC
    if zoom_speed > speed:
        return MotionClass.ZOOM_IN if divergence > 0 else MotionClass.ZOOM_OUT
    if abs(tx) >= abs(ty):
        return MotionClass.LEFT if tx > 0 else MotionClass.RIGHT
    return MotionClass.UP if ty > 0 else MotionClass.DOWN


def camera_motion(
    video: np.ndarray,
    flow: VideoFlow | None = None,
    cfg: MotionConfig = MotionConfig(),
    flow_cfg: FlowConfig = FlowConfig(),
) -> CameraMotion:
    """Dominant camera motion of a clip from the mean flow and its divergence."""
    flow = flow if flow is not None else video_flow(video, flow_cfg)
    fits = pair_fits(flow)
    tx, ty, s, r = fits.mean(axis=0)
    h, w = flow.frames.shape[1:3]
    ys, xs = np.mgrid[0:h, 0:w]
    mean_radius = float(np.hypot(xs - (w - 1) / 2, ys - (h - 1) / 2).mean())
    translation = (float(tx) * flow.scale, float(ty) * flow.scale)
    zoom_speed = abs(float(s)) * mean_radius * flow.scale
    diagonal = float(np.hypot(h, w)) * flow.scale
    return CameraMotion(
        label=classify(translation, zoom_speed, 2 * float(s), diagonal, cfg),
        translation=translation,
        divergence=2 * float(s),
        rotation=float(r),
        translation_speed=float(np.hypot(*translation)),
        zoom_speed=zoom_speed,
        # A tenth of the threshold: below it is numerical noise (identical frames give ~4e-6 of
        # the diagonal), not a direction.
        direction=classify(translation, zoom_speed, 2 * float(s), diagonal,
                           MotionConfig(static_threshold=cfg.static_threshold / 10)),
    )
