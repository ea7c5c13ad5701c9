"""The video UNet in diffusers' layout (`UNetSpatioTemporalConditionModel`) and back.

Every tensor keeps its shape and values; only names change. Our names are sgm's (see
`kinetograph.models.unet`). A name is fixed by the block's position, so the map needs only the
number of res blocks per level (read off the keys) and, for an upsampler, whether its level
attends (also read off the keys):

    input_blocks.0.0                      <-> conv_in
    input_blocks.{1 + l(R+1) + j}.0 / .1  <-> down_blocks.l.resnets.j / .attentions.j   (j < R)
    input_blocks.{1 + l(R+1) + R}.0.op    <-> down_blocks.l.downsamplers.0.conv
    middle_block.0 / .1 / .2              <-> mid_block.resnets.0 / .attentions.0 / .resnets.1
    output_blocks.{b(R+1) + j}.0 / .1     <-> up_blocks.b.resnets.j / .attentions.j      (j <= R)
    output_blocks.{b(R+1) + R}.{1|2}.conv <-> up_blocks.b.upsamplers.0.conv   (.2 after an attention)
    time_embed.{0,2} <-> time_embedding.linear_{1,2}     label_emb.0.{0,2} <-> add_embedding.linear_{1,2}
    out.{0,2}        <-> conv_norm_out / conv_out

with R = num_res_blocks and b = number of levels - 1 - l. Inside the blocks, see the tables below.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from kinetograph.errors import CheckpointError
from kinetograph.models.unet import UNetConfig

# Module paths outside the blocks.
_TOP = {
    "time_embed.0": "time_embedding.linear_1",
    "time_embed.2": "time_embedding.linear_2",
    "label_emb.0.0": "add_embedding.linear_1",
    "label_emb.0.2": "add_embedding.linear_2",
    "input_blocks.0.0": "conv_in",
    "out.0": "conv_norm_out",
    "out.2": "conv_out",
}

# Inside a VideoResBlock (diffusers `SpatioTemporalResBlock`).
_RES_BLOCK = {
    "in_layers.0": "spatial_res_block.norm1",
    "in_layers.2": "spatial_res_block.conv1",
    "emb_layers.1": "spatial_res_block.time_emb_proj",
    "out_layers.0": "spatial_res_block.norm2",
    "out_layers.3": "spatial_res_block.conv2",
    "skip_connection": "spatial_res_block.conv_shortcut",
    "time_stack.in_layers.0": "temporal_res_block.norm1",
    "time_stack.in_layers.2": "temporal_res_block.conv1",
    "time_stack.emb_layers.1": "temporal_res_block.time_emb_proj",
    "time_stack.out_layers.0": "temporal_res_block.norm2",
    "time_stack.out_layers.3": "temporal_res_block.conv2",
    "time_mixer": "time_mixer",
}

# Inside a SpatialVideoTransformer (diffusers `TransformerSpatioTemporalModel`), outside its blocks.
_TRANSFORMER = {
    "norm": "norm",
    "proj_in": "proj_in",
    "proj_out": "proj_out",
    "time_pos_embed.0": "time_pos_embed.linear_1",
    "time_pos_embed.2": "time_pos_embed.linear_2",
    "time_mixer": "time_mixer",
}
# Its spatial blocks `transformer_blocks.d` keep their name; the temporal ones are renamed.
_TRANSFORMER_LISTS = {"transformer_blocks": "transformer_blocks", "time_stack": "temporal_transformer_blocks"}
# Modules inside either kind of transformer block: the same names on both sides.
_BLOCK_MODULES = {
    *(f"{attn}.{proj}" for attn in ("attn1", "attn2") for proj in ("to_q", "to_k", "to_v", "to_out.0")),
    *(f"{ff}.{proj}" for ff in ("ff", "ff_in") for proj in ("net.0.proj", "net.2")),
    "norm1", "norm2", "norm3", "norm_in",
}  # fmt: skip

_PARAMS = {"weight", "bias", "mix_factor"}


def _unknown(key: str, layout: str) -> CheckpointError:
    return CheckpointError(f"unknown UNet key {key!r}: not part of the SVD video UNet in the {layout} layout")


def _inv(table: Mapping[str, str]) -> dict[str, str]:
    return {v: k for k, v in table.items()}


def _rename_transformer(rest: str, to_diffusers: bool) -> str | None:
    """Module path inside an attention layer, or None if it has no counterpart."""
    table = _TRANSFORMER if to_diffusers else _inv(_TRANSFORMER)
    if rest in table:
        return table[rest]
    lists = _TRANSFORMER_LISTS if to_diffusers else _inv(_TRANSFORMER_LISTS)
    m = re.fullmatch(r"(\w+)\.(\d+)\.(.+)", rest)
    if m is None or m[1] not in lists or m[3] not in _BLOCK_MODULES:
        return None
    return f"{lists[m[1]]}.{m[2]}.{m[3]}"


def _rename_res_block(rest: str, to_diffusers: bool) -> str | None:
    return (_RES_BLOCK if to_diffusers else _inv(_RES_BLOCK)).get(rest)


# ---------------------------------------------------------------------------------------------
# sgm -> diffusers


def _sgm_res_blocks_per_level(keys: list[str]) -> int:
    """R from the input blocks: there are L(R+1) of them, L-1 being downsamplers."""
    blocks = {int(m[1]) for k in keys if (m := re.match(r"input_blocks\.(\d+)\.", k))}
    downs = {int(m[1]) for k in keys if (m := re.match(r"input_blocks\.(\d+)\.0\.op\.", k))}
    if not blocks:
        raise CheckpointError("not a video UNet state dict: no input_blocks.* keys")
    levels = len(downs) + 1
    n = max(blocks) + 1
    if n % levels:
        raise CheckpointError(f"UNet state dict has {n} input blocks, not a whole number per each of {levels} levels")
    return n // levels - 1


def _sgm_module_to_diffusers(module: str, r: int) -> str | None:
    if module in _TOP:
        return _TOP[module]
    if m := re.fullmatch(r"input_blocks\.(\d+)\.(\d+)\.(.+)", module):
        n, sub, rest = int(m[1]), int(m[2]), m[3]
        if n == 0:
            return None
        level, j = divmod(n - 1, r + 1)
        if j == r:
            return f"down_blocks.{level}.downsamplers.0.conv" if sub == 0 and rest == "op" else None
        prefix = f"down_blocks.{level}"
    elif m := re.fullmatch(r"middle_block\.(\d+)\.(.+)", module):
        sub, rest = int(m[1]), m[2]
        if sub in (0, 2):
            name = _rename_res_block(rest, True)
            return name and f"mid_block.resnets.{sub // 2}.{name}"
        name = _rename_transformer(rest, True) if sub == 1 else None
        return name and f"mid_block.attentions.0.{name}"
    elif m := re.fullmatch(r"output_blocks\.(\d+)\.(\d+)\.(.+)", module):
        n, sub, rest = int(m[1]), int(m[2]), m[3]
        level, j = divmod(n, r + 1)  # level counts from the deepest: diffusers' up block index
        if sub in (1, 2) and rest == "conv":
            return f"up_blocks.{level}.upsamplers.0.conv" if j == r else None
        prefix = f"up_blocks.{level}"
    else:
        return None
    if sub == 0:
        name = _rename_res_block(rest, True)
        return name and f"{prefix}.resnets.{j}.{name}"
    name = _rename_transformer(rest, True) if sub == 1 else None
    return name and f"{prefix}.attentions.{j}.{name}"


def unet_to_diffusers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our (sgm-suffix) UNet state dict -> diffusers `UNetSpatioTemporalConditionModel` names.

    The tensors are passed through untouched; an unknown key raises CheckpointError.
    """
    keys = list(sd)
    r = _sgm_res_blocks_per_level(keys)
    out: dict[str, torch.Tensor] = {}
    for key in keys:
        module, _, param = key.rpartition(".")
        name = _sgm_module_to_diffusers(module, r) if param in _PARAMS else None
        if name is None:
            raise _unknown(key, "original (sgm)")
        out[f"{name}.{param}"] = sd[key]
    assert len(out) == len(sd), "two keys mapped to one name"
    return out


