"""The SVD autoencoder: an SD-style KL encoder and a decoder that also mixes over frames.

Encoder, mid attention and up/down blocks follow sgm `modules/diffusionmodules/model.py`
(Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models"); the
temporal decoder follows sgm `modules/autoencoding/temporal_ae.py` (`VideoDecoder`,
time_mode "conv-only"; Blattmann et al. 2023, "Stable Video Diffusion"): every decoder ResBlock
gets a 3-D `time_stack` ResBlock blended in with a learned weight, and `conv_out` is followed
by a temporal `time_mix_conv`. Module names are the official ones, so our state dict is

    encoder.*  quant_conv.*  decoder.*  [post_quant_conv.* : 2-D decoder only]

and the sgm checkpoint maps onto it by prefix alone (`conditioner.embedders.3.encoder.` for
the encoder and quant_conv, `first_stage_model.` for the decoder).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from kinetograph.errors import InputError
from kinetograph.models.layers import ResBlock, TemporalConv3d


@dataclass(frozen=True)
class VAEConfig:
    ch: int = 128  # base width; level i has ch * ch_mult[i] channels
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)  # one entry per resolution level
    num_res_blocks: int = 2  # per encoder level; the decoder has one more per level
    in_channels: int = 3
    out_ch: int = 3
    z_channels: int = 4  # latent channels; the encoder emits 2x (mean and logvar)
    temporal_decoder: bool = True  # False: plain 2-D decoder + post_quant_conv (svd_image_decoder)
    video_kernel_size: tuple[int, int, int] = (3, 1, 1)  # (t, h, w) kernel of the temporal convs
    scale_factor: float = 0.18215  # the UNet sees z * scale_factor; applied by the caller
    # Groups of the autoencoder's GroupNorms (not of the decoder's temporal ResBlocks, which keep
    # the UNet's 32). 32 in SVD, where every width is >= 128; at width 32 that is one channel per
    # group, which removes each channel's mean, and with it the image's colour, at every norm.
    norm_groups: int = 32
    # A linear patch path around the encoder and the decoder (not in SVD): `encoder.patch_shortcut`
    # maps each f x f patch linearly onto the latent mean, `decoder.patch_shortcut` maps the latent
    # back linearly onto the patch, and the deep paths add to them. A fresh VAE starts as the linear
    # autoencoder on the orthonormal basis `patch_basis` (its deep paths' last convs at zero), which
    # already reconstructs photos it never saw at ~28 dB (f 8, z 16), so training only adds what a
    # linear code misses. Deep autoencoders learn the identity-like map itself slowly: a small one
    # trained from scratch on two CPU cores was at 16 dB after 600 steps (docs/model-card.md).
    # The idea is DC-AE's residual autoencoding (Chen et al. 2024), here as one linear map.
    patch_shortcut: bool = False
    # The shortcut's basis. "dct": non-overlapping f x f patches on `patch_basis` (~28 dB linear,
    # but most of its channels are high frequencies that change completely under a one-pixel
    # shift, so a video UNet cannot predict them from the first frame). "smooth": z_channels = 6
    # shift-smooth channels, `smooth_filters`: grey sampled every f/2 pixels (4 channels per
    # latent pixel) and the two opponent colours every f, each through a tent filter of twice
    # its spacing (2f x 2f kernels, stride f), decoded by bilinear interpolation (~26 dB linear).
    patch_shortcut_basis: str = "dct"

    def __post_init__(self) -> None:
        # Configs read back from JSON carry lists; keep them hashable and comparable.
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        object.__setattr__(self, "video_kernel_size", tuple(self.video_kernel_size))
        widths = [self.ch * m for m in self.ch_mult]
        if not self.ch_mult or any(w <= 0 or w % 32 for w in widths):
            raise ValueError(f"VAE widths {widths} must be positive multiples of 32 (GroupNorm has 32 groups)")
        if self.norm_groups < 1 or 32 % self.norm_groups:
            raise ValueError(f"VAE norm_groups {self.norm_groups} must divide 32")
        if len(self.video_kernel_size) != 3 or any(k % 2 == 0 for k in self.video_kernel_size):
            raise ValueError(f"video_kernel_size {self.video_kernel_size} must be three odd sizes (t, h, w)")
        f = self.downsample_factor
        if self.patch_shortcut and not self.z_channels <= self.in_channels * f * f:
            raise ValueError(f"a patch shortcut needs z_channels <= {self.in_channels * f * f} (channels x f x f)")
        if self.patch_shortcut_basis not in ("dct", "smooth"):
            raise ValueError(f"patch_shortcut_basis {self.patch_shortcut_basis!r}: choose dct or smooth")
        if self.patch_shortcut and self.patch_shortcut_basis == "smooth" and (
            self.z_channels != 6 or self.in_channels != 3 or self.out_ch != 3 or f < 4
        ):
            raise ValueError("the smooth patch shortcut needs RGB in and out, z_channels = 6 and downsampling >= 4")

    @property
    def shortcut_kernel(self) -> tuple[int, int]:
        """(kernel, padding) of the patch shortcut convs: (f, 0) for dct, (2f, f/2) for smooth."""
        f = self.downsample_factor
        return (2 * f, f // 2) if self.patch_shortcut_basis == "smooth" else (f, 0)

    @property
    def downsample_factor(self) -> int:
        """Image pixels per latent pixel along each side (8 for SVD)."""
        return 2 ** (len(self.ch_mult) - 1)


def patch_basis(f: int, z: int, channels: int = 3) -> torch.Tensor:
    """(z, channels, f, f): z orthonormal patch vectors, each a 2-D DCT-II frequency (u, v) times
    a colour direction, the lowest frequencies first (a fixed stand-in for the principal components
    of natural-image patches; JPEG's choice for the same reason).

    Colour directions (RGB): grey (1, 1, 1)/sqrt(3), then the opponent pair (1, -1, 0)/sqrt(2) and
    (1, 1, -2)/sqrt(6). A colour component costs 3 more than the grey one of the same frequency, so
    with f 8 and z 16: the 10 grey frequencies with u + v <= 3, both colours' mean, then 4 grey
    frequencies with u + v = 4.
    """
    k, i = torch.arange(f, dtype=torch.float64)[:, None], torch.arange(f, dtype=torch.float64)[None]
    dct = torch.cos(torch.pi * (2 * i + 1) * k / (2 * f)) * (2.0 / f) ** 0.5  # rows: frequencies
    dct[0] /= 2.0**0.5
    if channels == 3:
        colours = torch.tensor([[1.0, 1.0, 1.0], [1.0, -1.0, 0.0], [1.0, 1.0, -2.0]], dtype=torch.float64)
        colours = colours / colours.norm(dim=1, keepdim=True)
    else:
        colours = torch.eye(channels, dtype=torch.float64)
    ranked = sorted(
        ((u + v + 3 * (c > 0), c, max(u, v), u, v) for c in range(channels) for u in range(f) for v in range(f))
    )
    vectors = [torch.einsum("c,h,w->chw", colours[c], dct[u], dct[v]) for _, c, _, u, v in ranked[:z]]
    return torch.stack(vectors).float()


def smooth_filters(f: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(encoder, decoder) weights of the smooth patch shortcut, (6, 3, 2f, 2f) each, for convs of
    kernel 2f, stride f, padding f/2 (window pixel p lies at p - f/2 from its patch's corner).

    Channels: grey at the four sub-patch centres (every f/2 pixels), then the opponent colours at
    the patch centre (every f); colour directions as `patch_basis`. The encoder averages through a
    tent of half-width = spacing (weights sum to 1: an anti-aliased sample, which a shift of a few
    pixels changes smoothly); the decoder spreads each sample with the same tent unnormalised,
    which is bilinear interpolation between neighbouring samples."""
    x = torch.arange(2 * f, dtype=torch.float64) - f // 2 + 0.5  # window pixel centres, patch coords
    tent = lambda centre, spacing: (1 - (x - centre).abs() / spacing).clamp(min=0)
    colours = torch.tensor([[1.0, 1.0, 1.0], [1.0, -1.0, 0.0], [1.0, 1.0, -2.0]], dtype=torch.float64)
    colours = colours / colours.norm(dim=1, keepdim=True)
    h = f / 2
    grey = [(tent(a * h + h / 2, h), tent(b * h + h / 2, h)) for a in (0, 1) for b in (0, 1)]
    units = [(colours[0], *t, h) for t in grey] + [(colours[c], tent(f / 2, f), tent(f / 2, f), f) for c in (1, 2)]
    dec = torch.stack([torch.einsum("c,h,w->chw", col, ty, tx) for col, ty, tx, _ in units])
    enc = torch.stack([w / (ty.sum() * tx.sum()) for w, (_, ty, tx, _) in zip(dec, units)])
    return enc.float(), dec.float()


def _group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """The autoencoder's GroupNorm (eps 1e-6, unlike the UNet's 1e-5)."""
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """GN-SiLU-conv twice plus a skip (1x1 `nin_shortcut` when the width changes); no time input."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0, groups: int = 32):
        super().__init__()
        self.norm1 = _group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _group_norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)
        else:
            self.nin_shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class VideoResnetBlock(ResnetBlock):
    """A spatial ResnetBlock, then a temporal ResBlock over each video's frames, blended.

    out = alpha * temporal + (1 - alpha) * spatial with alpha = sigmoid(mix_factor): the
    opposite convention to the UNet's AlphaBlender (sgm `VideoResBlock`, merge "learned";
    diffusers calls it `switch_spatial_to_temporal_mix`).
    """

    def __init__(
        self, in_channels: int, out_channels: int, video_kernel_size: tuple[int, int, int], groups: int = 32
    ):
        super().__init__(in_channels, out_channels, groups=groups)
        # Registered before the children, as in sgm, so state_dict order matches the checkpoint.
        self.mix_factor = nn.Parameter(torch.zeros(1))
        self.time_stack = ResBlock(out_channels, emb_channels=0, dims=3, kernel_size=video_kernel_size)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        x = super().forward(x)  # ((b t), c, h, w)
        spatial = rearrange(x, "(b t) c h w -> b c t h w", t=num_frames)
        temporal = self.time_stack(spatial)  # (b, c, t, h, w)
        alpha = torch.sigmoid(self.mix_factor).to(x.dtype)
        # Spatial term first: the sum then takes its (b t) c h w memory layout, so the rearrange
        # back is a free view instead of a full copy (the sum's value is the same either way).
        x = (1.0 - alpha) * spatial + alpha * temporal
        return rearrange(x, "b c t h w -> (b t) c h w")


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels; q/k/v/proj_out are 1x1 convs, plus residual."""

    def __init__(self, channels: int, groups: int = 32):
        super().__init__()
        self.norm = _group_norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, height, width = x.shape
        h = self.norm(x)
        # (b, c, h, w) -> (b, 1, h*w, c): one head of width c
        q, k, v = (rearrange(f(h), "b c h w -> b 1 (h w) c") for f in (self.q, self.k, self.v))
        h = F.scaled_dot_product_attention(q, k, v)
        # Contiguous (b, c, h, w): a channels-last view would make every later conv re-layout its weights.
        h = rearrange(h, "b 1 (h w) c -> b c h w", h=height, w=width).contiguous()
        return x + self.proj_out(h)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding one zero row/column at the bottom/right (sgm, diffusers)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class TimeMixConv2d(nn.Conv2d):
    """The temporal decoder's `conv_out`: a 2-D conv, then a temporal Conv3d over each video (sgm `AE3DConv`)."""

    def __init__(self, in_channels: int, out_channels: int, video_kernel_size: tuple[int, int, int]):
        super().__init__(in_channels, out_channels, 3, padding=1)
        self.time_mix_conv = TemporalConv3d(
            out_channels, out_channels, video_kernel_size, padding=[k // 2 for k in video_kernel_size]
        )

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        x = rearrange(super().forward(x), "(b t) c h w -> b c t h w", t=num_frames)
        return rearrange(self.time_mix_conv(x), "b c t h w -> (b t) c h w")


class _Checkpointed(nn.Module):
    """Runs sub-blocks through activation checkpointing when `gradient_checkpointing` is on."""

    gradient_checkpointing: bool = False

    def _run(self, block: Callable[..., torch.Tensor], *args) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)


