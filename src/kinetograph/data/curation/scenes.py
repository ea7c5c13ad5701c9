"""Shot detection and clip splitting.

A content detector in the manner of PySceneDetect's `ContentDetector` + `AdaptiveDetector`
(we do not depend on PySceneDetect itself: it pulls the non-headless `opencv-python`, which
conflicts with `opencv-python-headless`). The score of frame i is the mean absolute difference of
its HSV pixels from frame i-1 on the 0..255 scale; a hard cut gives a spike far above its
neighbours, fast motion raises the whole neighbourhood. Gradual transitions (fades, dissolves)
are not detected; the black-frame filter catches fades to black.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class SceneConfig:
    threshold: float = 27.0  # a score at least this high is always a cut (PySceneDetect's default)
    min_score: float = 12.0  # below this nothing is a cut, however calm the neighbourhood
    adaptive_ratio: float = 3.0  # ...between the two, a cut needs score >= ratio * mean of neighbours
    window: int = 2  # neighbours on each side for that mean
    min_shot_frames: int = 8  # a cut closer than this to the previous one is ignored (flashes)


def hsv(frame: np.ndarray) -> np.ndarray:
    """RGB uint8 (h, w, 3) -> HSV float32 (h, w, 3), hue scaled to 0..255 like the other channels."""
    out = cv2.cvtColor(frame, cv2.COLOR_RGB2HSV_FULL)
    return out.astype(np.float32)


def content_score(prev_hsv: np.ndarray, cur_hsv: np.ndarray) -> float:
    """Mean |delta| over H, S and V between two frames, 0..255."""
    return float(np.abs(cur_hsv - prev_hsv).mean())


def detect_cuts(scores: np.ndarray, cfg: SceneConfig = SceneConfig()) -> list[int]:
    """Frame indices that start a new shot.

    scores: (n,) with scores[i] = content_score(frame i-1, frame i) and scores[0] = 0.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n = len(scores)
    cuts: list[int] = []
    last = 0
    for i in range(1, n):
        s = scores[i]
        if s < cfg.min_score:
            continue
        lo, hi = max(1, i - cfg.window), min(n, i + cfg.window + 1)
        neighbours = np.concatenate([scores[lo:i], scores[i + 1 : hi]])
        ratio = s / max(float(neighbours.mean()) if len(neighbours) else 0.0, 1e-3)
        # The spike must also be the local maximum, so one cut is not reported on two frames.
        is_peak = s >= scores[lo:hi].max()
        if is_peak and (s >= cfg.threshold or ratio >= cfg.adaptive_ratio) and i - last >= cfg.min_shot_frames:
            cuts.append(i)
            last = i
    return cuts


def shots(cuts: list[int], num_frames: int) -> list[tuple[int, int]]:
    """Cut indices -> [start, end) frame ranges covering 0..num_frames."""
    bounds = [0, *[c for c in cuts if 0 < c < num_frames], num_frames]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def split_shot(start: int, end: int, fps: float, min_s: float, max_s: float) -> list[tuple[int, int]]:
    """Split a shot into clips of bounded length: equal parts of at most max_s seconds.

    A shot shorter than min_s yields nothing; equal parts (rather than max_s chunks plus a stub)
    keep every clip of a long shot usable.
    """
    n = end - start
    max_frames = max(1, int(round(max_s * fps)))
    if n < min_s * fps or n <= 0:
        return []
    parts = -(-n // max_frames)  # ceil
    edges = [start + round(k * n / parts) for k in range(parts + 1)]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b - a >= min_s * fps]
