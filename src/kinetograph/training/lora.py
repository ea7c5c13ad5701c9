"""Low-rank adapters on attention projections (Hu et al. 2021, "LoRA").

W x + b becomes W x + b + (alpha / r) * B A x with A (r, in) random and B (out, r) zero, so the
adapted network starts as the original. Only A and B train: optimizer state and checkpoints
scale with r, not with the model. `merge_lora` folds B A into W and puts the plain Linear back,
so an exported checkpoint has exactly the original keys and loads anywhere.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's init, as in the paper's code

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * ((x @ self.lora_A.to(x.dtype).T) @ self.lora_B.to(x.dtype).T)

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        self.base.weight += (self.scale * self.lora_B.float() @ self.lora_A.float()).to(self.base.weight.dtype)
        return self.base


def _matches(name: str, targets: tuple[str, ...]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def add_lora(model: nn.Module, rank: int, alpha: float = 0.0, targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")) -> list[str]:
    """Wrap every nn.Linear whose name ends with a target in a LoRALinear; returns the wrapped names.

    alpha 0 means alpha = rank. The base weights are frozen; only lora_A and lora_B require grad.
    """
    alpha = alpha or float(rank)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and _matches(n, targets)]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), rank, alpha))
    for n, p in model.named_parameters():
        p.requires_grad_(n.rsplit(".", 1)[-1] in ("lora_A", "lora_B"))
    return names


def merge_lora(model: nn.Module) -> int:
    """Fold every LoRALinear back into a plain Linear in place; returns how many were merged."""
    wrapped = [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    for name, module in wrapped:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.merged())
    return len(wrapped)
