"""OpenCLIP ViT-H/14 image tower: the image embedding SVD cross-attends to.

A pre-LN Vision Transformer (Dosovitskiy et al. 2021) as trained by OpenCLIP (Cherti et al. 2023,
LAION-2B). SVD uses only its pooled output: `ln_post` on the CLS token, then `@ proj`, *not*
L2-normalised (sgm `FrozenOpenCLIPImageEmbedder`), giving the (b, 1, 1024) cross-attention context.

Parameter names are exactly open_clip's `VisionTransformer` names (`conv1`, `ln_pre`,
`transformer.resblocks.N.attn.in_proj_weight`, `proj`, ...), so the official checkpoint's
`conditioner.embedders.0.open_clip.model.visual.*` loads after dropping that prefix.
`kinetograph.io.transformers_clip` maps these keys to transformers' `CLIPVisionModelWithProjection`.

`clip_preprocess` turns a [-1, 1] image into the network's input the way SVD does: an
antialiased bicubic resize to 224x224 (aspect ratio squashed, no crop), then CLIP's mean/std.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from kinetograph.errors import InputError

# OpenAI CLIP's pixel statistics, which OpenCLIP kept (`OPENAI_DATASET_MEAN/STD`).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class CLIPVisionConfig:
    width: int = 1280  # transformer width (transformers: hidden_size)
    layers: int = 32
    heads: int = 16
    mlp_ratio: float = 4.0  # MLP hidden width = width * mlp_ratio
    patch_size: int = 14
    image_size: int = 224  # input side; the positional embedding has (image_size/patch_size)^2 + 1 rows
    embed_dim: int = 1024  # output of `proj`, the cross-attention context width of the UNet
    ln_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def mlp_width(self) -> int:
        return round(self.width * self.mlp_ratio)


class SelfAttention(nn.Module):
    """Multi-head self-attention with `nn.MultiheadAttention`'s packed parameter names.

    q, k, v are the three row blocks of `in_proj_weight` (in that order), as open_clip stores them.
    `causal`: token i sees tokens <= i (the text tower).
    """

    def __init__(self, width: int, heads: int, causal: bool = False):
        super().__init__()
        self.heads = heads
        self.causal = causal
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)  # nn.MultiheadAttention's init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (b, n, 3*h*d)
        q, k, v = rearrange(qkv, "b n (three h d) -> three b h n d", three=3, h=self.heads)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # (b, h, n, d), scale d^-1/2
        return self.out_proj(rearrange(out, "b h n d -> b n (h d)"))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = nn.GELU()  # exact (erf) GELU; OpenCLIP ViT-H is not a quick_gelu model
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x)).

    Shared by the vision and the text tower (any config with width, heads, mlp_width, ln_eps).
    """

    def __init__(self, cfg: CLIPVisionConfig, causal: bool = False):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.attn = SelfAttention(cfg.width, cfg.heads, causal)
        self.ln_2 = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.mlp = MLP(cfg.width, cfg.mlp_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """Holder that gives the blocks open_clip's `transformer.resblocks.N` names."""

    def __init__(self, cfg: CLIPVisionConfig, causal: bool = False):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(cfg, causal) for _ in range(cfg.layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


class CLIPImageEncoder(nn.Module):
    """OpenCLIP `VisionTransformer` (pool_type "tok"): normalized pixels -> (b, embed_dim) embedding."""

    def __init__(self, cfg: CLIPVisionConfig):
        super().__init__()
        self.cfg = cfg
        scale = cfg.width**-0.5  # open_clip's init scale for the free parameters
        self.conv1 = nn.Conv2d(3, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(cfg.width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(cfg.grid**2 + 1, cfg.width))
        self.ln_pre = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.transformer = Transformer(cfg)
        self.ln_post = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.proj = nn.Parameter(scale * torch.randn(cfg.width, cfg.embed_dim))  # used as x @ proj

    def forward_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Per-token hidden states after the last block, (b, 1 + grid^2, width), CLS first.

        Before `ln_post`: this equals transformers' `last_hidden_state`.
        """
        s = self.cfg.image_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, s, s):
            raise InputError(
                f"CLIP image encoder expects pixels of shape (b, 3, {s}, {s}), got {tuple(pixel_values.shape)}; "
                "pass the image through clip_preprocess first"
            )
        x = self.conv1(pixel_values.to(self.conv1.weight.dtype))  # (b, c, grid, grid)
        x = rearrange(x, "b c h w -> b (h w) c")
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (b, 1, c)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # (b, 1 + h*w, c)
        x = self.ln_pre(x)
        return self.transformer(x)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Image embedding (b, embed_dim) from pixels normalized by `clip_preprocess`."""
        x = self.forward_tokens(pixel_values)
        # LayerNorm is per token, so normalizing only the CLS token equals open_clip's ln_post-then-pool.
        return self.ln_post(x[:, 0]) @ self.proj


# ---------------------------------------------------------------------------------------------
# Preprocessing


def _gaussian_kernel(sigma: float, size: int) -> torch.Tensor:
    """Normalized 1-D Gaussian of odd length `size`, centred, in float32."""
    x = torch.arange(size, dtype=torch.float32) - size // 2
    kernel = torch.exp(-(x**2) / (2 * torch.tensor(sigma, dtype=torch.float32) ** 2))
    return kernel / kernel.sum()


def _blur_axis(x: torch.Tensor, kernel: torch.Tensor, axis: str) -> torch.Tensor:
    """Depthwise 1-D convolution along "w" or "h" with reflect padding; x is (b, c, h, w)."""
    c, pad = x.shape[1], kernel.numel() // 2
    if axis == "w":
        x = F.pad(x, (pad, pad, 0, 0), mode="reflect")
        weight = kernel.view(1, 1, 1, -1)
    else:
        x = F.pad(x, (0, 0, pad, pad), mode="reflect")
        weight = kernel.view(1, 1, -1, 1)
    weight = weight.to(x).expand(c, 1, -1, -1)
    return F.conv2d(x, weight, groups=c)


def resize_antialiased(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Gaussian blur, then bicubic (align_corners=True) resize of (b, c, h, w) to `size` = (h, w).

    The blur (sigma = max((in/out - 1)/2, 0.001) per axis, kernel int(max(4 sigma, 3)) made odd,
    reflect border) stands in for antialiasing; these are kornia 0.6.9's `resize(antialias=True)`
    rules, which SVD's conditioner and diffusers' SVD pipeline both use. With sigma 0.001 the
    kernel is exactly [0, 1, 0], so an axis that is not downscaled is left untouched.
    """
    h, w = image.shape[-2:]
    out_h, out_w = size
    x = image
    for axis, n_in, n_out in (("w", w, out_w), ("h", h, out_h)):  # width first, as kornia does
        sigma = max((n_in / n_out - 1.0) / 2.0, 0.001)
        k = int(max(4.0 * sigma, 3))
        k += 1 - k % 2  # odd length, so the kernel is centred
        x = _blur_axis(x, _gaussian_kernel(sigma, k), axis)
    return F.interpolate(x, size=size, mode="bicubic", align_corners=True)


def clip_preprocess(image: torch.Tensor, size: int = 224) -> torch.Tensor:
    """[-1, 1] images (b, 3, h, w) -> CLIP input (b, 3, size, size): resize, to [0, 1], normalize.

    Matches the SVD conditioner (and diffusers' `StableVideoDiffusionPipeline._encode_image`):
    the resize runs on the [-1, 1] image, without cropping, so non-square inputs are squashed.
    Computed in float32 and returned in the input's dtype.
    """
    if image.ndim != 4 or image.shape[1] != 3:
        raise InputError(f"expected images of shape (b, 3, h, w), got {tuple(image.shape)}")
    if not image.is_floating_point():
        raise InputError(f"expected a float image in [-1, 1], got dtype {image.dtype}")
    x = resize_antialiased(image.float(), (size, size))
    x = (x + 1.0) / 2.0
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std).to(image.dtype)
