"""Our CLIP image encoder (open_clip names) <-> transformers `CLIPVisionModelWithProjection`.

The diffusers SVD repos ship the image encoder as a transformers model (`image_encoder/`), the
official sgm files as open_clip's `visual.*`. The map is a table: renames, plus two reshapes:

- `transformer.resblocks.N.attn.in_proj_{weight,bias}` rows [q; k; v] <-> `self_attn.{q,k,v}_proj`;
- `proj` [width, embed_dim] (used as x @ proj) <-> `visual_projection.weight` [embed_dim, width]
  (a bias-free Linear), i.e. its transpose.

Both directions are value-exact and strict: a key outside the table or a missing key is a
`CheckpointError`. transformers' `vision_model.embeddings.position_ids` is a non-persistent buffer
(arange); older exports saved it, so it is accepted and dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import torch

from kinetograph.errors import CheckpointError
from kinetograph.models.clip_image import CLIPVisionConfig

Part = str | int | None  # None: same tensor; "T": transpose; 0/1/2: q/k/v rows of in_proj

_POSITION_IDS = "vision_model.embeddings.position_ids"
_QKV = {"q": 0, "k": 1, "v": 2}


def _table(layers: int) -> Iterator[tuple[str, str, Part]]:
    """(our key, transformers key, part) in transformers' state_dict order."""
    yield "class_embedding", "vision_model.embeddings.class_embedding", None
    yield "conv1.weight", "vision_model.embeddings.patch_embedding.weight", None
    yield "positional_embedding", "vision_model.embeddings.position_embedding.weight", None
    for p in ("weight", "bias"):
        yield f"ln_pre.{p}", f"vision_model.pre_layrnorm.{p}", None
    for i in range(layers):
        ours, theirs = f"transformer.resblocks.{i}.", f"vision_model.encoder.layers.{i}."
        for name in ("k", "v", "q"):
            for p in ("weight", "bias"):
                yield f"{ours}attn.in_proj_{p}", f"{theirs}self_attn.{name}_proj.{p}", _QKV[name]
        for a, b in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                     ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2"), ("ln_2", "layer_norm2")):
            for p in ("weight", "bias"):
                yield f"{ours}{a}.{p}", f"{theirs}{b}.{p}", None
    for p in ("weight", "bias"):
        yield f"ln_post.{p}", f"vision_model.post_layernorm.{p}", None
    yield "proj", "visual_projection.weight", "T"


def _our_order(layers: int) -> list[str]:
    """Our state_dict order (open_clip's): own parameters first, then submodules."""
    block = ["ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias"]
    block += ["attn.out_proj.weight", "attn.out_proj.bias"]
    block += [f"{a}.{p}" for a in ("ln_2", "mlp.c_fc", "mlp.c_proj") for p in ("weight", "bias")]
    keys = ["class_embedding", "positional_embedding", "proj", "conv1.weight", "ln_pre.weight", "ln_pre.bias"]
    keys += [f"transformer.resblocks.{i}.{k}" for i in range(layers) for k in block]
    return keys + ["ln_post.weight", "ln_post.bias"]


def _num_layers(keys: list[str], pattern: str) -> int:
    found = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def _check_keys(got: set[str], expected: set[str], side: str) -> None:
    missing, unexpected = sorted(expected - got), sorted(got - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"not a {side} CLIP vision state dict: {len(missing)} missing keys {missing[:3]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:3]}; pass the image encoder's weights only"
        )


