"""Training checkpoints: everything needed to continue a run exactly, written atomically.

    <out_dir>/checkpoints/step-00000100/
        model.safetensors      the trained parameters (full tensors, by name)
        ema.safetensors        their EMA
        optimizer.safetensors  AdamW moments per parameter name, plus the CPU/CUDA RNG states
        state.json             step, EMA updates, optimizer hyper-parameters, samples consumed,
                               fingerprint of the frozen weights, world size

Frozen weights (the init checkpoint's, or the seeded random init) are not repeated: resume rebuilds
them the same way and checks the fingerprint. A checkpoint is written into a temporary folder
and renamed into place, so a kill at any moment leaves complete checkpoints only; the newest
`keep_last` are kept. Tensors go through `io.safetensors.save_state_dict` (streamed, fsync'd);
nothing is pickled. The data position is the step itself (training.data); per-sample noise is
seeded by position (training.rng), so no generator state is needed beyond the global RNGs.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from kinetograph.errors import CheckpointError
from kinetograph.io.safetensors import load_state_dict, save_state_dict
from kinetograph.training.ema import EMA

STEP_DIR = re.compile(r"^step-(\d{8})$")


def _full(t: torch.Tensor) -> torch.Tensor:
    """A full CPU copy; FSDP2 DTensor shards are gathered (a collective: every rank must call)."""
    if hasattr(t, "full_tensor"):
        t = t.full_tensor()
    return t.detach().to("cpu").contiguous()


def _like(dst: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """`full` placed like `dst`: sharded the same way for a DTensor, else on its device and dtype."""
    if hasattr(dst, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full.to(dst.device_mesh.device_type), dst.device_mesh, dst.placements)
    return full.to(device=dst.device, dtype=dst.dtype)


@torch.no_grad()
def frozen_fingerprint(model: nn.Module, trainable: dict[str, nn.Parameter]) -> float:
    """Sum of |w| over the frozen parameters (float64): catches a changed init checkpoint on resume."""
    ids = {id(p) for p in trainable.values()}
    return float(sum(p.detach().double().abs().sum() for p in model.parameters() if id(p) not in ids))


def frozen_matches(state: dict, fingerprint: float) -> bool:
    """Whether a checkpoint's state.json records these frozen weights (`frozen_fingerprint` of the
    model before any wrapping): the same init checkpoint."""
    return math.isclose(state["frozen_fingerprint"], fingerprint, rel_tol=1e-9)


def checkpoint_dirs(out_dir: str | Path) -> list[Path]:
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if STEP_DIR.match(p.name) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name)[1]))


def latest(out_dir: str | Path) -> Path | None:
    dirs = checkpoint_dirs(out_dir)
    return dirs[-1] if dirs else None


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    trainable: dict[str, nn.Parameter],
    optimizer: torch.optim.Optimizer,
    ema: EMA | None,
    extra: dict,
    is_main: bool,
    keep_last: int,
) -> Path | None:
    """Write step `step`'s checkpoint (rank 0 writes; every rank must call, for FSDP gathers)."""
    weights = {k: _full(p) for k, p in trainable.items()}
    shadow = {k: _full(v) for k, v in ema.state_dict().items()} if ema is not None else {}
    names = {id(p): k for k, p in trainable.items()}
    opt: dict[str, torch.Tensor] = {}
    for p, state in optimizer.state.items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                opt[f"state/{names[id(p)]}/{key}"] = _full(value)
    if not is_main:
        return None
    opt["rng/cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        opt["rng/cuda"] = torch.cuda.get_rng_state()
    groups = [
        {**{k: v for k, v in g.items() if k != "params"}, "params": [names[id(p)] for p in g["params"]]}
        for g in optimizer.param_groups
    ]
    state = {"step": step, "ema_updates": ema.updates if ema else 0, "param_groups": groups, **extra}

    root = Path(out_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        save_state_dict(weights, tmp / "model.safetensors")
        if shadow:
            save_state_dict(shadow, tmp / "ema.safetensors")
        save_state_dict(opt, tmp / "optimizer.safetensors")
        with open(tmp / "state.json", "w") as f:
            json.dump(state, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():  # the same step written again (a resumed run): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in checkpoint_dirs(out_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".step-*"):  # temporary folders of a killed writer
        shutil.rmtree(stale, ignore_errors=True)
    return final


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@torch.no_grad()
def load_weights(file: Path, trainable: dict[str, nn.Parameter]) -> None:
    """Copy a checkpoint's model.safetensors or ema.safetensors into the run's trained parameters."""
    weights = load_state_dict(file)
    missing, unexpected = set(trainable) - set(weights), set(weights) - set(trainable)
    if missing or unexpected:
        raise CheckpointError(
            f"{file}: trained parameters differ from this run's ({len(missing)} missing, {len(unexpected)} "
            f"unexpected, e.g. {sorted(missing | unexpected)[:2]}); use the run's own config"
        )
    for k, p in trainable.items():
        if tuple(weights[k].shape) != tuple(p.shape):
            raise CheckpointError(f"{file}: {k} has shape {tuple(weights[k].shape)}, the model {tuple(p.shape)}")
        p.copy_(_like(p, weights[k]))


@torch.no_grad()
def load_checkpoint_state(
    path: Path,
    trainable: dict[str, nn.Parameter],
    optimizer: torch.optim.Optimizer,
    ema: EMA | None,
) -> dict:
    """Restore parameters, optimizer, EMA and RNGs from a checkpoint folder; returns its state.json."""
    state = json.loads((path / "state.json").read_text())
    load_weights(path / "model.safetensors", trainable)

    opt = load_state_dict(path / "optimizer.safetensors")
    if len(state["param_groups"]) != len(optimizer.param_groups):
        raise CheckpointError(f"{path}: optimizer has {len(state['param_groups'])} parameter groups, this run {len(optimizer.param_groups)}")
    for group, saved in zip(optimizer.param_groups, state["param_groups"], strict=True):
        group.update({k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k != "params"})
    for name, p in trainable.items():
        keys = [k for k in opt if k.startswith(f"state/{name}/")]
        if keys:
            optimizer.state[p] = {
                k.rsplit("/", 1)[1]: (_like(p, opt[k]) if opt[k].shape == p.shape and opt[k].ndim else opt[k].clone())
                for k in keys
            }
    torch.set_rng_state(opt["rng/cpu"])
    if "rng/cuda" in opt and torch.cuda.is_available():
        torch.cuda.set_rng_state(opt["rng/cuda"])
    if ema is not None:
        shadow_file = path / "ema.safetensors"
        if not shadow_file.is_file():
            raise CheckpointError(f"{path}: no ema.safetensors, but this run keeps an EMA (ema.enabled)")
        sd = load_state_dict(shadow_file)
        ema.load_state_dict({k: _like(v, sd[k]) for k, v in ema.shadow.items()}, state["ema_updates"])
    return state
