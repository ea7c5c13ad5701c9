"""The camera prior: training-free camera control by starting the sampler from a rendered move.

The input image is moved along the asked camera move (a 2-D pan, tilt or zoom of the picture,
frame 0 the image itself), each rendered frame is encoded by the VAE, and sampling starts part
way down the noise schedule from those latents with fresh noise at that level, as SDEdit starts
from a guide image (Meng et al. 2022, "SDEdit"); CamTrol (Hou et al. 2024) does this for SVD with
a 3-D render. The network then only has to make the rendered move look real (fill what the move
uncovers, add depth and light) instead of inventing the move, so the move follows the asked one
and the picture keeps the detail it carried in. Any checkpoint can use it: official SVD weights
have no other camera control.

`strength` is the fraction of the sampler's steps that the render stands in for: 0 samples from
pure noise as usual, 1 returns the render's latents untouched.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kinetograph.data.camera_motion import CONTENT_DIRECTION, MOTIONS
from kinetograph.data.curation.motion import MotionBucketMap
from kinetograph.errors import InputError

# A zoom never scales the picture by more than this over one clip (as the training clips).
MAX_ZOOM = 2.5


def check_move(move: str) -> str:
    if move not in MOTIONS:
        raise InputError(f"unknown camera move {move!r}; choose one of {', '.join(MOTIONS)}")
    return move


def bucket_speed(motion_bucket_id: float, width: int, fps: float) -> float:
    """The content speed (output pixels a frame) that `motion_bucket_id` stands for: curation's
    default bucket map (score = % of frame width a second, data/curation/motion.py) at this width
    and frame rate."""
    return MotionBucketMap().score(motion_bucket_id) / 100.0 * width / fps


def render_move(image: torch.Tensor, move: str, num_frames: int, speed: float) -> torch.Tensor:
    """(1, 3, h, w) image -> (t, 3, h, w): the picture moved by the camera `move` at `speed`
    output pixels a frame (a zoom: that mean flow over the frame), frame 0 the image itself.

    Pans and tilts shift the picture ("pan left": the content moves right); zooms scale it about
    the centre, exponentially. What a move uncovers beyond the image's edge is its mirror image.
    """
    check_move(move)
    _, _, h, w = image.shape
    t = torch.arange(num_frames, dtype=torch.float32, device=image.device)
    a = torch.ones_like(t)  # source = a * output + shift, in [-1, 1] coordinates
    tx, ty = torch.zeros_like(t), torch.zeros_like(t)
    if move.startswith("zoom"):
        ys, xs = torch.meshgrid(torch.arange(h) + 0.5 - h / 2, torch.arange(w) + 0.5 - w / 2, indexing="ij")
        rate = speed / float(torch.hypot(xs, ys).mean())  # log-scale change a frame
        rate = min(rate, math.log(MAX_ZOOM) / max(num_frames - 1, 1))
        a = torch.exp(-rate * t) if move == "zoom_in" else torch.exp(rate * t)
    elif move != "static":
        dx, dy = CONTENT_DIRECTION[move]
        tx, ty = -dx * speed * t * 2 / w, -dy * speed * t * 2 / h
    zero = torch.zeros_like(t)
    theta = torch.stack([torch.stack([a, zero, tx], -1), torch.stack([zero, a, ty], -1)], 1)  # (t, 2, 3)
    grid = F.affine_grid(theta, [num_frames, 3, h, w], align_corners=False)
    frames = F.grid_sample(image.float().expand(num_frames, -1, -1, -1), grid, mode="bilinear",
                           padding_mode="reflection", align_corners=False)
    frames[0] = image[0].float()  # exactly the image, not its resampling
    return frames


def start_index(strength: float, steps: int) -> int:
    """The sigma index the sampler starts at for a prior of `strength` (0: the first, 1: the last, 0)."""
    assert 0.0 <= strength <= 1.0, strength
    return round(strength * steps)