# ---------------------------------------------------------------------------------------------
# diffusers -> sgm


def _diffusers_module_to_sgm(module: str, r: int, up_attends: set[int]) -> str | None:
    top = _inv(_TOP)
    if module in top:
        return top[module]
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv", module):
        return f"input_blocks.{1 + int(m[1]) * (r + 1) + r}.0.op"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv", module):
        b = int(m[1])
        return f"output_blocks.{b * (r + 1) + r}.{2 if b in up_attends else 1}.conv"
    if m := re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", module):
        kind, i, rest = m[1], int(m[2]), m[3]
        if kind == "resnets" and i in (0, 1):
            name = _rename_res_block(rest, False)
            return name and f"middle_block.{2 * i}.{name}"
        name = _rename_transformer(rest, False) if i == 0 else None
        return name and f"middle_block.1.{name}"
    if m := re.fullmatch(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", module):
        side, level, kind, j, rest = m[1], int(m[2]), m[3], int(m[4]), m[5]
        if side == "down":
            if j >= r:
                return None
            prefix = f"input_blocks.{1 + level * (r + 1) + j}"
        else:
            if j > r:
                return None
            prefix = f"output_blocks.{level * (r + 1) + j}"
        if kind == "resnets":
            name = _rename_res_block(rest, False)
            return name and f"{prefix}.0.{name}"
        name = _rename_transformer(rest, False)
        return name and f"{prefix}.1.{name}"
    return None


def unet_from_diffusers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers `UNetSpatioTemporalConditionModel` state dict -> ours (sgm suffixes).

    The tensors are passed through untouched; an unknown key raises CheckpointError.
    """
    keys = list(sd)
    res = {int(m[1]) for k in keys if (m := re.match(r"down_blocks\.0\.resnets\.(\d+)\.", k))}
    if not res:
        raise CheckpointError("not a diffusers UNetSpatioTemporalConditionModel state dict: no down_blocks.0.resnets.*")
    r = max(res) + 1
    up_attends = {int(m[1]) for k in keys if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", k))}
    out: dict[str, torch.Tensor] = {}
    for key in keys:
        module, _, param = key.rpartition(".")
        name = _diffusers_module_to_sgm(module, r, up_attends) if param in _PARAMS else None
        if name is None:
            raise _unknown(key, "diffusers")
        out[f"{name}.{param}"] = sd[key]
    assert len(out) == len(sd), "two keys mapped to one name"
    return out


# ---------------------------------------------------------------------------------------------
# config.json


def unet_diffusers_config(cfg: UNetConfig, *, sample_size: int = 96, num_frames: int = 25) -> dict[str, Any]:
    """config.json of the equivalent diffusers `UNetSpatioTemporalConditionModel`.

    `sample_size` and `num_frames` do not change the network; the defaults are HF's SVD-XT values.
    """
    if cfg.video_kernel_size != (3, 1, 1):
        raise CheckpointError(f"diffusers' SVD UNet has temporal kernel (3, 1, 1), not {cfg.video_kernel_size}")
    if cfg.adm_in_channels % 3:
        raise CheckpointError(f"adm_in_channels {cfg.adm_in_channels} must be 3 x the micro-conditioning width")
    levels = range(len(cfg.channel_mult))
    down = [
        "CrossAttnDownBlockSpatioTemporal" if cfg.has_attention(level) else "DownBlockSpatioTemporal"
        for level in levels
    ]
    up = [
        "CrossAttnUpBlockSpatioTemporal" if cfg.has_attention(level) else "UpBlockSpatioTemporal"
        for level in reversed(levels)
    ]
    return {
        "_class_name": "UNetSpatioTemporalConditionModel",
        "sample_size": sample_size,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "down_block_types": down,
        "up_block_types": up,
        "block_out_channels": list(cfg.level_channels),
        "addition_time_embed_dim": cfg.adm_in_channels // 3,
        "projection_class_embeddings_input_dim": cfg.adm_in_channels,
        "layers_per_block": cfg.num_res_blocks,
        "cross_attention_dim": cfg.context_dim,
        "transformer_layers_per_block": cfg.transformer_depth,
        "num_attention_heads": [max(1, cfg.num_heads(w)) for w in cfg.level_channels],
        "num_frames": num_frames,
    }


def _uniform(config: Mapping[str, Any], name: str, default: Any, n: int) -> int:
    """A per-level diffusers value that our config holds once: an int or n equal ints."""
    value = config.get(name, default)
    if isinstance(value, int):
        return value
    if len(value) != n or len(set(value)) != 1 or not isinstance(value[0], int):
        raise CheckpointError(f"unsupported diffusers UNet config: {name}={value!r} must be one value for all levels")
    return value[0]


def unet_config_from_diffusers(config: Mapping[str, Any]) -> UNetConfig:
    """Our UNetConfig from a diffusers UNetSpatioTemporalConditionModel config.json (its defaults apply)."""
    name = config.get("_class_name", "UNetSpatioTemporalConditionModel")
    if name != "UNetSpatioTemporalConditionModel":
        raise CheckpointError(f"unet/config.json describes a {name}, not an SVD UNetSpatioTemporalConditionModel")
    widths = list(config.get("block_out_channels", (320, 640, 1280, 1280)))
    n = len(widths)
    down = list(config.get("down_block_types", ["CrossAttnDownBlockSpatioTemporal"] * 3 + ["DownBlockSpatioTemporal"]))
    up = list(config.get("up_block_types", ["UpBlockSpatioTemporal"] + ["CrossAttnUpBlockSpatioTemporal"] * 3))
    known_down = {"CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"}
    if len(down) != n or len(up) != n or not set(down) <= known_down:
        raise CheckpointError(f"unsupported diffusers UNet config: down_block_types {down}, up_block_types {up}")
    attends = [t.startswith("CrossAttn") for t in down]
    if up != [t.replace("Down", "Up") for t in reversed(down)]:
        raise CheckpointError(f"unsupported diffusers UNet config: up_block_types {up} do not mirror {down}")
    mc = widths[0]
    if any(w % mc for w in widths):
        raise CheckpointError(f"unsupported diffusers UNet config: block_out_channels {widths} not multiples of {mc}")

    heads = config.get("num_attention_heads", (5, 10, 20, 20))
    heads = [heads] * n if isinstance(heads, int) else list(heads)
    if len(heads) != n or any(not isinstance(h, int) or h < 1 for h in heads):
        raise CheckpointError(f"unsupported diffusers UNet config: num_attention_heads {heads} for {n} levels")
    # Every attention layer (the middle one included, at the last width) must have one head width.
    head_widths = {widths[i] / heads[i] for i in range(n) if attends[i] or i == n - 1}
    if len(head_widths) != 1 or not next(iter(head_widths)).is_integer():
        raise CheckpointError(
            f"unsupported diffusers UNet config: num_attention_heads {heads} over {widths} give head widths "
            f"{sorted(head_widths)}; one head width for all levels is supported"
        )
    adm = config.get("projection_class_embeddings_input_dim", 768)
    add_dim = config.get("addition_time_embed_dim", 256)
    if 3 * add_dim != adm:
        raise CheckpointError(
            f"unsupported diffusers UNet config: projection_class_embeddings_input_dim {adm} is not "
            f"3 x addition_time_embed_dim {add_dim} (SVD embeds fps, motion bucket and noise augmentation)"
        )
    return UNetConfig(
        in_channels=config.get("in_channels", 8),
        out_channels=config.get("out_channels", 4),
        model_channels=mc,
        channel_mult=tuple(w // mc for w in widths),
        num_res_blocks=_uniform(config, "layers_per_block", 2, n),
        attention_resolutions=tuple(2**i for i in reversed(range(n)) if attends[i]),
        num_head_channels=int(next(iter(head_widths))),
        transformer_depth=_uniform(config, "transformer_layers_per_block", 1, n),
        context_dim=_uniform(config, "cross_attention_dim", 1024, n),
        adm_in_channels=adm,
        video_kernel_size=(3, 1, 1),
    )
