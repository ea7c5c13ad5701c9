"""Primitives shared by the UNet and the VAE's temporal decoder.

Module and parameter names follow the official SVD checkpoint (sgm `openaimodel.py`,
`attention.py`, `video_attention.py`, `diffusionmodules/util.py`), so a state dict loads
with an identity key map.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype (fp16 statistics overflow)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Parameters may be half precision too (a model cast with .to(bf16)): upcast them as well.
        w, b = (p.float() if p is not None else None for p in (self.weight, self.bias))
        return F.group_norm(x.float(), self.num_groups, w, b, self.eps).type(x.dtype)


def normalization(channels: int) -> GroupNorm32:
    return GroupNorm32(32, channels, eps=1e-5)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding, cos first, no frequency shift: [cos(t f_k) | sin(t f_k)], f_k = P^(-k/(d/2)).

    This is sgm's `timestep_embedding` and diffusers' `Timesteps(dim, flip_sin_to_cos=True,
    downscale_freq_shift=0)`; both give identical float32 values.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a module's parameters: residual branches start as identity (Ho et al.; ADM)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class TemporalConv3d(nn.Conv3d):
    """nn.Conv3d (same parameters and state dict) that runs a purely temporal kernel (kt, 1, 1)
    as a 2-D convolution over (t, h*w): identical math, and 2-4x faster on CPU, where Conv3d has
    no fast kernel. Any other kernel runs as a plain Conv3d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        temporal_only = (
            self.kernel_size[1:] == (1, 1) and tuple(self.padding[1:]) == (0, 0) and self.stride == (1, 1, 1)
            and self.dilation == (1, 1, 1) and self.groups == 1 and self.padding_mode == "zeros" and x.ndim == 5
        )
        if not temporal_only:
            return super().forward(x)
        b, _, t, h, w = x.shape
        out = F.conv2d(x.reshape(b, -1, t, h * w), self.weight[..., 0], self.bias, padding=(self.padding[0], 0))
        return out.reshape(b, -1, out.shape[2], h, w)


def conv_nd(dims: int, *args, **kwargs) -> nn.Module:
    if dims == 2:
        return nn.Conv2d(*args, **kwargs)
    if dims == 3:
        return TemporalConv3d(*args, **kwargs)
    raise ValueError(f"unsupported dims {dims}")


class ResBlock(nn.Module):
    """ADM residual block: GN-SiLU-conv, + time embedding, GN-SiLU-conv, + skip.

    dims=3 with kernel (3, 1, 1) is the temporal ResBlock that SVD mixes into every spatial one
    (`time_stack`); its input is (b, c, t, h, w) and its embedding (b, t, emb_channels).
    emb_channels=0 drops the embedding path (the VAE decoder's temporal blocks).
    scale_shift=True: the embedding gives a per-channel scale and shift of the second norm's output,
    h = GN(h) * (1 + scale) + shift (ADM's `use_scale_shift_norm`, Dhariwal & Nichol 2021),
    instead of SVD's bias added before it; `emb_layers` then projects to 2 x out_channels.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        out_channels: int | None = None,
        dims: int = 2,
        kernel_size: int | Sequence[int] = 3,
        dropout: float = 0.0,
        scale_shift: bool = False,
    ):
        super().__init__()
        out_channels = out_channels or channels
        self.scale_shift = scale_shift
        ks = [kernel_size] * dims if isinstance(kernel_size, int) else list(kernel_size)
        padding = [k // 2 for k in ks]
        self.dims = dims
        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), conv_nd(dims, channels, out_channels, ks, padding=padding)
        )
        self.emb_layers = (
            nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, (2 if scale_shift else 1) * out_channels))
            if emb_channels > 0
            else None
        )
        self.out_layers = nn.Sequential(
            normalization(out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            zero_module(conv_nd(dims, out_channels, out_channels, ks, padding=padding)),
        )
        if out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = conv_nd(dims, channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.in_layers(x)
        if self.emb_layers is not None:
            e = self.emb_layers(emb).type(h.dtype)
            if self.dims == 3:  # emb (b, t, c) -> (b, c, t, 1, 1)
                e = rearrange(e, "b t c -> b c t 1 1")
            else:  # emb (b, c) -> (b, c, 1, 1)
                e = e[:, :, None, None]
            if self.scale_shift:
                scale, shift = e.chunk(2, dim=1)
                norm, rest = self.out_layers[0], self.out_layers[1:]
                return self.skip_connection(x) + rest(norm(h) * (1 + scale) + shift)
            h = h + e
        return self.skip_connection(x) + self.out_layers(h)


class AlphaBlender(nn.Module):
    """Learned blend of a spatial and a temporal branch: alpha*spatial + (1-alpha)*temporal.

    alpha = sigmoid(mix_factor), forced to 1 for frames flagged by `image_only_indicator`
    (merge_strategy "learned_with_images" in sgm), so image batches skip the temporal layers.
    """

    def __init__(self, alpha: float = 0.5):
        super().__init__()
        self.mix_factor = nn.Parameter(torch.tensor([alpha]))

    def get_alpha(self, image_only_indicator: torch.Tensor | None) -> torch.Tensor:
        alpha = torch.sigmoid(self.mix_factor)
        if image_only_indicator is None:
            return alpha
        # image_only_indicator: (b, t); returns (b, t) alphas
        return torch.where(image_only_indicator.bool(), torch.ones_like(alpha), alpha)

    def forward(
        self,
        x_spatial: torch.Tensor,
        x_temporal: torch.Tensor,
        image_only_indicator: torch.Tensor | None = None,
        pattern: str = "b t -> (b t) 1 1",
    ) -> torch.Tensor:
        alpha = self.get_alpha(image_only_indicator)
        if image_only_indicator is not None:
            alpha = rearrange(alpha, pattern)
        alpha = alpha.to(x_spatial.dtype)
        return alpha * x_spatial + (1.0 - alpha) * x_temporal


class Attention(nn.Module):
    """Multi-head softmax attention, scale d^-1/2; cross-attention when `context_dim` is set."""

    def __init__(self, query_dim: int, heads: int, dim_head: int, context_dim: int | None = None):
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if context is not None and context.shape[1] == 1 and not torch.is_grad_enabled():
            # One key: softmax over a single logit is exactly 1, so every query gets the value.
            # SVD's only context token is the CLIP embedding: skip q, k and the attention itself.
            # (Inference only: training keeps the full graph, so every parameter gets a gradient.)
            return self.to_out(self.to_v(context)).expand(-1, x.shape[1], -1)
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        # (B, N, h*d) -> (B, h, N, d)
        q, k, v = (rearrange(a, "b n (h d) -> b h n d", h=self.heads) for a in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class GEGLU(nn.Module):
    """Gated GELU projection (Shazeer 2020): x W -> [a, g], a * gelu(g)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU MLP with 4x inner width; keys `net.0.proj`, `net.2` as in the checkpoint."""

    def __init__(self, dim: int, dim_out: int | None = None, mult: int = 4):
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Dropout(0.0), nn.Linear(inner, dim_out or dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
