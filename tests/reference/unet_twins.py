"""diffusers twins of our video UNet, for parity tests on identical weights.

diffusers builds most of its SVD res blocks with GroupNorm eps 1e-6 (all but
`DownBlockSpatioTemporal` and the mid block), where sgm, the code the released weights come
from, uses 1e-5 everywhere (`normalization()`); we follow sgm. `diffusers_twin(sgm_eps=True)`
pins that one known difference so the remaining comparison is exact to float32 rounding.

`UNetSpatioTemporalConditionModel.forward` always passes image_only_indicator = zeros and one
context per video. `forward_with_indicator` drives the same diffusers blocks with a given
indicator and per-frame contexts, mirroring that forward line for line otherwise.
"""

from __future__ import annotations

import torch
from diffusers import UNetSpatioTemporalConditionModel
from diffusers.models.resnet import SpatioTemporalResBlock
from torch import nn

from kinetograph.io.diffusers_unet import unet_diffusers_config, unet_to_diffusers
from kinetograph.models.unet import VideoUNet


def diffusers_twin(unet: VideoUNet, sgm_eps: bool = False) -> UNetSpatioTemporalConditionModel:
    """A diffusers UNet configured from `unet.cfg` holding `unet`'s weights (through our converter)."""
    config = {k: v for k, v in unet_diffusers_config(unet.cfg).items() if not k.startswith("_")}
    twin = UNetSpatioTemporalConditionModel(**config).eval()
    twin.load_state_dict(unet_to_diffusers(unet.state_dict()), strict=True)
    return pin_sgm_eps(twin) if sgm_eps else twin


def pin_sgm_eps(model: nn.Module) -> nn.Module:
    """Set every res-block GroupNorm eps of a diffusers SVD UNet to sgm's 1e-5, in place."""
    for block in model.modules():
        if isinstance(block, SpatioTemporalResBlock):
            for norm in block.modules():
                if isinstance(norm, nn.GroupNorm):
                    norm.eps = 1e-5
    return model


@torch.no_grad()
def forward_with_indicator(
    model: UNetSpatioTemporalConditionModel,
    sample: torch.Tensor,  # (b, t, c, h, w)
    timestep: torch.Tensor,  # (b,)
    context: torch.Tensor,  # ((b t), n, d): per frame
    added_time_ids: torch.Tensor,  # (b, 3)
    image_only_indicator: torch.Tensor,  # (b, t)
) -> torch.Tensor:
    b, t = sample.shape[:2]
    emb = model.time_embedding(model.time_proj(timestep).to(sample.dtype))
    time_embeds = model.add_time_proj(added_time_ids.flatten()).reshape(b, -1).to(emb.dtype)
    emb = emb + model.add_embedding(time_embeds)
    emb = emb.repeat_interleave(t, dim=0)
    sample = model.conv_in(sample.flatten(0, 1))
    indicator = image_only_indicator.to(sample.dtype)

    # diffusers forwards the skip sizes to the upsamplers only when a side is not a multiple of 2^ups.
    forward_size = any(s % 2**model.num_upsamplers for s in sample.shape[-2:])
    res = (sample,)
    for block in model.down_blocks:
        kwargs = {"encoder_hidden_states": context} if getattr(block, "has_cross_attention", False) else {}
        sample, r = block(hidden_states=sample, temb=emb, image_only_indicator=indicator, **kwargs)
        res += r
    sample = model.mid_block(
        hidden_states=sample, temb=emb, encoder_hidden_states=context, image_only_indicator=indicator
    )
    for i, block in enumerate(model.up_blocks):
        r, res = res[-len(block.resnets) :], res[: -len(block.resnets)]
        size = res[-1].shape[2:] if forward_size and i < len(model.up_blocks) - 1 else None
        kwargs = {"encoder_hidden_states": context} if getattr(block, "has_cross_attention", False) else {}
        sample = block(
            hidden_states=sample,
            temb=emb,
            res_hidden_states_tuple=r,
            upsample_size=size,
            image_only_indicator=indicator,
            **kwargs,
        )
    sample = model.conv_out(model.conv_act(model.conv_norm_out(sample)))
    return sample.reshape(b, t, *sample.shape[1:])
