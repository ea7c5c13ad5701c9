"""The SVD denoising network: an ADM/LDM UNet whose every block also mixes over frames.

Blattmann et al. 2023, "Stable Video Diffusion" (and "Align your Latents"): each spatial layer
of an image UNet is followed by a temporal layer over the frames of a video, and the two are
blended with a learned weight alpha: out = alpha * spatial + (1 - alpha) * temporal.
This is sgm `VideoUNet` (`modules/diffusionmodules/video_model.py`, `video_attention.py`) with
module names identical to the released checkpoint (`model.diffusion_model.*` suffixes):

    time_embed.{0,2}  label_emb.0.{0,2}
    input_blocks.N.M  (N=0: conv_in; then per level: num_res_blocks x [VideoResBlock,
                       SpatialVideoTransformer?], Downsample `op` between levels)
    middle_block.{0,1,2}  (VideoResBlock, SpatialVideoTransformer, VideoResBlock)
    output_blocks.N.M (per level, deepest first: num_res_blocks + 1 x [VideoResBlock on the
                       concatenated skip, SpatialVideoTransformer?], Upsample `conv` between levels)
    out.{0,2}

Frames are folded into the batch, ((b t), c, h, w), frames fastest; temporal layers unfold them.

Text (optional, `UNetConfig.text_dim > 0`; absent from the official layout): every spatial
transformer block gets a cross-attention to the text tokens (`attn_text`, `norm_text`) after its
image cross-attention, and a pooled text vector joins the time embedding (`text_emb`). With
`UNetConfig.temporal_text` the temporal transformer blocks (`time_stack`) get the same pair, where
each query also knows its frame index. All output projections start at zero, so adding text to an
image-only checkpoint leaves its output unchanged until training moves them; a sample without
text (dropped, or the unconditional branch) skips them.

Camera head (optional, `UNetConfig.camera_moves > 0`, text models only): a linear classifier reads
the camera move a caption asks for off its normalised pooled vector (`camera_head`, fitted on the
captions and frozen, `training/camera.py`) and the move's probabilities join the time embedding
(`camera_emb`, zero at the start). A sentence encoder places paraphrases of one move near each
other, so the head names the move of wordings no caption used more often than the token
cross-attention, which learns the captions' words (docs/model-card.md, session 14). A head fitted on
moves alone reads any sentence as some move ("a cat on a sofa": tilt down at 86%), so a camera
gate (`UNetConfig.camera_gate`, `camera_gate`) gives the probability that the prompt names a
camera move at all, fitted against prompts that describe only the picture; the head's reading
joins the time embedding in that proportion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn
from torch.utils.checkpoint import checkpoint

from kinetograph.models.layers import (
    AlphaBlender,
    Attention,
    FeedForward,
    ResBlock,
    normalization,
    timestep_embedding,
    zero_module,
)


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of the video UNet; the defaults are the released SVD / SVD-XT network."""

    in_channels: int = 8  # noisy latent (4) + conditioning image latent (4), concatenated
    out_channels: int = 4
    model_channels: int = 320  # width of level 0; level l has model_channels * channel_mult[l]
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2  # per level on the way down; the way up has one more
    attention_resolutions: tuple[int, ...] = (4, 2, 1)  # downsample factors 2**level that get attention
    num_head_channels: int = 64  # heads = channels // num_head_channels, spatial and temporal alike
    transformer_depth: int = 1  # transformer blocks per attention layer
    context_dim: int = 1024  # width of the cross-attention context (the CLIP image embedding)
    adm_in_channels: int = 768  # width of the vector conditioning y (3 x 256 micro-conditioning)
    video_kernel_size: tuple[int, int, int] = (3, 1, 1)  # (t, h, w) kernel of the temporal ResBlocks
    text_dim: int = 0  # width of the text encoder's tokens; 0 = no text branch (the official network)
    # Res blocks take a scale and shift from the embedding (time + micro-conditioning + pooled text)
    # instead of a bias (`layers.ResBlock`): conditioning can then flip or gate features, e.g. let
    # a caption choose the direction of a camera move. False in the official network.
    scale_shift_norm: bool = False
    # The temporal transformer blocks also cross-attend to the text tokens (`time_stack.N.attn_text`).
    # There each query carries its frame index, so a word can set what changes from frame to frame
    # (a camera move's direction) in one layer; the spatial blocks see one frame at a time and know
    # neither. Needs a text branch; False in the official network.
    temporal_text: bool = False
    # Moves the camera head tells apart (`data.camera_motion.MOTIONS`); 0 = no camera head.
    camera_moves: int = 0
    # With a camera head: a gate telling prompts that name a camera move from those that do not.
    camera_gate: bool = False

    def __post_init__(self) -> None:
        # Configs read back from JSON carry lists; keep them hashable and comparable.
        for name in ("channel_mult", "video_kernel_size"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        # A set of factors; stored largest first, as in the official config (4, 2, 1).
        object.__setattr__(self, "attention_resolutions", tuple(sorted(set(self.attention_resolutions), reverse=True)))
        widths = self.level_channels
        if not widths or any(w <= 0 or w % 32 for w in widths):
            raise ValueError(f"UNet widths {widths} must be positive multiples of 32 (GroupNorm has 32 groups)")
        if min(self.num_res_blocks, self.transformer_depth, self.num_head_channels) < 1:
            raise ValueError("num_res_blocks, transformer_depth and num_head_channels must be at least 1")
        factors = {2**level for level in range(len(widths))}
        if not set(self.attention_resolutions) <= factors:
            raise ValueError(
                f"attention_resolutions {self.attention_resolutions} must be downsample factors of "
                f"existing levels, i.e. among {sorted(factors)}"
            )
        # The middle block always attends, at the width of the last level.
        for w in {w for level, w in enumerate(widths) if self.has_attention(level)} | {widths[-1]}:
            if w % self.num_head_channels:
                raise ValueError(f"width {w} is not a multiple of num_head_channels {self.num_head_channels}")
        if self.text_dim < 0:
            raise ValueError(f"text_dim must be >= 0 (0 = no text branch), got {self.text_dim}")
        if self.temporal_text and not self.text_dim:
            raise ValueError("temporal_text needs a text branch: set text_dim to the text encoder's width")
        if self.camera_moves < 0 or (self.camera_moves and not self.text_dim):
            raise ValueError(f"camera_moves {self.camera_moves} needs a text branch (text_dim > 0) and must be >= 0")
        if self.camera_gate and not self.camera_moves:
            raise ValueError("camera_gate needs a camera head (camera_moves > 0)")
        if len(self.video_kernel_size) != 3 or any(k % 2 == 0 for k in self.video_kernel_size):
            raise ValueError(f"video_kernel_size {self.video_kernel_size} must be three odd sizes (t, h, w)")

    @property
    def level_channels(self) -> tuple[int, ...]:
        return tuple(self.model_channels * m for m in self.channel_mult)

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels

    def has_attention(self, level: int) -> bool:
        return 2**level in self.attention_resolutions

    def num_heads(self, channels: int) -> int:
        return channels // self.num_head_channels


# ---------------------------------------------------------------------------------------------
# Residual blocks: a spatial ResBlock per frame, then a temporal one over frames.


class VideoResBlock(ResBlock):
    """Spatial ResBlock on each frame, then a (3, 1, 1) ResBlock over frames, blended by alpha.

    Both see the same time embedding: the temporal one per frame, emb reshaped to (b, t, c).
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        out_channels: int,
        video_kernel_size: tuple[int, ...],
        scale_shift: bool = False,
    ):
        super().__init__(channels, emb_channels, out_channels, scale_shift=scale_shift)
        self.time_stack = ResBlock(
            out_channels, emb_channels, out_channels, dims=3, kernel_size=video_kernel_size, scale_shift=scale_shift
        )
        self.time_mixer = AlphaBlender()

    def forward(
        self, x: torch.Tensor, emb: torch.Tensor, num_frames: int, image_only_indicator: torch.Tensor | None
    ) -> torch.Tensor:
        x = super().forward(x, emb)  # ((b t), c, h, w)
        x = rearrange(x, "(b t) c h w -> b c t h w", t=num_frames)
        x_temporal = self.time_stack(x, rearrange(emb, "(b t) c -> b t c", t=num_frames))
        x = self.time_mixer(x, x_temporal, image_only_indicator, pattern="b t -> b 1 t 1 1")
        return rearrange(x, "b c t h w -> (b t) c h w")


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest x2 (or to `size`, the skip's size, when a side was odd on the way down), then a conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        if size is None:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)


# ---------------------------------------------------------------------------------------------
# Attention: a spatial transformer per frame, then a temporal one over frames.


class TextContext(NamedTuple):
    """Text tokens per frame for the text branch; rows whose mask is all False have no text."""

    tokens: torch.Tensor  # ((b t), n, text_dim)
    mask: torch.Tensor  # ((b t), n) bool, True at real tokens

    @property
    def present(self) -> torch.Tensor:
        return self.mask.any(dim=-1)  # ((b t),) bool


class TextCrossAttention(Attention):
    """Cross-attention to text tokens with a key mask; its output projection starts at zero.

    A row with no text gets exactly zero (not an attention over nothing), so dropped text and
    image-only samples pass through the block unchanged.
    """

    def __init__(self, query_dim: int, heads: int, dim_head: int, text_dim: int):
        super().__init__(query_dim, heads, dim_head, context_dim=text_dim)
        zero_module(self.to_out)

    def forward(self, x: torch.Tensor, text: TextContext) -> torch.Tensor:  # type: ignore[override]
        # x ((b t), s, c); text.tokens ((b t), n, text_dim)
        present = text.present  # ((b t),)
        # Rows without text attend to every (meaningless) key, then are zeroed: avoids a NaN softmax.
        mask = text.mask | ~present[:, None]  # ((b t), n)
        tokens = text.tokens.to(x.dtype)
        q, k, v = self.to_q(x), self.to_k(tokens), self.to_v(tokens)
        q, k, v = (rearrange(a, "b n (h d) -> b h n d", h=self.heads) for a in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=rearrange(mask, "b n -> b 1 1 n"))
        out = self.to_out(rearrange(out, "b h n d -> b n (h d)"))
        return out * present[:, None, None].to(out.dtype)


class BasicTransformerBlock(nn.Module):
    """Self-attention over pixels, cross-attention to the context, GEGLU MLP; pre-LayerNorm."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int, text_dim: int = 0):
        super().__init__()
        # Registration order is the checkpoint's: attn1, ff, attn2, norm1, norm2, norm3.
        self.attn1 = Attention(dim, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = Attention(dim, heads, dim_head, context_dim=context_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        # The optional text branch (not in the official layout).
        self.attn_text = TextCrossAttention(dim, heads, dim_head, text_dim) if text_dim else None
        self.norm_text = nn.LayerNorm(dim) if text_dim else None

    def forward(self, x: torch.Tensor, context: torch.Tensor, text: TextContext | None = None) -> torch.Tensor:
        # x ((b t), s, c), context ((b t), n, context_dim)
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        if self.attn_text is not None and text is not None:
            x = self.attn_text(self.norm_text(x), text) + x
        return self.ff(self.norm3(x)) + x


class VideoTransformerBlock(nn.Module):
    """The temporal twin: each pixel attends over the frames of its video.

    An extra residual GEGLU MLP (`norm_in`, `ff_in`) comes first; the cross-attention context is
    the first frame's, repeated over pixels (SVD's `use_spatial_context`).
    """

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int, text_dim: int = 0):
        super().__init__()
        # Registration order is the checkpoint's: norm_in, ff_in, attn1, ff, norm2, attn2, norm1, norm3.
        self.norm_in = nn.LayerNorm(dim)
        self.ff_in = FeedForward(dim)
        self.attn1 = Attention(dim, heads, dim_head)
        self.ff = FeedForward(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, dim_head, context_dim=context_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        # The optional text branch (UNetConfig.temporal_text; not in the official layout).
        self.attn_text = TextCrossAttention(dim, heads, dim_head, text_dim) if text_dim else None
        self.norm_text = nn.LayerNorm(dim) if text_dim else None

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, num_frames: int, text: TextContext | None = None
    ) -> torch.Tensor:
        # x ((b t), s, c); context (b, n, context_dim), the first frame's, shared by all pixels;
        # text ((b t), n, text_dim) rows, one caption per video
        b, s = x.shape[0] // num_frames, x.shape[1]
        x = rearrange(x, "(b t) s c -> (b s) t c", t=num_frames)
        x = self.ff_in(self.norm_in(x)) + x
        x = self.attn1(self.norm1(x)) + x
        if context.shape[1] == 1 and not torch.is_grad_enabled():
            # A single key: the attention output is its value for every query (softmax of one
            # logit is 1), so compute it once per video instead of once per pixel.
            value = self.attn2.to_out(self.attn2.to_v(context))  # (b, 1, c)
            x = rearrange(x, "(b s) t c -> b s t c", b=b) + value[:, :, None, :]
            x = rearrange(x, "b s t c -> (b s) t c")
        else:
            x = self.attn2(self.norm2(x), repeat(context, "b n d -> (b s) n d", s=s)) + x
        if self.attn_text is not None and text is not None:
            # Each pixel's row of frames attends to its video's caption (the first frame's row).
            per_pixel = TextContext(
                tokens=repeat(text.tokens[::num_frames], "b n d -> (b s) n d", s=s),
                mask=repeat(text.mask[::num_frames], "b n -> (b s) n", s=s),
            )
            x = self.attn_text(self.norm_text(x), per_pixel) + x
        x = self.ff(self.norm3(x)) + x
        return rearrange(x, "(b s) t c -> (b t) s c", s=s)


class SpatialVideoTransformer(nn.Module):
    """GroupNorm, Linear in, [spatial block, temporal block, alpha blend] x depth, Linear out, residual.

    The temporal branch also gets a learned embedding of the frame index 0..t-1 (`time_pos_embed`,
    an MLP on its sinusoidal embedding) added to its input.
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        dim_head: int,
        depth: int,
        context_dim: int,
        text_dim: int = 0,
        temporal_text: bool = False,
    ):
        super().__init__()
        assert heads * dim_head == channels, "the frame-index embedding is added at the block width"
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(channels, heads, dim_head, context_dim, text_dim) for _ in range(depth)
        )
        self.proj_out = zero_module(nn.Linear(channels, channels))
        self.time_stack = nn.ModuleList(
            VideoTransformerBlock(channels, heads, dim_head, context_dim, text_dim if temporal_text else 0)
            for _ in range(depth)
        )
        self.time_pos_embed = nn.Sequential(
            nn.Linear(channels, 4 * channels), nn.SiLU(), nn.Linear(4 * channels, channels)
        )
        self.time_mixer = AlphaBlender()

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        num_frames: int,
        image_only_indicator: torch.Tensor | None,
        text: TextContext | None = None,
    ) -> torch.Tensor:
        # x ((b t), c, h, w); context ((b t), n, context_dim)
        _, c, h, w = x.shape
        x_in = x
        # The temporal context is the first frame's (SVD's use_spatial_context), for every pixel.
        time_context = context[::num_frames]  # (b, n, context_dim)

        x = rearrange(self.norm(x), "bt c h w -> bt (h w) c")
        x = self.proj_in(x)  # ((b t), (h w), c)

        frame_index = repeat(torch.arange(num_frames, device=x.device), "t -> (b t)", b=x.shape[0] // num_frames)
        frame_emb = self.time_pos_embed(timestep_embedding(frame_index, c).to(x.dtype))
        frame_emb = rearrange(frame_emb, "bt c -> bt 1 c")  # ((b t), 1, c)

        for block, temporal_block in zip(self.transformer_blocks, self.time_stack, strict=True):
            x = block(x, context, text)
            x_temporal = temporal_block(x + frame_emb, time_context, num_frames, text)
            x = self.time_mixer(x, x_temporal, image_only_indicator, pattern="b t -> (b t) 1 1")

        x = self.proj_out(x)
        # Back to a contiguous (N, C, H, W): a channels-last view here would make every later conv
        # re-layout its weights on each call.
        x = rearrange(x, "bt (h w) c -> bt c h w", h=h, w=w).contiguous()
        return x + x_in


# ---------------------------------------------------------------------------------------------
# The UNet.


class UNetBlock(nn.ModuleList):
    """One entry of input_blocks / middle_block / output_blocks: layers applied in turn,
    each given the inputs it needs (sgm `TimestepEmbedSequential`)."""

    def forward(
        self,
        x: torch.Tensor,
        emb: torch.Tensor,
        context: torch.Tensor,
        num_frames: int,
        image_only_indicator: torch.Tensor | None,
        upsample_size: tuple[int, int] | None = None,
        text: TextContext | None = None,
    ) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, VideoResBlock):
                x = layer(x, emb, num_frames, image_only_indicator)
            elif isinstance(layer, SpatialVideoTransformer):
                x = layer(x, context, num_frames, image_only_indicator, text)
            elif isinstance(layer, Upsample):
                x = layer(x, upsample_size)
            else:
                x = layer(x)
        return x


class VideoUNet(nn.Module):
    """F(x, c_noise, cond) of SVD, with diffusers' UNetSpatioTemporalConditionModel as its twin.

    The two agree to float32 rounding but for one constant: diffusers builds most res blocks with
    GroupNorm eps 1e-6, where sgm (the code the released weights were trained with) uses 1e-5
    throughout; we follow sgm. On random tiny weights that is a ~1e-5 difference in the output.
    """

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        # Recompute each block's activations in backward instead of storing them (training only).
        self.gradient_checkpointing = False
        mc, emb_dim = cfg.model_channels, cfg.time_embed_dim
        widths = cfg.level_channels

        def res_block(cin: int, cout: int) -> VideoResBlock:
            return VideoResBlock(cin, emb_dim, cout, cfg.video_kernel_size, cfg.scale_shift_norm)

        def transformer(ch: int) -> SpatialVideoTransformer:
            return SpatialVideoTransformer(
                ch, cfg.num_heads(ch), cfg.num_head_channels, cfg.transformer_depth, cfg.context_dim, cfg.text_dim,
                cfg.temporal_text,
            )

        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # sgm's `num_classes: sequential`: one more nesting level, hence `label_emb.0.{0,2}`.
        self.label_emb = nn.Sequential(
            nn.Sequential(nn.Linear(cfg.adm_in_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        )

        # Down: remember the width of every block's output; the up path concatenates them back.
        self.input_blocks = nn.ModuleList([UNetBlock([nn.Conv2d(cfg.in_channels, mc, 3, padding=1)])])
        skip_widths = [mc]
        ch = mc
        for level, width in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [res_block(ch, width)]
                ch = width
                if cfg.has_attention(level):
                    layers.append(transformer(ch))
                self.input_blocks.append(UNetBlock(layers))
                skip_widths.append(ch)
            if level != len(widths) - 1:
                self.input_blocks.append(UNetBlock([Downsample(ch)]))
                skip_widths.append(ch)

        self.middle_block = UNetBlock([res_block(ch, ch), transformer(ch), res_block(ch, ch)])

        # Up: deepest level first, one more res block per level than on the way down.
        self.output_blocks = nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [res_block(ch + skip_widths.pop(), width)]
                ch = width
                if cfg.has_attention(level):
                    layers.append(transformer(ch))
                if level > 0 and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(UNetBlock(layers))
        assert not skip_widths

        self.out = nn.Sequential(
            normalization(mc), nn.SiLU(), zero_module(nn.Conv2d(mc, cfg.out_channels, 3, padding=1))
        )
        # The pooled text vector joins the time embedding, like the micro-conditioning (text only).
        self.text_emb = zero_module(nn.Linear(cfg.text_dim, emb_dim)) if cfg.text_dim else None
        # The camera head: pooled text -> probabilities of each move -> the time embedding.
        self.camera_head = nn.Linear(cfg.text_dim, cfg.camera_moves) if cfg.camera_moves else None
        self.camera_emb = zero_module(nn.Linear(cfg.camera_moves, emb_dim)) if cfg.camera_moves else None
        self.camera_gate = nn.Linear(cfg.text_dim, 1) if cfg.camera_gate else None

    def _run(self, block: UNetBlock, *args) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        y: torch.Tensor,
        num_video_frames: int,
        image_only_indicator: torch.Tensor | None = None,
        text_tokens: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        text_pooled: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict F for a batch of videos, frames folded into the batch.

        x: ((b t), in_channels, h, w), the noisy latent already concatenated with the image latent.
        timesteps: ((b t),), the noise level c_noise of each frame.
        context: ((b t), n, context_dim), cross-attention tokens per frame.
        y: ((b t), adm_in_channels), vector conditioning per frame.
        image_only_indicator: (b, t), 1 where a frame is a still image (its temporal layers are
        skipped, alpha = 1); None means all video. Returns ((b t), out_channels, h, w).
        text_tokens ((b t), n, text_dim), text_mask ((b t), n) bool and text_pooled ((b t), text_dim):
        the optional text (only for text_dim > 0); a row whose mask is all False has no text.
        """
        t = num_video_frames
        assert x.shape[0] % t == 0, f"batch {x.shape[0]} is not a whole number of {t}-frame videos"
        assert timesteps.shape == (x.shape[0],) and y.shape[0] == context.shape[0] == x.shape[0]
        assert image_only_indicator is None or image_only_indicator.shape == (x.shape[0] // t, t)

        emb = self.time_embed(timestep_embedding(timesteps, self.cfg.model_channels).to(x.dtype))
        emb = emb + self.label_emb(y)  # ((b t), time_embed_dim)
        text = self._text(text_tokens, text_mask, x.shape[0])
        if text is not None:
            assert self.text_emb is not None and text_pooled is not None and text_pooled.shape[0] == x.shape[0]
            # A row has a caption where its pooled vector is nonzero (dropped or absent text is zero);
            # its tokens may still be masked out (`text_token_drop_prob`, or sampling without them).
            pooled = text_pooled.to(emb.dtype)
            has = (pooled != 0).any(dim=-1)[:, None].to(emb.dtype)  # ((b t), 1)
            emb = emb + self.text_emb(pooled) * has
            if self.camera_head is not None:
                emb = emb + self.camera_emb(self.camera_logits(pooled).softmax(dim=-1)) * has * self.camera_named(pooled)

        skips = []
        h = x
        for block in self.input_blocks:
            h = self._run(block, h, emb, context, t, image_only_indicator, None, text)
            skips.append(h)
        h = self._run(self.middle_block, h, emb, context, t, image_only_indicator, None, text)
        for block in self.output_blocks:
            h = torch.cat([h, skips.pop()], dim=1)
            # An upsampler restores the size of the skip it is concatenated with next.
            size = tuple(skips[-1].shape[-2:]) if skips else None
            h = self._run(block, h, emb, context, t, image_only_indicator, size, text)
        return self.out(h.type(x.dtype))

    def camera_logits(self, text_pooled: torch.Tensor) -> torch.Tensor:
        """(n, text_dim) pooled text -> (n, camera_moves) logits of the move it asks for."""
        assert self.camera_head is not None, "this UNet has no camera head (UNetConfig.camera_moves = 0)"
        return self.camera_head(F.normalize(text_pooled.to(self.camera_head.weight.dtype), dim=-1))

    def camera_named(self, text_pooled: torch.Tensor) -> torch.Tensor:
        """(n, text_dim) pooled text -> (n, 1) probability that it names a camera move (1 without a gate)."""
        if self.camera_gate is None:
            return text_pooled.new_ones(text_pooled.shape[0], 1)
        return torch.sigmoid(self.camera_gate(F.normalize(text_pooled.to(self.camera_gate.weight.dtype), dim=-1)))

    def _text(self, tokens: torch.Tensor | None, mask: torch.Tensor | None, n: int) -> TextContext | None:
        if tokens is None:
            return None
        if self.cfg.text_dim == 0:
            raise ValueError("this UNet has no text branch (text_dim 0); build it with UNetConfig(text_dim=...)")
        assert tokens.shape[0] == n and tokens.shape[-1] == self.cfg.text_dim, f"text tokens {tuple(tokens.shape)}"
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device) if mask is None else mask.bool()
        assert mask.shape == tokens.shape[:2]
        return TextContext(tokens, mask)
