"""Samplers: ODE solvers for the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma, and
one stochastic (ancestral) sampler of the reverse SDE.

Each sampler is a small stateless function over a denoiser callable (x, sigma) -> D, with
conditioning and guidance already closed over (see `guidance.GuidedDenoiser`). They are blind
to the prediction type and never import a model. `sigmas` is a descending grid ending in 0
(`schedules.karras_sigmas`); x starts as noise at sigmas[0]. Arithmetic follows x's dtype.
Stochastic samplers (`STOCHASTIC`) also take `generator=`, the source of their fresh noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from kinetograph.errors import InputError

# denoiser(x (N, ...), sigma 0-dim tensor) -> D (N, ...)
DenoiserFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# callback(step index i, number of steps n, x after step i, D evaluated at step i)
Callback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


def _prepare(sigmas: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """Validate the grid; return it on x's device in >= float32, and as Python floats for branching.

    Sigmas stay float32 even for fp16 latents (sigma_min 0.002 has 3 significant digits in fp16);
    being 0-dim, they do not promote x, so the update runs in x's dtype.
    """
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise InputError(f"sigmas must be a (n+1,) grid with n >= 1 steps, got shape {tuple(sigmas.shape)}")
    values = sigmas.tolist()
    if not all(a > b for a, b in zip(values, values[1:])) or values[-2] <= 0 or values[-1] < 0:
        raise InputError("sigmas must be strictly descending and positive, with an optional final 0")
    dtype = torch.promote_types(x.dtype, torch.float32)
    return sigmas.to(x.device, dtype), values


@torch.no_grad()
def sample_euler(
    denoiser: DenoiserFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Deterministic Euler steps (Karras et al. 2022, Algorithm 2 without churn or 2nd order).

    x <- x + (sigma_{i+1} - sigma_i) * (x - D) / sigma_i; a step to sigma = 0 returns D exactly.
    This is SVD's sampler (sgm `EulerEDMSampler`, s_churn 0) and diffusers' EulerDiscreteScheduler.
    """
    sigmas, values = _prepare(sigmas, x)
    n = len(values) - 1
    for i in range(n):
        denoised = denoiser(x, sigmas[i])
        if values[i + 1] == 0:
            x = denoised
        else:
            d = (x - denoised) / sigmas[i]
            x = x + (sigmas[i + 1] - sigmas[i]) * d
        if callback is not None:
            callback(i, n, x, denoised)
    return x


@torch.no_grad()
def sample_heun(
    denoiser: DenoiserFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Heun's 2nd-order method, Karras et al. (2022) Algorithm 2 with s_churn 0.

    Two denoiser calls per step, except the last step to sigma = 0, which is Euler (= D).
    """
    sigmas, values = _prepare(sigmas, x)
    n = len(values) - 1
    for i in range(n):
        denoised = denoiser(x, sigmas[i])
        if values[i + 1] == 0:
            x = denoised
        else:
            dt = sigmas[i + 1] - sigmas[i]
            d = (x - denoised) / sigmas[i]
            x_euler = x + dt * d
            d_next = (x_euler - denoiser(x_euler, sigmas[i + 1])) / sigmas[i + 1]
            x = x + dt * (d + d_next) / 2
        if callback is not None:
            callback(i, n, x, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    denoiser: DenoiserFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M), Lu et al. (2022), as in k-diffusion `sample_dpmpp_2m`.

    Multistep 2nd order in lambda = -ln(sigma) with one denoiser call per step: the data
    prediction is extrapolated linearly from the previous step's D. The first step is
    1st order (DDIM), and the step to sigma = 0 returns D.
    """
    sigmas, values = _prepare(sigmas, x)
    n = len(values) - 1
    old_denoised: torch.Tensor | None = None
    for i in range(n):
        denoised = denoiser(x, sigmas[i])
        if values[i + 1] == 0:
            x = denoised
        else:
            h = sigmas[i].log() - sigmas[i + 1].log()  # lambda_{i+1} - lambda_i > 0
            if old_denoised is None:
                d = denoised
            else:
                h_last = sigmas[i - 1].log() - sigmas[i].log()
                r = h_last / h
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigmas[i + 1] / sigmas[i]) * x - torch.expm1(-h) * d
        old_denoised = denoised
        if callback is not None:
            callback(i, n, x, denoised)
    return x


def ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """(sigma_down, sigma_up): step the ODE down to sigma_down, then add fresh noise of std sigma_up.

    sigma_down^2 + sigma_up^2 = sigma_to^2, so the marginal noise level lands on sigma_to. With
    eta = 1 this is the DDPM posterior (Ho et al. 2020) in sigma form; eta = 0 is the plain ODE step.
    """
    if sigma_to == 0:
        return 0.0, 0.0
    sigma_up = min(sigma_to, eta * math.sqrt(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2))
    return math.sqrt(sigma_to**2 - sigma_up**2), sigma_up


@torch.no_grad()
def sample_euler_ancestral(
    denoiser: DenoiserFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    eta: float = 1.0,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Euler ancestral steps (k-diffusion `sample_euler_ancestral`, diffusers' EulerAncestral).

    Each step forgets part of the noise it carried and draws it afresh, so a trajectory that took
    a poor turn early is pulled back toward the data rather than carried along, at the price of a
    result that depends on `generator` as well as on the initial noise. The last step returns D.
    """
    if eta < 0:
        raise InputError(f"eta must be >= 0, got {eta}")
    sigmas, values = _prepare(sigmas, x)
    n = len(values) - 1
    for i in range(n):
        denoised = denoiser(x, sigmas[i])
        if values[i + 1] == 0:
            x = denoised
        else:
            sigma_down, sigma_up = ancestral_step(values[i], values[i + 1], eta)
            d = (x - denoised) / sigmas[i]
            x = x + (sigma_down - sigmas[i]) * d
            if sigma_up > 0:
                noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x = x + noise * sigma_up
        if callback is not None:
            callback(i, n, x, denoised)
    return x


Sampler = Callable[..., torch.Tensor]

SAMPLERS: dict[str, Sampler] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
    "euler_ancestral": sample_euler_ancestral,
}
# Samplers that draw fresh noise at each step: they take generator=.
STOCHASTIC: frozenset[str] = frozenset({"euler_ancestral"})
