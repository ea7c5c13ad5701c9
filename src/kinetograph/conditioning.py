"""Typed conditioning for the video UNet.

SVD conditions on three signals (Blattmann et al. 2023, sec. 4 and App. D):
- `crossattn`: the CLIP image embedding of the clean input frame, attended to by every block;
- `concat`: the VAE latent of the (noise-augmented) input frame, concatenated to the noisy latent;
- `vector`: micro-conditioning [emb(fps_id) | emb(motion_bucket_id) | emb(cond_aug)], added to
  the timestep embedding.
Text-conditioned models add a fourth, optional signal (`text_tokens`, `text_mask`, `text_pooled`:
a text encoder's per-token states and pooled vector, see `models/text.py`); a video without text
has none (or an all-False mask in a mixed batch), which the UNet treats as "no prompt".
All tensors are per frame, frames folded into the batch as (b t), frames fastest.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from einops import repeat

from kinetograph.errors import InputError
from kinetograph.models.layers import timestep_embedding


@dataclass(frozen=True)
class Cond:
    crossattn: torch.Tensor  # ((b t), n, context_dim)
    concat: torch.Tensor  # ((b t), c, h, w)
    vector: torch.Tensor  # ((b t), adm_in_channels)
    num_frames: int
    image_only_indicator: torch.Tensor  # (b, t): 1 where a frame is a still image
    text_tokens: torch.Tensor | None = None  # ((b t), n, text_dim), text-conditioned models only
    text_mask: torch.Tensor | None = None  # ((b t), n) bool, True at real tokens
    text_pooled: torch.Tensor | None = None  # ((b t), text_dim)

    def __post_init__(self) -> None:
        given = [x is not None for x in (self.text_tokens, self.text_mask, self.text_pooled)]
        assert all(given) or not any(given), "text_tokens, text_mask and text_pooled come together"

    @property
    def batch_size(self) -> int:
        return self.concat.shape[0] // self.num_frames

    @property
    def has_text(self) -> bool:
        return self.text_tokens is not None

    @staticmethod
    def cat(conds: list[Cond]) -> Cond:
        """Stack conditionings along the video batch (e.g. [uncond, cond] for guidance).

        When some have text and some not, the text-less ones get an all-False mask (no text), and
        shorter token sequences are padded with masked tokens.
        """
        t = conds[0].num_frames
        assert all(c.num_frames == t for c in conds)
        text = {}
        with_text = [c for c in conds if c.has_text]
        if with_text:
            n = max(c.text_tokens.shape[1] for c in with_text)
            d = with_text[0].text_tokens.shape[2]
            assert all(c.text_tokens.shape[2] == d for c in with_text), "texts of different widths"
            tokens, masks, pooled = [], [], []
            for c in conds:
                rows = c.concat.shape[0]
                ref = with_text[0]
                if c.has_text:
                    pad = n - c.text_tokens.shape[1]
                    tokens.append(F.pad(c.text_tokens, (0, 0, 0, pad)))
                    masks.append(F.pad(c.text_mask, (0, pad), value=False))
                    pooled.append(c.text_pooled)
                else:
                    tokens.append(ref.text_tokens.new_zeros(rows, n, d))
                    masks.append(torch.zeros(rows, n, dtype=torch.bool, device=ref.text_mask.device))
                    pooled.append(ref.text_pooled.new_zeros(rows, ref.text_pooled.shape[1]))
            text = dict(text_tokens=torch.cat(tokens), text_mask=torch.cat(masks), text_pooled=torch.cat(pooled))
        return Cond(
            crossattn=torch.cat([c.crossattn for c in conds]),
            concat=torch.cat([c.concat for c in conds]),
            vector=torch.cat([c.vector for c in conds]),
            num_frames=t,
            image_only_indicator=torch.cat([c.image_only_indicator for c in conds]),
            **text,
        )

    def zeroed(self) -> Cond:
        """The unconditional branch: image embedding and image latent set to zero, text dropped, vector kept."""
        return Cond(
            crossattn=torch.zeros_like(self.crossattn),
            concat=torch.zeros_like(self.concat),
            vector=self.vector,
            num_frames=self.num_frames,
            image_only_indicator=self.image_only_indicator,
        )

    def without_text(self) -> Cond:
        """The same image conditioning with no prompt (the image-only branch of text guidance)."""
        return replace(self, text_tokens=None, text_mask=None, text_pooled=None)

    def with_text(self, tokens: torch.Tensor, mask: torch.Tensor, pooled: torch.Tensor) -> Cond:
        """Add a per-video text, tokens (b, n, d), mask (b, n), pooled (b, d), repeated over frames."""
        b, t = self.batch_size, self.num_frames
        if tokens.shape[0] != b:
            if tokens.shape[0] != 1:
                raise InputError(f"got {tokens.shape[0]} texts for {b} videos; give one text, or one per video")
            tokens, mask, pooled = tokens.expand(b, -1, -1), mask.expand(b, -1), pooled.expand(b, -1)
        return replace(
            self,
            text_tokens=repeat(tokens, "b n d -> (b t) n d", t=t),
            text_mask=repeat(mask.bool(), "b n -> (b t) n", t=t),
            text_pooled=repeat(pooled, "b d -> (b t) d", t=t),
        )


def micro_conditioning(
    fps_id: float, motion_bucket_id: float, cond_aug: float, dim: int = 256
) -> torch.Tensor:
    """The 3*dim micro-conditioning vector, (1, 3*dim), in sgm's embedder order.

    Raw values are embedded (fps_id is fps - 1 in the diffusers API; cond_aug is the noise
    augmentation strength). diffusers: `add_time_proj` on [fps-1, motion_bucket_id, noise_aug].
    """
    values = torch.tensor([fps_id, motion_bucket_id, cond_aug], dtype=torch.float32)
    return timestep_embedding(values, dim).reshape(1, 3 * dim)


def make_cond(
    image_embedding: torch.Tensor,
    image_latent: torch.Tensor,
    vector: torch.Tensor,
    num_frames: int,
) -> Cond:
    """Repeat per-video conditioning over frames.

    image_embedding (b, n, d), image_latent (b, c, h, w), vector (b, k) -> a Cond over (b t).
    """
    b = image_latent.shape[0]
    return Cond(
        crossattn=repeat(image_embedding, "b n d -> (b t) n d", t=num_frames),
        concat=repeat(image_latent, "b c h w -> (b t) c h w", t=num_frames),
        vector=repeat(vector.expand(b, -1), "b k -> (b t) k", t=num_frames),
        num_frames=num_frames,
        image_only_indicator=torch.zeros(b, num_frames, device=image_latent.device),
    )


def steer_toward_text(
    image_embedding: torch.Tensor,
    text_embedding: torch.Tensor,
    reference_embedding: torch.Tensor,
    strength: float,
) -> torch.Tensor:
    """Move a CLIP image embedding toward a prompt in the shared CLIP space (official SVD weights).

        d  = normalize(text) - normalize(reference)          (reference: the negative prompt, or "")
        e' = |e| * normalize(normalize(e) + strength * d)

    Subtracting the reference removes what every caption shares (the image-text modality gap),
    leaving the direction the prompt adds; the result keeps the image embedding's norm, as the UNet
    was trained on unnormalized embeddings of that size. strength 0 returns the embedding itself.
    image_embedding (b, n, d) or (b, d); text and reference (d,) or (b, d).
    """
    if strength < 0:
        raise InputError(f"text steering strength must be >= 0, got {strength}")
    if strength == 0:
        return image_embedding
    e = image_embedding.float()
    direction = F.normalize(text_embedding.float(), dim=-1) - F.normalize(reference_embedding.float(), dim=-1)
    if e.ndim == 3:
        direction = direction.reshape(-1, 1, e.shape[-1]) if direction.ndim == 2 else direction
    steered = F.normalize(F.normalize(e, dim=-1) + strength * direction, dim=-1) * e.norm(dim=-1, keepdim=True)
    return steered.to(image_embedding.dtype)


def drop_conditioning(
    cond: Cond,
    p_image: float,
    p_text: float,
    p_both: float,
    generator: torch.Generator | None = None,
    u: torch.Tensor | None = None,
) -> Cond:
    """Training-time condition dropout per video, so one model learns every branch guidance needs.

    Each video independently loses its image only (p_image), its text only (p_text), or both
    (p_both); the three events are exclusive (InstructPix2Pix, Brooks et al. 2023, uses 0.05 each).
    A dropped image is the unconditional branch of SVD (zero CLIP embedding and zero image latent);
    a dropped text is an all-False mask. Micro-conditioning is always kept.
    `u` (b,) uniform draws on [0, 1) decide instead of `generator` (training draws them per sample).
    """
    if min(p_image, p_text, p_both) < 0 or p_image + p_text + p_both > 1:
        raise InputError(f"drop rates must be >= 0 and sum to <= 1, got {p_image}, {p_text}, {p_both}")
    b, t = cond.batch_size, cond.num_frames
    if u is None:
        u = torch.rand(b, generator=generator, device=generator.device if generator is not None else "cpu")
    if u.shape != (b,):
        raise ValueError(f"u must have shape ({b},), got {tuple(u.shape)}")
    u = u.to(cond.concat.device)
    drop_image = (u < p_image) | ((u >= p_image + p_text) & (u < p_image + p_text + p_both))  # (b,)
    drop_text = (u >= p_image) & (u < p_image + p_text + p_both)  # (b,)
    keep_image = repeat(~drop_image, "b -> (b t)", t=t)  # ((b t),)
    out = replace(
        cond,
        crossattn=cond.crossattn * keep_image[:, None, None].to(cond.crossattn.dtype),
        concat=cond.concat * keep_image[:, None, None, None].to(cond.concat.dtype),
    )
    if cond.has_text:
        keep_text = repeat(~drop_text, "b -> (b t)", t=t)
        out = replace(
            out,
            text_mask=cond.text_mask & keep_text[:, None],
            text_pooled=cond.text_pooled * keep_text[:, None].to(cond.text_pooled.dtype),
        )
    return out
