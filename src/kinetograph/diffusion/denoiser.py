"""Preconditioning: a raw network F becomes a denoiser D(x; sigma) (Karras et al. 2022, sec. 5).

    D(x; sigma) = c_skip(sigma) * x + c_out(sigma) * F(c_in(sigma) * x, c_noise(sigma), cond)

The scalings keep the network's input and training target at unit variance for every noise
level. With an anchor (`anchor_scale`, our own small models only), D is relative to the latent of
the conditioning image a = anchor_scale * cond.concat:

    D(x; sigma) = a + D_0(x - a; sigma)

so carrying the image over costs the network nothing and it learns what moves (a residual, as
in residual-shifting diffusion, Yue et al. 2023). A dropped image (zero concat) gives a = 0: the
unconditional branch is the plain denoiser.

SVD uses v-prediction scalings with EDM's c_noise (sgm `VScalingWithEDMcNoise`); models we train
from scratch may use the plain EDM scalings (Table 1). Scalings are computed in
float32 whatever the latent dtype, like sgm and diffusers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from kinetograph.errors import InputError

# network(x_in ((b t), c, h, w), c_noise (N,), cond) -> F ((b t), c, h, w)
Network = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


class Scalings(Protocol):
    def __call__(
        self, sigma: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """sigma (N,) float32 -> (c_skip, c_out, c_in, c_noise), each (N,) float32."""
        ...


@dataclass(frozen=True)
class VScalingEDMcNoise:
    """v-prediction preconditioning with EDM's c_noise = ln(sigma)/4: the SVD checkpoints.

    For x = x0 + sigma*n with unit-variance data, F predicts v = (sigma*x0 - n)/sqrt(sigma^2+1)
    up to sign; equivalently EDM scalings with sigma_data = 1 and c_out negated.
    diffusers: `EulerDiscreteScheduler(prediction_type="v_prediction", timestep_type="continuous")`.
    """

    def __call__(
        self, sigma: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        c_skip = 1.0 / (sigma**2 + 1.0)
        c_out = -sigma / (sigma**2 + 1.0) ** 0.5
        c_in = 1.0 / (sigma**2 + 1.0) ** 0.5
        c_noise = 0.25 * sigma.log()
        return c_skip, c_out, c_in, c_noise


@dataclass(frozen=True)
class EDMScaling:
    """EDM preconditioning, Karras et al. (2022) Table 1: F predicts a scaled mix of x0 and noise."""

    sigma_data: float = 0.5  # std of the training data (latents); 0.5 is EDM's choice for images

    def __call__(
        self, sigma: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2) ** 0.5
        c_in = 1.0 / (sigma**2 + sd2) ** 0.5
        c_noise = 0.25 * sigma.log()
        return c_skip, c_out, c_in, c_noise


SCALINGS: dict[str, Callable[[], Scalings]] = {
    "v_edm": VScalingEDMcNoise,  # SVD (all official checkpoints)
    "edm": EDMScaling,  # models trained here from scratch, sigma_data 0.5
}


def make_scalings(name: str) -> Scalings:
    """Scalings by name (see `SCALINGS`), for configs and the CLI."""
    if name not in SCALINGS:
        raise InputError(f"unknown scalings {name!r}; choose one of {sorted(SCALINGS)}")
    return SCALINGS[name]()


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """(N,) -> (N, 1, ..., 1) with `ndim` dims in all, to broadcast a per-sample value over x."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


class Denoiser:
    """D(x; sigma, cond) from a network and named scalings. Holds no state besides the two.

    `network` is any callable (x_in, c_noise, cond) -> F, e.g. the video UNet; it receives
    c_noise as a (N,) float32 tensor, one entry per row of x.
    """

    def __init__(self, network: Network, scalings: Scalings | str = "v_edm", anchor_scale: float = 0.0) -> None:
        self.network = network
        self.scalings = make_scalings(scalings) if isinstance(scalings, str) else scalings
        # > 0: D is relative to anchor_scale * cond.concat (the VAE's scale factor maps the unscaled
        # concat latent into the noisy latent's space); 0: SVD's plain preconditioning.
        self.anchor_scale = anchor_scale

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: Any = None) -> torch.Tensor:
        """x (N, ...), sigma a scalar or (N,) -> D (N, ...), same dtype as x."""
        n = x.shape[0]
        sigma = torch.as_tensor(sigma, device=x.device).to(torch.float32)
        if sigma.ndim == 0:
            sigma = sigma.expand(n)
        assert sigma.shape == (n,), f"sigma must be a scalar or ({n},), got {tuple(sigma.shape)}"
        c_skip, c_out, c_in, c_noise = self.scalings(sigma)  # each (N,) float32
        c_skip, c_out, c_in = (append_dims(c, x.ndim).to(x.dtype) for c in (c_skip, c_out, c_in))
        if not self.anchor_scale:
            return c_skip * x + c_out * self.network(c_in * x, c_noise, cond)
        a = self.anchor_scale * cond.concat.to(x.dtype)  # same shape as x
        r = x - a
        return a + c_skip * r + c_out * self.network(c_in * r, c_noise, cond)
