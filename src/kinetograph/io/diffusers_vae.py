"""Our VAE state dict <-> diffusers `AutoencoderKLTemporalDecoder` / `AutoencoderKL`.

Our keys are the sgm ones (see `kinetograph.models.vae`). The map is a name table built from
the structure the keys reveal (levels, blocks per level, temporal or not), renames only,
except the mid attention's q/k/v/proj_out: 1x1 conv [C, C, 1, 1] here, Linear [C, C] there.
Tensors are passed through (or reshaped as views), so conversions are bit-exact. Both
directions refuse keys the table does not know and report the ones it expects but misses.

    encoder.down.i.block.j            encoder.down_blocks.i.resnets.j
    encoder.down.i.downsample.conv    encoder.down_blocks.i.downsamplers.0.conv
    {en,de}coder.mid.block_k          {en,de}coder.mid_block.resnets.(k-1)
    {en,de}coder.mid.attn_1.{norm,q,k,v,proj_out}
                                      ...mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0}
    decoder.up.i.block.j              decoder.up_blocks.(n-1-i).resnets.j      (order reversed)
    decoder.up.i.upsample.conv        decoder.up_blocks.(n-1-i).upsamplers.0.conv
    *.norm_out, nin_shortcut          *.conv_norm_out, conv_shortcut
  temporal decoder only:
    <block>.{norm1,conv1,norm2,conv2,nin_shortcut}  <block>.spatial_res_block.{..., conv_shortcut}
    <block>.time_stack.{in_layers.0,in_layers.2,out_layers.0,out_layers.3}
                                      <block>.temporal_res_block.{norm1,conv1,norm2,conv2}
    <block>.mix_factor                <block>.time_mixer.mix_factor
    decoder.conv_out.time_mix_conv    decoder.time_conv_out
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from kinetograph.errors import CheckpointError
from kinetograph.models.vae import VAEConfig

TEMPORAL_CLASS = "AutoencoderKLTemporalDecoder"
IMAGE_CLASS = "AutoencoderKL"

# Within one spatial ResnetBlock (encoder, 2-D decoder): ours -> diffusers.
_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
# Within one temporal-decoder block (sgm VideoResBlock -> diffusers SpatioTemporalResBlock).
_VIDEO_RESNET = {
    **{ours: f"spatial_res_block.{theirs}" for ours, theirs in _RESNET.items()},
    "time_stack.in_layers.0": "temporal_res_block.norm1",
    "time_stack.in_layers.2": "temporal_res_block.conv1",
    "time_stack.out_layers.0": "temporal_res_block.norm2",
    "time_stack.out_layers.3": "temporal_res_block.conv2",
}
_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_ATTENTION_LINEAR = ("q", "k", "v", "proj_out")  # 1x1 conv here, Linear in diffusers
_OPTIONAL = ("nin_shortcut",)  # present only where a block changes width


@dataclass(frozen=True)
class _Entry:
    """One tensor name in both layouts."""

    ours: str
    theirs: str
    conv_to_linear: bool = False  # weight is [C, C, 1, 1] ours, [C, C] theirs
    optional: bool = False  # only where a block changes width (nin_shortcut)


def _name_table(levels: int, blocks: int, temporal: bool) -> list[_Entry]:
    """Every tensor of a VAE with `levels` resolutions and `blocks` ResnetBlocks per encoder level."""
    table: list[_Entry] = []

    def params(ours: str, theirs: str, conv_to_linear: bool = False, optional: bool = False) -> None:
        table.append(_Entry(f"{ours}.weight", f"{theirs}.weight", conv_to_linear, optional))
        table.append(_Entry(f"{ours}.bias", f"{theirs}.bias", False, optional))

    def resnet(ours: str, theirs: str, video: bool) -> None:
        for o, t in (_VIDEO_RESNET if video else _RESNET).items():
            params(f"{ours}.{o}", f"{theirs}.{t}", optional=o in _OPTIONAL)
        if video:
            table.append(_Entry(f"{ours}.mix_factor", f"{theirs}.time_mixer.mix_factor"))

    def attention(ours: str, theirs: str) -> None:
        for o, t in _ATTENTION.items():
            params(f"{ours}.{o}", f"{theirs}.{t}", conv_to_linear=o in _ATTENTION_LINEAR)

    for part, video in (("encoder", False), ("decoder", temporal)):
        params(f"{part}.conv_in", f"{part}.conv_in")
        resnet(f"{part}.mid.block_1", f"{part}.mid_block.resnets.0", video)
        attention(f"{part}.mid.attn_1", f"{part}.mid_block.attentions.0")
        resnet(f"{part}.mid.block_2", f"{part}.mid_block.resnets.1", video)
        params(f"{part}.norm_out", f"{part}.conv_norm_out")
        params(f"{part}.conv_out", f"{part}.conv_out")
    for i in range(levels):
        for j in range(blocks):
            resnet(f"encoder.down.{i}.block.{j}", f"encoder.down_blocks.{i}.resnets.{j}", False)
        if i != levels - 1:
            params(f"encoder.down.{i}.downsample.conv", f"encoder.down_blocks.{i}.downsamplers.0.conv")
        b = levels - 1 - i  # diffusers numbers the decoder levels in execution order
        for j in range(blocks + 1):
            resnet(f"decoder.up.{i}.block.{j}", f"decoder.up_blocks.{b}.resnets.{j}", temporal)
        if i != 0:
            params(f"decoder.up.{i}.upsample.conv", f"decoder.up_blocks.{b}.upsamplers.0.conv")
    params("quant_conv", "quant_conv")
    if temporal:
        params("decoder.conv_out.time_mix_conv", "decoder.time_conv_out")
    else:
        params("post_quant_conv", "post_quant_conv")
    return table


def _count(keys: list[str], pattern: str, what: str) -> int:
    found = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    if not found:
        raise CheckpointError(f"not a VAE state dict: no {what} keys (pattern {pattern!r})")
    return max(found) + 1


def _convert(sd: dict[str, torch.Tensor], to_diffusers: bool) -> dict[str, torch.Tensor]:
    keys = list(sd)
    if to_diffusers:
        levels = _count(keys, r"encoder\.down\.(\d+)\.", "encoder.down.<i>")
        blocks = _count(keys, r"encoder\.down\.0\.block\.(\d+)\.", "encoder.down.0.block.<j>")
        temporal = any(".time_stack." in k or ".time_mix_conv." in k for k in keys)
    else:
        levels = _count(keys, r"encoder\.down_blocks\.(\d+)\.", "encoder.down_blocks.<i>")
        blocks = _count(keys, r"encoder\.down_blocks\.0\.resnets\.(\d+)\.", "encoder.down_blocks.0.resnets.<j>")
        temporal = any(".temporal_res_block." in k or k.startswith("decoder.time_conv_out.") for k in keys)
    table = _name_table(levels, blocks, temporal)
    source = {(e.ours if to_diffusers else e.theirs): e for e in table}

    unknown = sorted(k for k in keys if k not in source)
    if unknown:
        layout = "our (sgm-named)" if to_diffusers else "diffusers"
        raise CheckpointError(
            f"{len(unknown)} key(s) are not part of a {layout} VAE state dict, e.g. {unknown[:5]}; "
            "pass exactly the VAE's tensors, with the VAE prefix stripped"
        )
    missing = sorted(name for name, e in source.items() if not e.optional and name not in sd)
    if missing:
        raise CheckpointError(f"VAE state dict is incomplete: {len(missing)} key(s) missing, e.g. {missing[:5]}")

    out: dict[str, torch.Tensor] = {}
    for name, tensor in sd.items():
        e = source[name]
        if e.conv_to_linear:
            expected_ndim = 4 if to_diffusers else 2
            if tensor.ndim != expected_ndim:
                raise CheckpointError(
                    f"{name}: expected a {expected_ndim}-d attention weight, got {tuple(tensor.shape)}"
                )
            tensor = tensor[:, :, 0, 0] if to_diffusers else tensor[:, :, None, None]
        out[e.theirs if to_diffusers else e.ours] = tensor
    return out


def vae_to_diffusers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our VAE state dict (keys `encoder.*`, `quant_conv.*`, `decoder.*`, ...) -> diffusers names.

    The result loads with `strict=True` into `AutoencoderKLTemporalDecoder` (temporal decoder)
    or `AutoencoderKL` (2-D decoder) built from `vae_diffusers_config`.
    """
    return _convert(sd, to_diffusers=True)