def clip_to_transformers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our `CLIPImageEncoder` state dict -> `CLIPVisionModelWithProjection` state dict."""
    layers = _num_layers(list(sd), r"transformer\.resblocks\.(\d+)\.")
    table = list(_table(layers))
    _check_keys(set(sd), {ours for ours, _, _ in table}, "kinetograph/open_clip")
    out: dict[str, torch.Tensor] = {}
    for ours, theirs, part in table:
        t = sd[ours]
        if part == "T":
            t = t.t().contiguous()
        elif part is not None:
            assert t.shape[0] % 3 == 0, (ours, t.shape)
            # clone: chunks share storage, which safetensors refuses to save
            t = t.chunk(3, dim=0)[part].clone()
        out[theirs] = t
    return out


def clip_from_transformers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`CLIPVisionModelWithProjection` state dict -> our `CLIPImageEncoder` state dict."""
    sd = {k: v for k, v in sd.items() if k != _POSITION_IDS}
    layers = _num_layers(list(sd), r"vision_model\.encoder\.layers\.(\d+)\.")
    table = list(_table(layers))
    _check_keys(set(sd), {theirs for _, theirs, _ in table}, "transformers")
    parts: dict[str, list[torch.Tensor | None]] = {}
    out: dict[str, torch.Tensor] = {}
    for ours, theirs, part in table:
        t = sd[theirs]
        if part == "T":
            out[ours] = t.t().contiguous()
        elif part is None:
            out[ours] = t
        else:
            parts.setdefault(ours, [None, None, None])[part] = t
    for ours, (q, k, v) in parts.items():
        if not q.shape == k.shape == v.shape:
            raise CheckpointError(f"q/k/v projections for {ours} differ in shape: {q.shape}, {k.shape}, {v.shape}")
        out[ours] = torch.cat([q, k, v], dim=0)
    return {k: out[k] for k in _our_order(layers)}


def clip_transformers_config(cfg: CLIPVisionConfig) -> dict[str, Any]:
    """config.json for transformers `CLIPVisionModelWithProjection` with our architecture."""
    return {
        "architectures": ["CLIPVisionModelWithProjection"],
        "model_type": "clip_vision_model",
        "hidden_size": cfg.width,
        "intermediate_size": cfg.mlp_width,
        "num_hidden_layers": cfg.layers,
        "num_attention_heads": cfg.heads,
        "num_channels": 3,
        "image_size": cfg.image_size,
        "patch_size": cfg.patch_size,
        "projection_dim": cfg.embed_dim,
        "hidden_act": "gelu",
        "layer_norm_eps": cfg.ln_eps,
        "attention_dropout": 0.0,
        "dropout": 0.0,
        "initializer_range": 0.02,
        "initializer_factor": 1.0,
    }


# transformers' `CLIPVisionConfig` defaults, used for keys a config.json leaves out (as transformers does).
_TRANSFORMERS_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "projection_dim": 512,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}


def clip_config_from_transformers(config: dict[str, Any]) -> CLIPVisionConfig:
    """Our config from a transformers config.json dict (`clip_vision_model`, or a full `clip` one)."""
    model_type = config.get("model_type")
    if model_type == "clip":  # a full CLIP config: the vision tower sits under vision_config
        projection_dim = config.get("projection_dim", _TRANSFORMERS_DEFAULTS["projection_dim"])
        config = {**config.get("vision_config", {}), "projection_dim": projection_dim}
    elif model_type != "clip_vision_model":
        raise CheckpointError(f"expected a transformers CLIP vision config, got model_type {model_type!r}")
    c = {**_TRANSFORMERS_DEFAULTS, **config}
    if c["hidden_act"] != "gelu":
        raise CheckpointError(
            f"CLIP hidden_act {c['hidden_act']!r} is not supported; our image encoder uses exact GELU ('gelu')"
        )
    if c["num_channels"] != 3:
        raise CheckpointError(f"CLIP num_channels {c['num_channels']} is not supported; expected RGB (3)")
    width, hidden = c["hidden_size"], c["intermediate_size"]
    try:
        cfg = CLIPVisionConfig(
            width=width,
            layers=c["num_hidden_layers"],
            heads=c["num_attention_heads"],
            mlp_ratio=hidden / width,
            patch_size=c["patch_size"],
            image_size=c["image_size"],
            embed_dim=c["projection_dim"],
            ln_eps=c["layer_norm_eps"],
        )
    except ValueError as e:
        raise CheckpointError(f"invalid CLIP vision config: {e}") from e
    assert cfg.mlp_width == hidden, (cfg.mlp_width, hidden)
    return cfg