class Encoder(_Checkpointed):
    """Image (b, 3, H, W) in [-1, 1] -> moments (b, 2z, H/f, W/f); attention only in the mid block."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        block_in = cfg.ch
        for i, block_out in enumerate(widths):
            level = nn.Module()
            level.block = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResnetBlock(block_in, block_out, groups=cfg.norm_groups))
                block_in = block_out
            if i != len(widths) - 1:
                level.downsample = Downsample(block_in)
            self.down.append(level)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, groups=cfg.norm_groups)
        self.mid.attn_1 = AttnBlock(block_in, cfg.norm_groups)
        self.mid.block_2 = ResnetBlock(block_in, block_in, groups=cfg.norm_groups)
        self.norm_out = _group_norm(block_in, cfg.norm_groups)
        self.conv_out = nn.Conv2d(block_in, 2 * cfg.z_channels, 3, padding=1)
        f = cfg.downsample_factor
        k, pad = cfg.shortcut_kernel
        self.patch_shortcut = (
            nn.Conv2d(cfg.in_channels, cfg.z_channels, k, stride=f, padding=pad, padding_mode="replicate", bias=False)
            if cfg.patch_shortcut
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.patch_shortcut is None:
            return self._deep(x)
        shortcut = self.patch_shortcut(x)  # (n, z, h, w)
        if self._deep_is_silent():
            # A deep path whose last conv is all zero outputs that conv's bias, exactly (for finite
            # inputs): skip it. Our small models train the decoder only, so their encoder is the
            # linear sampler and this is most of the cost of encoding a training clip.
            moments = self.conv_out.bias.to(shortcut.dtype)[None, :, None, None]
            moments = moments.expand(shortcut.shape[0], -1, *shortcut.shape[2:])
        else:
            moments = self._deep(x)
        return moments + F.pad(shortcut, (0, 0, 0, 0, 0, moments.shape[1] // 2))  # onto the mean half

    def _deep_is_silent(self) -> bool:
        """The deep path adds only conv_out's bias and nothing needs its gradients."""
        weight = self.conv_out.weight
        if torch.is_grad_enabled() and weight.requires_grad:
            return False
        return weight.device.type != "meta" and not bool(weight.any())

    def _deep(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for i, level in enumerate(self.down):
            for block in level.block:
                h = self._run(block, h)
            if i != len(self.down) - 1:
                h = level.downsample(h)
        h = self._run(self.mid.block_1, h)
        h = self._run(self.mid.attn_1, h)
        h = self._run(self.mid.block_2, h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(_Checkpointed):
    """Latent ((b t), z, h, w) -> image ((b t), 3, h*f, w*f); mixes over frames when temporal.

    `up[i]` is the level at resolution 1/2**i, run from the coarsest (last) to the finest, so
    the index order is the reverse of the execution order (as in sgm).
    """

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.temporal = cfg.temporal_decoder
        widths = [cfg.ch * m for m in cfg.ch_mult]

        def resblock(c_in: int, c_out: int) -> ResnetBlock:
            if self.temporal:
                return VideoResnetBlock(c_in, c_out, cfg.video_kernel_size, groups=cfg.norm_groups)
            return ResnetBlock(c_in, c_out, groups=cfg.norm_groups)

        block_in = widths[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = resblock(block_in, block_in)
        self.mid.attn_1 = AttnBlock(block_in, cfg.norm_groups)  # stays 2-D in the temporal decoder ("conv-only")
        self.mid.block_2 = resblock(block_in, block_in)
        levels: list[nn.Module] = []
        for i in reversed(range(len(widths))):
            level = nn.Module()
            level.block = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(resblock(block_in, widths[i]))
                block_in = widths[i]
            if i != 0:
                level.upsample = Upsample(block_in)
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = _group_norm(block_in, cfg.norm_groups)
        if self.temporal:
            self.conv_out = TimeMixConv2d(block_in, cfg.out_ch, cfg.video_kernel_size)
        else:
            self.conv_out = nn.Conv2d(block_in, cfg.out_ch, 3, padding=1)
        f = cfg.downsample_factor
        k, pad = cfg.shortcut_kernel
        self.patch_shortcut = (
            nn.ConvTranspose2d(cfg.z_channels, cfg.out_ch, k, stride=f, padding=pad, bias=False)
            if cfg.patch_shortcut
            else None
        )

    def forward(self, z: torch.Tensor, num_frames: int = 1) -> torch.Tensor:
        """`num_frames` = t of the ((b t), ...) input, the temporal window; the 2-D decoder ignores it."""
        out = self._deep(z, num_frames)
        if self.patch_shortcut is not None:
            out = out + self.patch_shortcut(z)
        return out

    def _deep(self, z: torch.Tensor, num_frames: int) -> torch.Tensor:
        frames = (num_frames,) if self.temporal else ()
        h = self.conv_in(z)
        h = self._run(self.mid.block_1, h, *frames)
        h = self._run(self.mid.attn_1, h)
        h = self._run(self.mid.block_2, h, *frames)
        for i in reversed(range(len(self.up))):
            level = self.up[i]
            for block in level.block:
                h = self._run(block, h, *frames)
            if i != 0:
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)), *frames)


