"""The official single-file layout (sgm `DiffusionEngine`: svd, svd_xt, svd_xt_1_1, svd_image_decoder).

Our modules carry the official key suffixes, so this map only moves prefixes:

    model.diffusion_model.*                              <-> unet.*
    conditioner.embedders.0.open_clip.model.visual.*     <-> image_encoder.*
    conditioner.embedders.3.encoder.{encoder,quant_conv} <-> vae.{encoder,quant_conv}   (used at inference)
    first_stage_model.{decoder,post_quant_conv}          <-> vae.{decoder,post_quant_conv}
    first_stage_model.{encoder,quant_conv}                    duplicates of the above (written twice)

Keys with no counterpart in our model (the six OpenCLIP text leftovers, the conditioner's unused
2-D decoder and post_quant_conv) are "extras": kept aside so a conversion loses nothing.
"""

from __future__ import annotations

import torch

UNET = "model.diffusion_model."
CLIP_VISUAL = "conditioner.embedders.0.open_clip.model.visual."
OPEN_CLIP = "conditioner.embedders.0.open_clip.model."
COND_VAE = "conditioner.embedders.3.encoder."
FIRST_STAGE = "first_stage_model."

TEXT_LEFTOVERS = (
    "token_embedding.weight",
    "positional_embedding",
    "ln_final.weight",
    "ln_final.bias",
    "text_projection",
    "logit_scale",
)


def ours_to_sgm(name: str) -> list[str]:
    """The official key(s) that hold our parameter `name` (the VAE encoder is stored twice)."""
    part, rest = name.split(".", 1)
    if part == "unet":
        return [UNET + rest]
    if part == "image_encoder":
        return [CLIP_VISUAL + rest]
    if part == "vae":
        if rest.startswith("encoder."):
            return [COND_VAE + rest, FIRST_STAGE + rest]
        if rest.startswith("quant_conv."):
            # The temporal first stage has no quant_conv; the 2-D one (image decoder variant) has one.
            return [COND_VAE + rest]
        return [FIRST_STAGE + rest]
    raise KeyError(f"not a model parameter: {name}")


def sgm_to_ours(key: str) -> str | None:
    """Our parameter for an official key; None for duplicates and extras (see `classify`)."""
    if key.startswith(UNET):
        return "unet." + key[len(UNET) :]
    if key.startswith(CLIP_VISUAL):
        return "image_encoder." + key[len(CLIP_VISUAL) :]
    if key.startswith(COND_VAE + "encoder.") or key.startswith(COND_VAE + "quant_conv."):
        return "vae." + key[len(COND_VAE) :]
    if key.startswith(FIRST_STAGE + "decoder.") or key.startswith(FIRST_STAGE + "post_quant_conv."):
        return "vae." + key[len(FIRST_STAGE) :]
    return None


def classify(key: str) -> str:
    """'model', 'duplicate' (first-stage copy of the encoder), 'extra' (no counterpart) or 'unknown'."""
    if sgm_to_ours(key) is not None:
        return "model"
    if key.startswith(FIRST_STAGE + "encoder.") or key.startswith(FIRST_STAGE + "quant_conv."):
        return "duplicate"
    if key.startswith(COND_VAE + "decoder.") or key.startswith(COND_VAE + "post_quant_conv."):
        return "extra"
    if key.startswith(OPEN_CLIP) and key[len(OPEN_CLIP) :] in TEXT_LEFTOVERS:
        return "extra"
    return "unknown"


def duplicate_source(key: str) -> str:
    """Our parameter that a first-stage duplicate key copies."""
    return "vae." + key[len(FIRST_STAGE) :]


def expected_shapes(
    model_shapes: dict[str, tuple[int, ...]],
    extra_shapes: dict[str, tuple[int, ...]] | None = None,
) -> dict[str, tuple[int, ...]]:
    """The official key -> shape map for a model whose state-dict shapes are `model_shapes`."""
    two_d = any(k.startswith("vae.post_quant_conv.") for k in model_shapes)
    out: dict[str, tuple[int, ...]] = {}
    for name, shape in model_shapes.items():
        for key in ours_to_sgm(name):
            out[key] = shape
        if two_d and name.startswith("vae.quant_conv."):
            out[FIRST_STAGE + name[len("vae.") :]] = shape
    out.update(extra_shapes or {})
    return out


def extra_shapes(
    vae_2d_decoder_shapes: dict[str, tuple[int, ...]], z_channels: int, text_width: int, embed_dim: int
) -> dict[str, tuple[int, ...]]:
    """Shapes of the extras: the conditioner's 2-D decoder + post_quant_conv, and the text leftovers."""
    out = {COND_VAE + k: s for k, s in vae_2d_decoder_shapes.items()}
    out[COND_VAE + "post_quant_conv.weight"] = (z_channels, z_channels, 1, 1)
    out[COND_VAE + "post_quant_conv.bias"] = (z_channels,)
    out.update(
        {
            OPEN_CLIP + "token_embedding.weight": (49408, text_width),
            OPEN_CLIP + "positional_embedding": (77, text_width),
            OPEN_CLIP + "ln_final.weight": (text_width,),
            OPEN_CLIP + "ln_final.bias": (text_width,),
            OPEN_CLIP + "text_projection": (text_width, embed_dim),
            OPEN_CLIP + "logit_scale": (),
        }
    )
    return out


def to_sgm(
    state_dict: dict[str, torch.Tensor], extras: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Our state dict (+ extras) -> the official layout. Duplicates are cloned (safetensors forbids aliasing)."""
    two_d = any(k.startswith("vae.post_quant_conv.") for k in state_dict)
    out: dict[str, torch.Tensor] = {}
    for name, t in state_dict.items():
        keys = ours_to_sgm(name)
        if two_d and name.startswith("vae.quant_conv."):
            keys = keys + [FIRST_STAGE + name[len("vae.") :]]
        out[keys[0]] = t
        for k in keys[1:]:
            out[k] = t.clone()
    out.update(extras or {})
    return out
