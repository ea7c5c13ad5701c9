"""Training losses as callables: the EDM denoising loss, and the autoencoder's reconstruction + KL.

EDMLoss implements the training objective of Karras et al. (2022), sec. 5, with the
preconditioning SVD uses (v-scalings + EDM c_noise, `kinetograph.diffusion.denoiser`):

    ln(sigma) ~ N(P_mean, P_std^2),   x = x0 + sigma * n,
    loss = lambda(sigma) * || D(x; sigma, cond) - x0 ||^2,   lambda(sigma) = 1 / c_out(sigma)^2,

so the network's own target has unit weight at every noise level (EDM eq. 8). One sigma per
video, shared by its frames, as at sampling time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from kinetograph.conditioning import Cond
from kinetograph.diffusion.denoiser import Denoiser, Network, Scalings, VScalingEDMcNoise, append_dims
from kinetograph.training.rng import SampleRNG


@dataclass
class EDMLoss:
    p_mean: float = 0.7
    p_std: float = 1.6
    weighting: str = "edm"  # "edm": 1 / c_out^2; "unit": plain MSE on D
    scalings: Scalings = field(default_factory=VScalingEDMcNoise)
    anchor_scale: float = 0.0  # > 0: D relative to the image latent (`Denoiser`); the target stays x0

    def __call__(self, network: Network, x0: torch.Tensor, cond: Cond, rng: SampleRNG) -> torch.Tensor:
        """x0 ((b t), c, h, w) clean latents -> per-video loss (b,), float32.

        Draws sigma, then the noise, from each video's generator.
        """
        t = cond.num_frames
        b = x0.shape[0] // t
        assert len(rng) == b, f"{len(rng)} generators for {b} videos"
        sigma = rng.log_normal(self.p_mean, self.p_std)  # (b,)
        noise = rearrange(rng.randn(t, *x0.shape[1:]), "b t c h w -> (b t) c h w")
        sigma_frames = repeat(sigma, "b -> (b t)", t=t)
        x0 = x0.float()
        noised = x0 + append_dims(sigma_frames, x0.ndim) * noise
        denoised = Denoiser(network, self.scalings, self.anchor_scale)(noised, sigma_frames, cond).float()
        if self.weighting == "edm":
            _, c_out, _, _ = self.scalings(sigma_frames)
            weight = 1.0 / c_out**2
        else:
            weight = torch.ones_like(sigma_frames)
        per_frame = weight * (denoised - x0).square().mean(dim=(1, 2, 3))  # ((b t),)
        return rearrange(per_frame, "(b t) -> b t", t=t).mean(dim=1)


@dataclass
class VAELoss:
    """Reconstruction (L1 or MSE, per pixel) + kl_weight * KL(q(z|x) || N(0, I)) per latent element.

    No perceptual or adversarial term: it trains on a CPU, at the price of blurrier decodes than
    the LPIPS + GAN objective of Rombach et al. (2022).
    """

    kl_weight: float = 1e-6
    recon: str = "l1"

    def __call__(self, autoencoder: torch.nn.Module, pixels: torch.Tensor, num_frames: int, rng: SampleRNG) -> torch.Tensor:
        """pixels ((b t), 3, H, W) in [-1, 1] -> per-video loss (b,), float32.

        autoencoder(pixels, eps, num_frames) -> (reconstruction, mean, logvar): `stages.Autoencoder`,
        a module so that DDP/FSDP see the whole encode-sample-decode in one forward.
        """
        f = autoencoder.vae.cfg.downsample_factor
        latent = (autoencoder.vae.cfg.z_channels, pixels.shape[-2] // f, pixels.shape[-1] // f)
        eps = rearrange(rng.randn(num_frames, *latent), "b t c h w -> (b t) c h w")
        recon, mean, logvar = autoencoder(pixels, eps, num_frames)
        recon, mean, logvar, pixels = recon.float(), mean.float(), logvar.float(), pixels.float()
        diff = F.l1_loss(recon, pixels, reduction="none") if self.recon == "l1" else (recon - pixels).square()
        kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar)
        per_frame = diff.mean(dim=(1, 2, 3)) + self.kl_weight * kl.mean(dim=(1, 2, 3))
        return rearrange(per_frame, "(b t) -> b t", t=num_frames).mean(dim=1)
