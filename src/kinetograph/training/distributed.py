"""One process or many: torchrun's environment -> process group, DDP or FSDP2 wrapping.

Launch with torchrun, which sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT:

    torchrun --nproc_per_node 2 -m kinetograph.training.cli --stage video --config configs/tiny_video.toml
    # multi-node: the same command on every node, with
    #   --nnodes 2 --node_rank R --rdzv_backend c10d --rdzv_endpoint HOST:29500 --rdzv_id RUN

Backend: NCCL on GPUs, gloo on CPUs. `ddp` replicates the trained module and all-reduces
gradients (mean); `fsdp` shards parameters, gradients and optimizer state with FSDP2's
`fully_shard`, one unit per UNet block plus the root, for models that do not fit one device.
Frozen modules (VAE, CLIP; the UNet in stage vae) are replicated as they are.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device: str = "auto") -> Dist:
    """Join torchrun's process group if launched by it (WORLD_SIZE > 1), else a single process."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", device_id=dev if use_cuda else None)
    return Dist(rank, world, local_rank, dev)


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def wrap(module: nn.Module, d: Dist, mode: str) -> nn.Module:
    """The module the loop calls: itself (1 process), DDP, or FSDP2-sharded in place."""
    if not d.enabled:
        return module
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(module, device_ids=[d.local_rank] if d.device.type == "cuda" else None)
    from torch.distributed.fsdp import fully_shard

    # One FSDP unit per UNet block (input/middle/output), then the root for the rest.
    for name in ("input_blocks", "output_blocks"):
        for block in getattr(module, name, []):
            if any(p.requires_grad for p in block.parameters()):
                fully_shard(block)
    if hasattr(module, "middle_block"):
        fully_shard(module.middle_block)
    fully_shard(module)
    return module


def unwrap(module: nn.Module) -> nn.Module:
    return getattr(module, "module", module)


@contextmanager
def no_sync(module: nn.Module, d: Dist, active: bool) -> Iterator[None]:
    """Skip the gradient all-reduce / reduce-scatter for micro steps before the last one."""
    if not (active and d.enabled):
        with nullcontext():
            yield
        return
    if hasattr(module, "no_sync"):  # DDP
        with module.no_sync():
            yield
        return
    module.set_requires_gradient_sync(False)  # FSDP2
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


def all_mean(value: torch.Tensor, d: Dist) -> torch.Tensor:
    """Mean of a scalar over processes (for logging)."""
    if not d.enabled:
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / d.world
