"""The camera head: the camera move a caption asks for, read off the text encoder's pooled vector.

A text model's token cross-attention learns the words of its captions; a prompt in other words
("the camera magnifies the subject") then moves the wrong way or not at all. A sentence encoder
is trained to place paraphrases near each other, so a linear classifier on its normalised pooled
vector names the move of wordings no caption used far more often (docs/model-card.md, session 14:
13 of 14 validation wordings, against none of the 5 zoom wordings for the model's own reading).

`add_camera_head` gives a text model that classifier (`UNet.camera_head`), fitted on the
training set's captions by logistic regression and then frozen (the loop never trains it); the
move probabilities join the time embedding through a zero-initialised layer (`UNet.camera_emb`),
so the model starts out unchanged and learns to follow them.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kinetograph.data.camera_motion import MOTIONS, paraphrase
from kinetograph.data.curation.manifest import read_jsonl
from kinetograph.errors import InputError
from kinetograph.models.svd import SVD
from kinetograph.models.text import load_text_encoder


def camera_captions(root: str | Path, per_clip: int, seed: int = 0) -> tuple[list[str], torch.Tensor]:
    """`per_clip` training captions (`paraphrase`) for each camera clip of the dataset at `root`,
    and the index of each one's move in `MOTIONS`."""
    manifest = Path(root) / "manifest.jsonl"
    rows = [r for r in read_jsonl(manifest) if r.get("kind") == "camera" and "move" in r] if manifest.is_file() else []
    if not rows:
        raise InputError(f"{manifest}: no camera clips to fit the camera head on; set data.root to a dataset "
                         "built with camera motion (`kinetograph data build`), or model.camera_head = false")
    rng = np.random.default_rng(seed)
    captions, labels = [], []
    for row in rows:
        kind, speed = row["move"]["kind"], row["move"]["speed_class"]
        for _ in range(per_clip):
            captions.append(paraphrase(kind, speed, row.get("subject", "the scene"), rng))
            labels.append(MOTIONS.index(kind))
    return captions, torch.tensor(labels)


def fit_camera_head(head: nn.Linear, pooled: torch.Tensor, labels: torch.Tensor,
                    steps: int = 2000, lr: float = 0.05, weight_decay: float = 1e-5) -> float:
    """Multinomial logistic regression of `labels` (n,) on normalised `pooled` (n, d), full batch,
    from zero weights (deterministic); returns the accuracy on those captions."""
    x = F.normalize(pooled.float(), dim=-1)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
    params = [head.weight, head.bias]
    optimizer = torch.optim.Adam(params, lr=lr)
    with torch.enable_grad():
        for p in params:
            p.requires_grad_(True)
        for _ in range(steps):
            loss = F.cross_entropy(head(x), labels) + weight_decay * head.weight.square().sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    head.zero_grad(set_to_none=True)  # no stale gradient for the training loop's optimizer to apply
    with torch.no_grad():
        return float((head(x).argmax(dim=-1) == labels).float().mean())


def add_camera_head(model: SVD, data_root: str | Path, per_clip: int = 16, seed: int = 0) -> SVD:
    """`model` with a camera head fitted on `per_clip` captions of each camera clip under
    `data_root` (same outputs until `camera_emb` trains). A model that has one keeps it."""
    if model.cfg.unet.camera_moves:
        if model.cfg.unet.camera_moves != len(MOTIONS):
            raise InputError(f"the init checkpoint's camera head tells {model.cfg.unet.camera_moves} moves "
                             f"apart, this version {len(MOTIONS)} ({', '.join(MOTIONS)})")
        return model
    if not model.cfg.text_encoder:
        raise InputError("a camera head needs a text model (it reads the text encoder's pooled vector); give a "
                         "text model, or add a text branch first (model.text_encoder = \"minilm-l6-v2\")")
    cfg = replace(model.cfg, unet=replace(model.cfg.unet, camera_moves=len(MOTIONS)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        new = SVD(cfg)
    missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected, unexpected[:3]
    assert all(".camera_" in k for k in missing), missing[:3]
    captions, labels = camera_captions(data_root, per_clip, seed)
    encoder = load_text_encoder(model.cfg.text_encoder)
    with torch.no_grad():
        pooled = torch.cat([encoder.encode(captions[i:i + 256]).pooled.float() for i in range(0, len(captions), 256)])
    fit_camera_head(new.unet.camera_head, pooled, labels)
    return new


def write_camera_head(src: str | Path, data_root: str | Path, out: str | Path, per_clip: int = 16) -> Path:
    """The text model file `src` with a camera head fitted on the captions of `data_root`'s camera
    clips, written to `out` (official single-file layout, float32, its recorded sampling defaults
    kept). Its `camera_emb` is zero: the head reads prompts (`ImageToVideo.camera_caption`) until
    a finetune with `model.camera_head` teaches the UNet to follow it."""
    from kinetograph.io.checkpoint import load_checkpoint, save_original
    from kinetograph.presets import PRESETS

    loaded = load_checkpoint(src, dtype=torch.float32)
    model = add_camera_head(loaded.model, data_root, per_clip)
    base = PRESETS.get(loaded.preset.name)
    sampling = {k: v for k, v in asdict(loaded.preset.sampling).items()
                if base is None or v != getattr(base.sampling, k)}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    return save_original(model.eval(), out, loaded.preset.name, sampling=sampling or None)
