"""Deflicker: each frame's mean colour is moved onto the clip's own local trend.

A small video model leaves the overall brightness of its frames jittering by a gray level or two
from frame to frame (the per-frame mean of its latents is a little noisy), a pumping that its
training clips do not have: their brightness changes only as the camera brings new content in.
This is the classic remedy (ffmpeg's `deflicker` filter; Bonneel et al., "Blind Video Temporal
Consistency", 2015, for the general case): per frame and colour channel, the spatial mean is
replaced by a local linear fit of the neighbouring frames' means, and the difference is added to
every pixel of that frame. A linear brightness ramp (a pan onto a brighter area) is a line, so
it passes unchanged; jitter around it is removed. Frame 0 is left as it is: it is the user's image.
"""

from __future__ import annotations

import torch


def deflicker(pixels: torch.Tensor, radius: int = 2, keep_first: bool = True) -> torch.Tensor:
    """(t, c, H, W) frames -> the same frames with each one's per-channel mean on the local trend.

    radius: the fit at frame i uses frames i - radius .. i + radius (those that exist).
    keep_first: leave frame 0 untouched (it still counts in its neighbours' fits).
    """
    t = pixels.shape[0]
    if t < 3 or radius < 1:
        return pixels
    means = pixels.double().mean(dim=(2, 3))  # (t, c)
    target = means.clone()
    for i in range(1 if keep_first else 0, t):
        lo, hi = max(0, i - radius), min(t, i + radius + 1)
        x = torch.arange(lo - i, hi - i, dtype=torch.float64, device=pixels.device)  # (n,) frame offsets from i
        y = means[lo:hi]  # (n, c)
        dx = x - x.mean()
        slope = (dx[:, None] * (y - y.mean(0))).sum(0) / (dx * dx).sum()  # (c,)
        target[i] = y.mean(0) - slope * x.mean()  # the fitted line at offset 0
    shift = (target - means).to(pixels.dtype)  # (t, c)
    return pixels + shift[:, :, None, None]