class VAE(nn.Module):
    """SVD's KL autoencoder. `encode` gives unscaled latents; `decode` takes unscaled latents.

    The pipeline multiplies by `cfg.scale_factor` after encoding (for the UNet's noisy latent;
    the concat conditioning latent stays unscaled) and divides by it before decoding.
    """

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.z_channels, 2 * cfg.z_channels, 1)
        self.decoder = Decoder(cfg)
        # The temporal first stage has no post_quant_conv; the 2-D AutoencoderKL does.
        self.post_quant_conv = None if cfg.temporal_decoder else nn.Conv2d(cfg.z_channels, cfg.z_channels, 1)
        if cfg.patch_shortcut:
            self._start_linear()

    @torch.no_grad()
    def _start_linear(self) -> None:
        """A fresh VAE with patch shortcuts = the linear autoencoder on `patch_basis`: the deep
        paths' last convs output zero and the 1x1 convs between them pass the latent through."""
        if self.quant_conv.weight.is_meta:  # built only to receive a checkpoint's tensors
            return
        cfg = self.cfg
        if cfg.patch_shortcut_basis == "smooth":
            enc, dec = smooth_filters(cfg.downsample_factor)
        else:
            enc = dec = patch_basis(cfg.downsample_factor, cfg.z_channels, cfg.in_channels)
        self.encoder.patch_shortcut.weight.copy_(enc)  # (z, 3, k, k): out, in, kh, kw
        self.decoder.patch_shortcut.weight.copy_(dec)  # (z, 3, k, k): in, out, kh, kw (transposed conv)
        for conv in (self.encoder.conv_out, self.decoder.conv_out):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        if isinstance(self.decoder.conv_out, TimeMixConv2d):  # its temporal conv keeps random weights
            nn.init.zeros_(self.decoder.conv_out.time_mix_conv.bias)
        for conv in (self.quant_conv, self.post_quant_conv):
            if conv is not None:
                nn.init.zeros_(conv.bias)
                conv.weight.copy_(torch.eye(conv.weight.shape[0])[:, :, None, None])

    @torch.no_grad()
    def rescale_latent_channels(self, scale: torch.Tensor) -> None:
        """Divide latent channel k by scale[k] (z,), exactly: the encoder's mean rows and the
        log-variance bias change, and every layer that reads the latent multiplies its input
        weights back, so decode(encode(x)) is unchanged. With each channel's std as `scale`, all
        channels get unit std, as the UNet's single noise level per step assumes; a VAE whose
        channels differ widely (the DCT channels of a patch shortcut span 25x) otherwise leaves
        its small channels to noise."""
        z = self.cfg.z_channels
        s = scale.to(self.quant_conv.weight)
        assert s.shape == (z,) and bool((s > 0).all()), s
        self.quant_conv.weight[:z] /= s[:, None, None, None]
        self.quant_conv.bias[:z] /= s
        self.quant_conv.bias[z:] -= 2 * s.log()
        if self.post_quant_conv is not None:  # the 2-D decoder reads the latent through it alone
            self.post_quant_conv.weight *= s[None, :, None, None]
            return
        self.decoder.conv_in.weight *= s[None, :, None, None]
        if self.decoder.patch_shortcut is not None:  # ConvTranspose2d: (z, out, k, k)
            self.decoder.patch_shortcut.weight *= s[:, None, None, None]

    @property
    def gradient_checkpointing(self) -> bool:
        """Recompute encoder/decoder blocks in backward to save activation memory (training)."""
        return self.encoder.gradient_checkpointing and self.decoder.gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, on: bool) -> None:
        self.encoder.gradient_checkpointing = on
        self.decoder.gradient_checkpointing = on

    def encode_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior (mean, logvar), each (n, z, H/f, W/f); logvar clamped to [-30, 20] as in sgm/diffusers."""
        if x.ndim != 4 or x.shape[1] != self.cfg.in_channels:
            raise InputError(
                f"VAE.encode expects images (n, {self.cfg.in_channels}, H, W) in [-1, 1], got {tuple(x.shape)}"
            )
        moments = self.quant_conv(self.encoder(x))
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(
        self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Images (n, 3, H, W) in [-1, 1] -> unscaled latents (n, z, H/f, W/f).

        The posterior mode (its mean) by default, which is what SVD conditions on; with
        `sample`, mean + std * eps drawn from `generator` (same draw as diffusers' `sample`).
        """
        mean, logvar = self.encode_moments(x)
        if not sample:
            return mean
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * logvar) * eps

    def decode(self, z: torch.Tensor, num_frames: int, chunk_size: int | None = None) -> torch.Tensor:
        """Unscaled latents ((b t), z, h, w), frames fastest -> images ((b t), 3, h*f, w*f) in ~[-1, 1].

        num_frames: t, the frames of each video; the temporal layers mix over them only.
        chunk_size: decode each video's frames in consecutive chunks of this many, each chunk
            its own temporal window (zero-padded at its edges), like sgm's `decoding_t` and
            diffusers' `decode_chunk_size`. The output depends on it; None = whole videos at once.
            Only one chunk's activations are alive at a time.
        """
        if z.ndim != 4 or z.shape[1] != self.cfg.z_channels:
            raise InputError(f"VAE.decode expects latents (n, {self.cfg.z_channels}, h, w), got {tuple(z.shape)}")
        if chunk_size is not None and chunk_size < 1:
            raise InputError(f"decode chunk size must be at least 1, got {chunk_size}")
        if self.post_quant_conv is not None:  # 2-D decoder: frames are independent
            z = self.post_quant_conv(z)
            chunks = z.split(chunk_size) if chunk_size else (z,)
            return torch.cat([self.decoder(c) for c in chunks])
        if num_frames < 1 or z.shape[0] % num_frames:
            raise InputError(f"{z.shape[0]} latents do not split into videos of num_frames={num_frames}")
        # Channels-last activations: oneDNN's convolutions at the decoder's large sizes run ~10 %
        # faster on the CPU (the layout propagates through the blocks; the values are the same).
        z = z.contiguous(memory_format=torch.channels_last)
        if chunk_size is None:
            return self.decoder(z, num_frames)
        videos = rearrange(z, "(b t) c h w -> b t c h w", t=num_frames)
        out = []
        for video in videos:  # (t, c, h, w)
            for chunk in video.split(chunk_size):
                out.append(self.decoder(chunk, chunk.shape[0]))
        return torch.cat(out)
