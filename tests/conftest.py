"""Shared fixtures: reference key lists, real photos, tiny random checkpoints."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import torch

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "checkpoints"
if not REFERENCE.is_dir():  # a clone elsewhere: KINETOGRAPH_REFERENCE points at shared/reference/checkpoints
    REFERENCE = Path(os.environ.get("KINETOGRAPH_REFERENCE", REFERENCE))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def read_tsv(name: str) -> dict[str, tuple[int, ...]]:
    """key -> shape from one of the reference TSVs (header: key, shape, dtype)."""
    path = REFERENCE / name
    if not path.is_file():
        pytest.fail(f"reference list missing: {path} (set KINETOGRAPH_REFERENCE)")
    rows = path.read_text().splitlines()[1:]
    return {k: tuple(ast.literal_eval(s)) for k, s, _ in (r.split("\t") for r in rows)}


@pytest.fixture(scope="session")
def tsv():
    return read_tsv


def randomize_(module: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Give every parameter (zero-initialised ones and blend factors included) random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1 and ("norm" in name or "ln_" in name) and name.endswith("weight"):
                p.copy_(1.0 + std * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))
    return module
