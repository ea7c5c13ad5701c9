"""Typed conditioning for the video UNet.

SVD conditions on three signals (Blattmann et al. 2023, sec. 4 and App. D):
- `crossattn`: the CLIP image embedding of the clean input frame, attended to by every block;
- `concat`: the VAE latent of the (noise-augmented) input frame, concatenated to the noisy latent;
- `vector`: micro-conditioning [emb(fps_id) | emb(motion_bucket_id) | emb(cond_aug)], added to
  the timestep embedding.
All tensors are per frame, frames folded into the batch as (b t), frames fastest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import repeat

from kinetograph.models.layers import timestep_embedding


@dataclass(frozen=True)
class Cond:
    crossattn: torch.Tensor  # ((b t), n, context_dim)
    concat: torch.Tensor  # ((b t), c, h, w)
    vector: torch.Tensor  # ((b t), adm_in_channels)
    num_frames: int
    image_only_indicator: torch.Tensor  # (b, t): 1 where a frame is a still image

    @property
    def batch_size(self) -> int:
        return self.concat.shape[0] // self.num_frames

    @staticmethod
    def cat(conds: list[Cond]) -> Cond:
        """Stack conditionings along the video batch (e.g. [uncond, cond] for guidance)."""
        t = conds[0].num_frames
        assert all(c.num_frames == t for c in conds)
        return Cond(
            crossattn=torch.cat([c.crossattn for c in conds]),
            concat=torch.cat([c.concat for c in conds]),
            vector=torch.cat([c.vector for c in conds]),
            num_frames=t,
            image_only_indicator=torch.cat([c.image_only_indicator for c in conds]),
        )

    def zeroed(self) -> Cond:
        """The unconditional branch of SVD: image embedding and image latent set to zero, vector kept."""
        return Cond(
            crossattn=torch.zeros_like(self.crossattn),
            concat=torch.zeros_like(self.concat),
            vector=self.vector,
            num_frames=self.num_frames,
            image_only_indicator=self.image_only_indicator,
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
