"""Motion score (dense optical flow) and its calibration into SVD's 0..255 motion bucket id.

The score is a speed a viewer perceives, independent of resolution and frame rate:
    score = mean |Farneback flow| / frame width * 100 * fps     [% of frame width per second]
so a pan that crosses a tenth of the frame each second scores 10, at any size or fps. Flow is
computed on downscaled grey frames (fast, and large motions stay within Farneback's reach).

`MotionBucketMap` turns a score into the motion bucket id the model is conditioned on; it is saved
as JSON beside the data (`motion_buckets.json`) so training and inference agree. See
docs/motion-bucket.md for what the user's motion slider means.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from kinetograph.errors import InputError
from kinetograph.flow import FarnebackConfig, farneback

SCORE_UNITS = "percent of frame width per second (mean Farneback flow magnitude)"
FLOW = FarnebackConfig(winsize=13, levels=3)  # what the scores (and the default bucket curve) are measured with


def gray(frame: np.ndarray) -> np.ndarray:
    """RGB uint8 (h, w, 3) -> grey uint8 (h, w)."""
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def flow_magnitude(prev_gray: np.ndarray, cur_gray: np.ndarray) -> float:
    """Mean Farneback flow magnitude between two grey frames, in pixels of these frames."""
    flow = farneback(prev_gray, cur_gray, FLOW)  # (h, w, 2)
    return float(np.sqrt((flow**2).sum(-1)).mean())


def motion_score(pixels_per_frame: float, width: int, fps: float) -> float:
    """Mean flow in pixels per frame at `width` -> score in % of frame width per second."""
    return pixels_per_frame / width * 100.0 * fps


def clip_motion_score(frames: np.ndarray, fps: float) -> float:
    """Score of a whole clip (t, h, w, 3) uint8: mean over consecutive frame pairs."""
    assert frames.ndim == 4 and len(frames) >= 2, frames.shape
    g = [gray(f) for f in frames]
    px = np.mean([flow_magnitude(a, b) for a, b in zip(g[:-1], g[1:])])
    return motion_score(float(px), frames.shape[2], fps)


# The default curve: bucket 0 at rest, linear to 32 at 1 %/s, then +32 per doubling of speed
# (bucket = 32 * (1 + log2(score))), reaching 255 at ~125 %/s (a frame crossed in under a second).
# 127 ~ 7.8 %/s, a calm pan. Knots every 8 buckets keep the piecewise-linear map within 0.2 of the log.
_DEFAULT_BUCKETS = (0.0, *[float(b) for b in range(32, 255, 8)], 255.0)
_DEFAULT_SCORES = (0.0, *[2.0 ** (b / 32 - 1) for b in _DEFAULT_BUCKETS[1:]])


@dataclass(frozen=True)
class MotionBucketMap:
    """Piecewise-linear, non-decreasing map from motion score to bucket id 0..255.

    scores: knots, strictly increasing; buckets: bucket at each knot, non-decreasing in 0..255.
    Scores beyond the last knot give the last bucket; the inverse (bucket -> score) is used to
    turn a requested bucket into the speed of a generated camera move.
    """

    scores: tuple[float, ...] = _DEFAULT_SCORES
    buckets: tuple[float, ...] = _DEFAULT_BUCKETS
    method: str = "default-log2"  # how the knots were chosen: "default-log2" or "quantile"
    units: str = SCORE_UNITS

    def __post_init__(self) -> None:
        s, b = np.asarray(self.scores), np.asarray(self.buckets)
        assert len(s) == len(b) >= 2, (len(s), len(b))
        assert np.all(np.diff(s) > 0) and np.all(np.diff(b) >= 0), (self.scores, self.buckets)
        assert b[0] >= 0 and b[-1] <= 255, self.buckets

    def bucket(self, score: float) -> int:
        """Motion bucket id 0..255 for a score."""
        return int(round(float(np.interp(max(score, 0.0), self.scores, self.buckets))))

    def score(self, bucket: float) -> float:
        """A score that maps to `bucket` (the inverse on the increasing part of the map)."""
        b, s = np.asarray(self.buckets), np.asarray(self.scores)
        keep = np.concatenate([[True], np.diff(b) > 0])  # drop flat segments so interp is a function
        return float(np.interp(bucket, b[keep], s[keep]))

    @classmethod
    def fit(cls, scores: list[float] | np.ndarray, num_knots: int = 9) -> MotionBucketMap:
        """Calibrate on a corpus: bucket = 255 * (quantile of the score), so buckets are used evenly.

        Needs enough distinct scores to be meaningful; with fewer than `2 * num_knots` it returns
        the default curve (a tiny corpus would otherwise define what "fast" means by accident).
        """
        x = np.sort(np.asarray([v for v in scores if math.isfinite(v)], dtype=np.float64))
        if len(np.unique(x)) < 2 * num_knots:
            return cls()
        q = np.linspace(0.0, 1.0, num_knots)
        knots = np.quantile(x, q)
        # Quantiles can repeat (many equal scores): keep the first of each run so knots increase.
        keep = np.concatenate([[True], np.diff(knots) > 1e-9])
        knots, q = knots[keep], q[keep]
        if knots[0] > 0.0:  # anchor rest at bucket 0
            knots, q = np.concatenate([[0.0], knots]), np.concatenate([[0.0], q])
        return cls(tuple(float(v) for v in knots), tuple(float(v) for v in 255.0 * q), method="quantile")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"version": 1, **asdict(self)}, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> MotionBucketMap:
        try:
            d = json.loads(Path(path).read_text())
            return cls(tuple(d["scores"]), tuple(d["buckets"]), d.get("method", "unknown"), d.get("units", SCORE_UNITS))
        except (OSError, ValueError, KeyError, AssertionError) as e:
            raise InputError(f"{path}: not a motion bucket map ({e}); pass the motion_buckets.json written by curate") from e