def vae_from_diffusers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers `AutoencoderKLTemporalDecoder` / `AutoencoderKL` state dict -> our VAE names."""
    return _convert(sd, to_diffusers=False)


def vae_diffusers_config(cfg: VAEConfig) -> dict:
    """The diffusers `config.json` for a VAE with this config, `_class_name` included.

    diffusers' temporal decoder hard-codes two things sgm leaves configurable, so those must
    hold: mid block = first resnet, attention, then `layers_per_block - 1` resnets (sgm always
    has two: num_res_blocks must be 2), and (3, 1, 1) temporal kernels.
    """
    if cfg.patch_shortcut:
        raise CheckpointError(
            "this autoencoder has patch shortcuts, which diffusers' autoencoders lack; "
            "keep this model in the original single-file layout"
        )
    n = len(cfg.ch_mult)
    common = {
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_ch,
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "block_out_channels": [cfg.ch * m for m in cfg.ch_mult],
        "layers_per_block": cfg.num_res_blocks,
        "latent_channels": cfg.z_channels,
        "sample_size": 768,  # as the released SVD repos; only used by diffusers' tiling
        "scaling_factor": cfg.scale_factor,
        "force_upcast": True,
    }
    if cfg.temporal_decoder:
        if cfg.num_res_blocks != 2:
            raise CheckpointError(
                f"diffusers' AutoencoderKLTemporalDecoder needs num_res_blocks=2 (got {cfg.num_res_blocks}): "
                "its mid block has layers_per_block resnets where sgm always has two"
            )
        if cfg.norm_groups != 32:
            raise CheckpointError(
                f"diffusers' AutoencoderKLTemporalDecoder has 32 GroupNorm groups, not {cfg.norm_groups}; "
                "keep this model in the original single-file layout"
            )
        if cfg.video_kernel_size != (3, 1, 1):
            raise CheckpointError(
                "diffusers' AutoencoderKLTemporalDecoder has (3, 1, 1) temporal kernels, "
                f"not {cfg.video_kernel_size}"
            )
        return {"_class_name": TEMPORAL_CLASS, **common}
    return {
        "_class_name": IMAGE_CLASS,
        **common,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "act_fn": "silu",
        "norm_num_groups": cfg.norm_groups,
        "use_quant_conv": True,
        "use_post_quant_conv": True,
        "mid_block_add_attention": True,
    }


# What our architecture fixes; a diffusers config with other values cannot be represented.
_FIXED = {
    "act_fn": "silu",
    "use_quant_conv": True,
    "use_post_quant_conv": True,
    "mid_block_add_attention": True,
    "shift_factor": None,
    "latents_mean": None,
    "latents_std": None,
}


def vae_config_from_diffusers(config: dict) -> VAEConfig:
    """Our `VAEConfig` from a diffusers VAE `config.json` dict (diffusers' defaults fill gaps)."""
    cls = config.get("_class_name")
    if cls not in (TEMPORAL_CLASS, IMAGE_CLASS):
        raise CheckpointError(f"VAE config has _class_name {cls!r}; expected {TEMPORAL_CLASS} or {IMAGE_CLASS}")
    temporal = cls == TEMPORAL_CLASS
    widths = list(config.get("block_out_channels", [64]))
    n = len(widths)
    for key, expected in (
        ("down_block_types", ["DownEncoderBlock2D"] * n),
        *([] if temporal else [("up_block_types", ["UpDecoderBlock2D"] * n)]),
    ):
        got = list(config.get(key, expected))
        if got != expected:
            raise CheckpointError(f"VAE config {key}={got} is not supported; expected {expected}")
    if not temporal:
        for key, expected in _FIXED.items():
            if config.get(key, expected) != expected:
                raise CheckpointError(f"VAE config {key}={config[key]!r} is not supported; expected {expected!r}")
    if temporal and config.get("layers_per_block", 1) != 2:
        raise CheckpointError(
            f"AutoencoderKLTemporalDecoder with layers_per_block={config.get('layers_per_block', 1)} is not "
            "supported: only 2 gives sgm's two mid-block resnets"
        )
    ch = widths[0]
    if any(w % ch for w in widths):
        raise CheckpointError(f"VAE block_out_channels {widths} are not multiples of the first")
    try:
        return VAEConfig(
            ch=ch,
            ch_mult=tuple(w // ch for w in widths),
            num_res_blocks=int(config.get("layers_per_block", 1)),
            in_channels=int(config.get("in_channels", 3)),
            out_ch=int(config.get("out_channels", 3)),
            z_channels=int(config.get("latent_channels", 4)),
            temporal_decoder=temporal,
            scale_factor=float(config.get("scaling_factor", 0.18215)),
            norm_groups=int(config.get("norm_num_groups", 32)) if not temporal else 32,
        )
    except ValueError as err:
        raise CheckpointError(f"VAE config is not supported: {err}") from err
