"""Control fidelity: does the video move the way the prompt and the motion bucket ask?

Two numbers over a set of cases:
- accuracy: the fraction of cases with an expected class (from the prompt) whose measured
  camera-motion class matches it, overall and per expected class, with a confusion table;
  direction_accuracy is the same with moves slower than the static threshold read by their
  direction (static prompts still have to stay static): a diagnostic of amount against direction;
- Spearman rank correlation between `motion_bucket_id` and the measured mean flow magnitude,
  over all cases and averaged within groups that differ only in the bucket (same image, prompt
  and seed), which removes the image's own effect on how much motion is visible.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kinetograph.eval.motion import MotionClass


def rankdata(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n, ties given the mean of the ranks they span (as scipy's 'average')."""
    x = np.asarray(values, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1  # positions i..j hold ranks i+1..j+1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho: the Pearson correlation of the average ranks (ties handled).

    None when there are fewer than 3 pairs or either side is constant (rho is undefined).
    """
    if len(x) != len(y):
        raise ValueError(f"spearman needs paired values, got {len(x)} and {len(y)}")
    if len(x) < 3:
        return None
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = np.sqrt((rx**2).sum() * (ry**2).sum())
    if denominator == 0:
        return None
    return float((rx * ry).sum() / denominator)


@dataclass(frozen=True)
class ControlCase:
    expected: MotionClass | None  # from the prompt; None: no expectation, not scored
    measured: MotionClass
    motion_bucket_id: int
    magnitude: float  # mean flow magnitude, pixels per frame
    group: str  # cases differing only in the bucket share a group
    direction: MotionClass | None = None  # the measured class at a tenth of the static threshold; None: use measured


@dataclass(frozen=True)
class ClassScore:
    n: int
    correct: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.n


@dataclass(frozen=True)
class ControlFidelity:
    accuracy: float | None  # None when no case has an expected class
    direction_accuracy: float | None  # moves under the static threshold read by their direction
    n_scored: int
    per_class: dict[str, ClassScore]  # by expected class
    confusion: dict[str, dict[str, int]]  # expected -> measured -> count
    spearman: float | None  # bucket vs magnitude over all cases
    spearman_within: float | None  # mean over groups with >= 3 distinct buckets
    n_groups: int  # groups that entered spearman_within


def control_fidelity(cases: Sequence[ControlCase]) -> ControlFidelity:
    """Motion-class accuracy and bucket/magnitude rank correlation of a set of cases."""
    scored = [c for c in cases if c.expected is not None]
    per_class: dict[str, ClassScore] = {}
    confusion: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for cls in MotionClass:
        members = [c for c in scored if c.expected == cls]
        if members:
            per_class[cls.value] = ClassScore(len(members), sum(c.measured == cls for c in members))
    for c in scored:
        confusion[c.expected.value][c.measured.value] += 1
    correct = sum(c.measured == c.expected for c in scored)
    # A static prompt is scored on the thresholded class: a slow drift is not "still".
    by_direction = sum(
        (c.measured if c.expected == MotionClass.STATIC or c.direction is None else c.direction) == c.expected
        for c in scored
    )

    groups: dict[str, list[ControlCase]] = defaultdict(list)
    for c in cases:
        groups[c.group].append(c)
    within = []
    for members in groups.values():
        if len({c.motion_bucket_id for c in members}) >= 3:
            rho = spearman([c.motion_bucket_id for c in members], [c.magnitude for c in members])
            if rho is not None:
                within.append(rho)
    return ControlFidelity(
        accuracy=correct / len(scored) if scored else None,
        direction_accuracy=by_direction / len(scored) if scored else None,
        n_scored=len(scored),
        per_class=per_class,
        confusion={k: dict(v) for k, v in confusion.items()},
        spearman=spearman([c.motion_bucket_id for c in cases], [c.magnitude for c in cases]),
        spearman_within=float(np.mean(within)) if within else None,
        n_groups=len(within),
    )
