"""Exponential moving average of the trained parameters (Polyak averaging), in float32.

shadow <- decay * shadow + (1 - decay) * param after every optimizer step. With `warmup`, the
decay is min(decay, (1 + n) / (10 + n)) at update n, so the average is not dominated by the
random initialisation early on (the `ema_warmup` rule of many diffusion codebases). Only the
trained parameters are averaged: frozen ones are their own average. Works on plain tensors and
on FSDP2's sharded DTensors alike (each rank averages its shard).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class EMA:
    def __init__(self, params: dict[str, nn.Parameter], decay: float = 0.999, warmup: bool = True):
        self.params = params  # name -> the live parameter
        self.decay = decay
        self.warmup = warmup
        self.updates = 0
        self.shadow = {k: p.detach().float().clone() for k, p in params.items()}

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        d = self.current_decay()
        shadow = [self.shadow[k] for k in self.params]
        live = [p.detach().float() for p in self.params.values()]
        # One fused launch per group on a GPU instead of one per tensor; on a CPU the same lerp per tensor.
        torch._foreach_lerp_(shadow, live, 1.0 - d)
        self.updates += 1

    @contextmanager
    @torch.no_grad()
    def swapped(self) -> Iterator[None]:
        """Parameters hold the EMA weights inside the block (validation, export), then their own."""
        saved = {k: p.detach().clone() for k, p in self.params.items()}
        for k, p in self.params.items():
            p.copy_(self.shadow[k].to(p.dtype))
        try:
            yield
        finally:
            for k, p in self.params.items():
                p.copy_(saved[k])

    @torch.no_grad()
    def absorb(self) -> None:
        """The EMA weights become the parameters' current values (after an exact edit of the
        swapped-in EMA weights, such as the autoencoder's latent rescaling)."""
        for k, p in self.params.items():
            self.shadow[k].copy_(p.detach().float())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    @torch.no_grad()
    def load_state_dict(self, sd: dict[str, torch.Tensor], updates: int) -> None:
        missing = set(self.shadow) - set(sd)
        assert not missing, f"EMA state lacks {sorted(missing)[:3]}"
        for k, v in self.shadow.items():
            v.copy_(sd[k])
        self.updates = updates
