"""Near-duplicate clips by perceptual hash (pHash).

pHash of a frame: grey, 32x32, 2-D DCT, keep the 8x8 lowest frequencies, one bit per
coefficient (above the median or not) -> 64 bits. Re-encodes, rescales and mild colour changes
keep the hash within a few bits; different content differs in ~32. A clip is summarised by the
hashes of three frames (at 1/4, 1/2, 3/4 of its length) and two clips are duplicates when all
three pairs are within `max_distance` bits.
"""

from __future__ import annotations

import cv2
import numpy as np


def phash(frame: np.ndarray) -> int:
    """64-bit perceptual hash of an RGB uint8 frame."""
    g = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) if frame.ndim == 3 else frame
    small = cv2.resize(g, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].flatten()
    # The DC term carries brightness only; compare against the median of the rest.
    bits = low > np.median(low[1:])
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def clip_distance(a: list[int], b: list[int]) -> int:
    """Distance of two clips: the worst of their frame-hash distances."""
    return max(hamming(x, y) for x, y in zip(a, b, strict=True))


def find_duplicates(hashes: list[list[int]], max_distance: int) -> list[int | None]:
    """For each clip, the index of an earlier clip it duplicates, or None.

    Greedy in input order, so the first of a group is kept; a clip is compared with kept clips
    only. O(n * kept): fine for the thousands of clips one machine curates; a corpus of millions
    would bucket hashes first (e.g. multi-index hashing).
    """
    kept: list[int] = []
    out: list[int | None] = []
    for i, h in enumerate(hashes):
        dup = next((k for k in kept if clip_distance(hashes[k], h) <= max_distance), None)
        out.append(dup)
        if dup is None:
            kept.append(i)
    return out
