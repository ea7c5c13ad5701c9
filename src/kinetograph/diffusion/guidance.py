"""Classifier-free guidance with a per-frame scale (Ho & Salimans 2022; SVD, Blattmann et al. 2023).

    D = D_u + s_t * (D_c - D_u)

SVD ramps s_t over the frames: the first frame is pinned by the conditioning image, so it
needs little guidance, while later frames drift and get more (sgm `LinearPredictionGuider`).
`GuidedDenoiser` wraps a conditional denoiser (x, sigma, cond) -> D and returns a denoiser
(x, sigma) -> D, so samplers stay guidance-free.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from kinetograph.conditioning import Cond
from kinetograph.diffusion.denoiser import append_dims
from kinetograph.errors import InputError

# denoiser(x ((b t), c, h, w), sigma scalar or ((b t),), cond) -> D ((b t), c, h, w)
CondDenoiser = Callable[[torch.Tensor, torch.Tensor, Cond], torch.Tensor]


def linear_ramp(min_scale: float, max_scale: float, num_frames: int) -> torch.Tensor:
    """Per-frame scales (t,) float32, linspace(min_scale, max_scale, t), as sgm and diffusers."""
    if num_frames < 1:
        raise InputError(f"num_frames must be >= 1, got {num_frames}")
    return torch.linspace(min_scale, max_scale, num_frames)


def triangle_ramp(
    min_scale: float, max_scale: float, num_frames: int, period: float = 1.0
) -> torch.Tensor:
    """Per-frame scales (t,) float32 following a triangle wave, as sgm `TrianglePredictionGuider`.

    With u = linspace(0, 1, t) and the wave w(u) = 2 * |u/period - floor(u/period + 1/2)|,
    s_t = min_scale + w * (max_scale - min_scale). For the default period 1, s rises linearly
    from min_scale at the first frame to max_scale at the middle frame (u = 1/2) and falls back
    to min_scale at the last; with an even t the peak lies between the two middle frames.
    A period p < 1 repeats the tooth 1/p times over the clip.
    """
    if num_frames < 1:
        raise InputError(f"num_frames must be >= 1, got {num_frames}")
    if period <= 0:
        raise InputError(f"period must be > 0, got {period}")
    u = torch.linspace(0, 1, num_frames)
    wave = 2 * (u / period - torch.floor(u / period + 0.5)).abs()
    return wave * (max_scale - min_scale) + min_scale


class GuidedDenoiser:
    """(x, sigma) -> D_u + s_t * (D_c - D_u), one batched forward on [uncond, cond].

    x is ((b t), c, h, w) with frames fastest, as in `Cond`. `scale` is a float (same for every
    frame) or a (t,) tensor, one scale per frame. When every scale is exactly 1 the guided
    result is D_c, so the unconditional half is skipped: half the UNet work.
    """

    def __init__(
        self,
        denoiser: CondDenoiser,
        cond: Cond,
        uncond: Cond,
        scale: torch.Tensor | float,
    ) -> None:
        if cond.num_frames != uncond.num_frames or cond.concat.shape != uncond.concat.shape:
            raise InputError("cond and uncond must describe the same batch of videos")
        scale = torch.as_tensor(scale, dtype=torch.float32)
        if scale.ndim == 1 and len(scale) != cond.num_frames:
            raise InputError(f"need one guidance scale per frame ({cond.num_frames}), got {len(scale)}")
        if scale.ndim > 1:
            raise InputError(
                f"guidance scale must be a float or a (t,) tensor, got shape {tuple(scale.shape)}"
            )
        self.denoiser = denoiser
        self.cond = cond
        self.scale = scale  # () or (t,)
        self.skip_uncond = bool((scale == 1.0).all())
        # built once, as the conditioning is fixed for the whole sampling run
        self.cond_uncond = None if self.skip_uncond else Cond.cat([uncond, cond])

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        assert x.shape[0] == self.cond.concat.shape[0], "x must be ((b t), ...) like cond"
        if self.skip_uncond:
            return self.denoiser(x, sigma, self.cond)
        sigma = torch.as_tensor(sigma, device=x.device)
        sigma2 = sigma if sigma.ndim == 0 else torch.cat([sigma, sigma])
        assert self.cond_uncond is not None
        denoised = self.denoiser(torch.cat([x, x]), sigma2, self.cond_uncond)  # (2 (b t), c, h, w)
        d_uncond, d_cond = denoised.chunk(2)
        scale = self.scale.to(x.device, denoised.dtype)
        if scale.ndim == 1:
            # (t,) -> ((b t),) with frames fastest, then broadcast over c, h, w
            scale = append_dims(scale.repeat(x.shape[0] // len(scale)), x.ndim)
        return d_uncond + scale * (d_cond - d_uncond)
