"""Noise levels: the sigma grid a sampler walks, and the sigma densities used in training.

Sampling uses the EDM grid (Karras et al. 2022, eq. 5), which spends its steps at low noise:
    sigma_i = (sigma_max^(1/rho) + i/(n-1) * (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,  i < n,
followed by sigma_n = 0. SVD samples with sigma_min 0.002, sigma_max 700, rho 7 (sgm
`EDMDiscretization`) and starts from N(0, I) * sqrt(1 + sigma_0^2), the v-scaled prior.
"""

from __future__ import annotations

import torch

from kinetograph.errors import InputError


def karras_sigmas(
    n: int, sigma_min: float = 0.002, sigma_max: float = 700.0, rho: float = 7.0
) -> torch.Tensor:
    """The n-step EDM grid plus a final 0, (n+1,) float32, descending.

    Computed in float64 and cast once, as diffusers' `EulerDiscreteScheduler(use_karras_sigmas=True)`
    does (numpy), so the two grids are bit-identical; sgm computes in float32 (<= 1 ulp apart).
    """
    if n < 1:
        raise InputError(f"the number of sampling steps must be >= 1, got {n}")
    if not 0.0 < sigma_min < sigma_max:
        raise InputError(f"need 0 < sigma_min < sigma_max, got {sigma_min} and {sigma_max}")
    # i * (1/(n-1)) with an exact 1 at the end: numpy.linspace's arithmetic, hence bit parity.
    ramp = torch.arange(n, dtype=torch.float64)
    if n > 1:
        ramp = ramp * (1.0 / (n - 1))
        ramp[-1] = 1.0
    min_inv_rho = sigma_min ** (1.0 / rho)
    max_inv_rho = sigma_max ** (1.0 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(torch.float32)


def init_noise_scale(sigmas: torch.Tensor) -> float:
    """Std of the initial latent: sqrt(1 + sigma_0^2), in float32 (diffusers' `init_noise_sigma`).

    With v-scalings the network sees c_in * x, so sgm starts from x = N(0, I) * sqrt(1 + sigma_0^2)
    rather than * sigma_0; at sigma_0 = 700 the two differ by 1e-6 relative.
    """
    return float((sigmas[0].to(torch.float32) ** 2 + 1.0) ** 0.5)


def _log_normal(
    n: int,
    p_mean: float,
    p_std: float,
    generator: torch.Generator | None,
    device: torch.device | str | None,
) -> torch.Tensor:
    if p_std < 0:
        raise InputError(f"p_std must be >= 0, got {p_std}")
    normal = torch.randn(n, generator=generator, device=device, dtype=torch.float32)
    return (p_mean + p_std * normal).exp()


def sample_training_sigmas(
    n: int,
    p_mean: float = -1.2,
    p_std: float = 1.2,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """n training noise levels, (n,) float32, with ln(sigma) ~ N(p_mean, p_std^2) (EDM sec. 5).

    The defaults are EDM's image setting. Video models want more noise: SVD shifts the density
    towards high sigma for video training (Blattmann et al. 2023, App. D); public SVD fine-tuning
    code commonly uses p_mean 0.7, p_std 1.6. The training stage config picks the values.
    """
    return _log_normal(n, p_mean, p_std, generator, device)


def sample_cond_aug_sigmas(
    n: int,
    p_mean: float = -3.0,
    p_std: float = 0.5,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """n noise-augmentation strengths for the conditioning frame, (n,) float32, log-normal.

    SVD trains image-to-video with the conditioning frame noised as x + sigma_aug * eps,
    ln(sigma_aug) ~ N(-3.0, 0.5^2) (median ~0.05), and feeds sigma_aug to the model as the
    `cond_aug` micro-conditioning; at inference a fixed value (0.02) is used.
    """
    return _log_normal(n, p_mean, p_std, generator, device)
