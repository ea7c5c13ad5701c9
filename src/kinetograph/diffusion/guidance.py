"""Classifier-free guidance with a per-frame scale (Ho & Salimans 2022; SVD, Blattmann et al. 2023).

    D = D_u + s_t * (D_c - D_u)

SVD ramps s_t over the frames: the first frame is pinned by the conditioning image, so it
needs little guidance, while later frames drift and get more (sgm `LinearPredictionGuider`).
`GuidedDenoiser` wraps a conditional denoiser (x, sigma, cond) -> D and returns a denoiser
(x, sigma) -> D, so samplers stay guidance-free.

Text-conditioned models guide image and text separately (compositional CFG, as InstructPix2Pix,
Brooks et al. 2023, eq. 3), see `TextImageGuidedDenoiser`.
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


def _per_row(scale: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A () or (t,) scale -> broadcastable over x ((b t), c, h, w), frames fastest."""
    if scale.ndim == 1:
        return append_dims(scale.repeat(x.shape[0] // len(scale)), x.ndim)
    return scale


def _as_scale(scale: torch.Tensor | float, num_frames: int, what: str) -> torch.Tensor:
    scale = torch.as_tensor(scale, dtype=torch.float32)
    if scale.ndim > 1 or (scale.ndim == 1 and len(scale) != num_frames):
        raise InputError(f"{what} must be a float or one value per frame ({num_frames}), got shape {tuple(scale.shape)}")
    return scale


class TextImageGuidedDenoiser:
    """Compositional guidance over image and text, one batched forward:

        D = D(∅, ∅) + s_img * (D(img, ∅) - D(∅, ∅)) + s_txt * (D(img, prompt) - D(img, negative))

    D(∅, ∅) drops both (`cond.zeroed()`), D(img, ∅) keeps the image and drops the text,
    D(img, negative) is D(img, ∅) unless a negative prompt is given. s_img is SVD's per-frame ramp
    (a float or (t,)), s_txt a float or (t,). The image term is exactly SVD's guidance, so s_txt = 0
    gives the image-only result (computed by `GuidedDenoiser`, bit for bit); the text term moves
    from what the negative prompt describes toward what the prompt describes, with the image held.
    Branches whose weight is zero are not evaluated (s_img = 1 everywhere skips D(∅, ∅)).
    """

    def __init__(
        self,
        denoiser: CondDenoiser,
        cond: Cond,
        image_scale: torch.Tensor | float,
        text_scale: torch.Tensor | float,
        negative: Cond | None = None,
    ) -> None:
        if not cond.has_text:
            raise InputError("text guidance needs a conditioning with a prompt (cond.has_text)")
        if negative is not None and (negative.num_frames != cond.num_frames or negative.concat.shape != cond.concat.shape):
            raise InputError("the negative-prompt conditioning must describe the same batch of videos")
        t = cond.num_frames
        self.denoiser = denoiser
        self.cond = cond
        self.image_scale = _as_scale(image_scale, t, "image guidance scale")
        self.text_scale = _as_scale(text_scale, t, "text guidance scale")
        image_only = cond.without_text()
        self.text_off = bool((self.text_scale == 0).all())
        # The image-only guider: the whole answer when s_txt = 0, the first two terms otherwise.
        self.image_guided = GuidedDenoiser(denoiser, image_only, cond.zeroed(), self.image_scale)
        self.skip_uncond = bool((self.image_scale == 1.0).all())
        branches = ([] if self.skip_uncond else [cond.zeroed()]) + [image_only, cond]
        if negative is not None:
            branches.append(negative)
        self.num_branches = len(branches)
        self.batched = Cond.cat(branches)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        assert x.shape[0] == self.cond.concat.shape[0], "x must be ((b t), ...) like cond"
        if self.text_off:
            return self.image_guided(x, sigma)
        k = self.num_branches
        sigma = torch.as_tensor(sigma, device=x.device)
        sigma_k = sigma if sigma.ndim == 0 else sigma.repeat(k)
        denoised = self.denoiser(torch.cat([x] * k), sigma_k, self.batched).chunk(k)
        if self.skip_uncond:
            d_image, d_text, *rest = denoised
            guided = d_image
        else:
            d_uncond, d_image, d_text, *rest = denoised
            s_img = _per_row(self.image_scale.to(x.device, d_image.dtype), x)
            guided = d_uncond + s_img * (d_image - d_uncond)
        d_negative = rest[0] if rest else d_image
        s_txt = _per_row(self.text_scale.to(x.device, d_text.dtype), x)
        return guided + s_txt * (d_text - d_negative)
