"""CLIP-based scores, given embedding functions (the CLIP towers are supplied by the caller).

- clip_score: text-video alignment, 100 * max(cos(image_emb(frame), text_emb(prompt)), 0)
  averaged over frames (the torchmetrics CLIPScore convention; Hessel et al. 2021 with w = 100).
- clip_consistency: mean cosine similarity of consecutive frames' image embeddings; needs only
  the image tower.
Embeddings need not be normalised; both scores normalise them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from kinetograph.errors import InputError
from kinetograph.eval.clips import check_video

ImageEmbedFn = Callable[[np.ndarray], np.ndarray]  # uint8 (n, h, w, 3) -> (n, d)
TextEmbedFn = Callable[[Sequence[str]], np.ndarray]  # n prompts -> (n, d)


@dataclass(frozen=True)
class ClipEmbedders:
    name: str  # recorded in the report, e.g. the checkpoint file
    image: ImageEmbedFn
    text: TextEmbedFn | None = None  # None: clip_score unavailable, clip_consistency still works


def _normalise(e: np.ndarray, n: int, what: str) -> np.ndarray:
    e = np.asarray(e, dtype=np.float64)
    if e.ndim != 2 or e.shape[0] != n:
        raise InputError(f"{what} embedding function must return ({n}, d), got {e.shape}")
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def clip_score(video: np.ndarray, prompt: str, embedders: ClipEmbedders) -> float:
    """Text-video CLIP score in [0, 100]: 100 * mean over frames of max(cosine, 0)."""
    check_video(video)
    if embedders.text is None:
        raise InputError("clip_score needs a CLIP text tower; none was supplied")
    frames = _normalise(embedders.image(video), len(video), "image")  # (t, d)
    text = _normalise(embedders.text([prompt]), 1, "text")  # (1, d)
    return float(100.0 * np.maximum(frames @ text[0], 0.0).mean())


def clip_consistency(video: np.ndarray, embedders: ClipEmbedders) -> float:
    """Mean cosine similarity of consecutive frames' CLIP image embeddings (1 = no change)."""
    check_video(video, min_frames=2)
    frames = _normalise(embedders.image(video), len(video), "image")  # (t, d)
    return float(np.sum(frames[:-1] * frames[1:], axis=1).mean())
