"""Dense optical flow between two gray frames: the one OpenCV Farneback call of the project.

Data curation (motion score -> motion bucket) and evaluation (camera motion, warping error) both
measure motion with it; each keeps its own `FarnebackConfig`, the code path is this one.

Convention: a flow field `f` from frame a to frame b, shape (h, w, 2), holds (dx, dy) in pixels
such that the content at (x, y) in a is found at (x + dx, y + dy) in b; x grows rightwards and
y downwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class FarnebackConfig:
    winsize: int = 15  # averaging window
    iterations: int = 3  # iterations per pyramid level
    poly_n: int = 5  # pixel neighbourhood of the polynomial expansion
    poly_sigma: float = 1.1  # Gaussian sigma of that neighbourhood (1.1 goes with poly_n=5)
    coarsest_side: int = 24  # pyramid levels are added while the coarsest level keeps this size
    levels: int | None = None  # fixed number of pyramid levels; None: from `coarsest_side`


def pyramid_levels(min_side: int, coarsest_side: int) -> int:
    """Number of Farneback pyramid levels (the finest counts as level 0) that keep the coarsest
    level's shorter side at least `coarsest_side`."""
    return max(0, int(math.floor(math.log2(max(min_side, 1) / coarsest_side)))) + 1


def farneback(prev: np.ndarray, nxt: np.ndarray, cfg: FarnebackConfig = FarnebackConfig()) -> np.ndarray:
    """Flow (h, w, 2) float32 from gray image `prev` to `nxt` (uint8, or float in 0..255).

    Implements Farneback (2003), "Two-frame motion estimation based on polynomial expansion".
    """
    prev8 = np.clip(prev, 0, 255).astype(np.uint8)
    next8 = np.clip(nxt, 0, 255).astype(np.uint8)
    levels = cfg.levels if cfg.levels is not None else pyramid_levels(min(prev8.shape), cfg.coarsest_side)
    flow = cv2.calcOpticalFlowFarneback(
        prev8, next8, None, 0.5, levels, cfg.winsize, cfg.iterations, cfg.poly_n, cfg.poly_sigma, 0
    )
    return flow.astype(np.float32)
