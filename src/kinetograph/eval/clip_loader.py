"""CLIP towers for the CLIP scores, from one local OpenCLIP weights file (`kinetograph eval --clip`).

Any open_clip-layout file works (e.g. ViT-H-14 laion2b `open_clip_pytorch_model.bin` with
--allow-pickle, or a .safetensors of it): the vision tower is our `CLIPImageEncoder`, the text
tower our `OpenCLIPTextEncoder`, both strict on their keys. An SVD checkpoint holds the vision
tower but no text transformer: then only `clip_consistency` is available.
Frames are prepared as CLIP was trained: resize to cover, center crop, normalize (no squash).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from kinetograph.errors import CheckpointError, InputError
from kinetograph.eval.clip_score import ClipEmbedders
from kinetograph.models.clip_image import CLIP_MEAN, CLIP_STD, CLIPImageEncoder, CLIPVisionConfig

# Where the vision tower sits: an open_clip CLIP, DDP/Lightning wrappers, the SVD conditioner.
PREFIXES = ("visual.", "module.visual.", "model.visual.", "conditioner.embedders.0.open_clip.model.visual.")
# Head counts of the released open_clip ViTs by width (their head width is not always 64).
HEADS = {768: 12, 1024: 16, 1280: 16, 1664: 16}


def vision_config(shapes: dict[str, tuple[int, ...]], heads: int | None = None) -> CLIPVisionConfig:
    """The architecture of an open_clip vision state dict (prefix stripped), read from its shapes."""
    width, _, patch, _ = shapes["conv1.weight"]
    grid = math.isqrt(shapes["positional_embedding"][0] - 1)
    layers = sum(1 for k in shapes if k.startswith("transformer.resblocks.") and k.endswith(".ln_1.weight"))
    return CLIPVisionConfig(
        width=width,
        layers=layers,
        heads=heads or HEADS.get(width, max(width // 64, 1)),
        mlp_ratio=shapes["transformer.resblocks.0.mlp.c_fc.weight"][0] / width,
        patch_size=patch,
        image_size=grid * patch,
        embed_dim=shapes["proj"][1],
    )


def _vision_state_dict(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    from kinetograph.io.safetensors import SafetensorsReader, load_state_dict

    if path.suffix.lower() == ".safetensors":
        with SafetensorsReader(path) as reader:
            prefix = next((p for p in PREFIXES if p + "conv1.weight" in reader.shapes), None)
            if prefix is None:
                raise CheckpointError(f"{path.name}: no OpenCLIP vision tower found (no visual.conv1.weight)")
            return {k[len(prefix) :]: reader.get(k) for k in reader.shapes if k.startswith(prefix)}
    sd = load_state_dict(path, allow_pickle=allow_pickle)
    prefix = next((p for p in PREFIXES if p + "conv1.weight" in sd), None)
    if prefix is None:
        raise CheckpointError(f"{path.name}: no OpenCLIP vision tower found (no visual.conv1.weight)")
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def load_clip_embedders(
    path: str | Path, *, allow_pickle: bool = False, device: str | torch.device = "cpu", heads: int | None = None
) -> ClipEmbedders:
    """Image (and, when the file has one, text) embedding functions from an OpenCLIP weights file."""
    from PIL import Image

    from kinetograph.io.safetensors import check_state_dict
    from kinetograph.models.text import load_open_clip_text
    from kinetograph.pipeline.preprocess import resize_and_crop

    path = Path(path)
    if not path.is_file():
        raise InputError(f"CLIP weights not found: {path}; pass an OpenCLIP weights file")
    sd = _vision_state_dict(path, allow_pickle)
    cfg = vision_config({k: tuple(v.shape) for k, v in sd.items()}, heads)
    with torch.device("meta"):
        image_tower = CLIPImageEncoder(cfg)
    expected = {k: tuple(v.shape) for k, v in image_tower.state_dict().items()}
    check_state_dict(expected, {k: tuple(v.shape) for k, v in sd.items()}, "OpenCLIP vision tower")
    image_tower.load_state_dict(sd, assign=True)
    image_tower = image_tower.to(device).eval()
    try:
        text_tower = load_open_clip_text(path, allow_pickle=allow_pickle, device=device)
    except CheckpointError:
        text_tower = None  # e.g. an SVD file: vision tower only

    mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)
    size = cfg.image_size

    @torch.inference_mode()
    def image_fn(frames: np.ndarray) -> np.ndarray:
        crops = np.stack([np.asarray(resize_and_crop(Image.fromarray(f), size, size)) for f in frames])
        x = torch.from_numpy(crops).to(device).permute(0, 3, 1, 2).float() / 255.0  # (n, 3, s, s)
        return image_tower((x - mean) / std).float().cpu().numpy()

    @torch.inference_mode()
    def text_fn(prompts) -> np.ndarray:
        return text_tower.encode(list(prompts)).pooled.cpu().numpy()

    return ClipEmbedders(name=path.name, image=image_fn, text=text_fn if text_tower is not None else None)
