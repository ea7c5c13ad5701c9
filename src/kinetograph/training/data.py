"""Seeded data order that any number of processes can resume at any step.

The run consumes one global stream of sample positions p = 0, 1, 2, ...; an optimizer step takes
G = grad_accum * world * batch_size of them. Position p is dataset index perm_e[p mod N'] of epoch
e = p // N', where perm_e is a permutation seeded by (seed, e) and N' = N rounded down to a
multiple of G (the remainder of each epoch is dropped, so steps never straddle epochs). Micro step
a of step s on rank r takes positions s*G + a*world*B + r*B + [0, B). The order is thus a pure
function of (seed, step): resuming needs only the step, and 2 processes with batch B see exactly
the samples of 1 process with batch 2B. Positions also seed each sample's noise (training.rng).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from kinetograph.data.datasets import ClipDataset, SampleConfig, collate
from kinetograph.errors import InputError
from kinetograph.training.config import TrainConfig


class PositionBatches(Sampler[list[tuple[int, int, int]]]):
    """Yields this rank's micro batches as [(position, epoch, dataset index)] forever, from `start_step`."""

    def __init__(self, n: int, batch: int, accum: int, rank: int, world: int, seed: int, start_step: int = 0):
        self.n, self.batch, self.accum, self.rank, self.world = n, batch, accum, rank, world
        self.seed, self.start_step = seed, start_step
        self.global_batch = batch * accum * world
        if n < self.global_batch:
            raise InputError(
                f"the dataset has {n} samples but one step needs {self.global_batch} "
                "(batch_size x grad_accum x processes); lower data.batch_size or add data"
            )
        self.per_epoch = n // self.global_batch * self.global_batch
        self._perms: dict[int, np.ndarray] = {}

    def perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return self._perms[epoch]

    def micro_batch(self, step: int, micro: int) -> list[tuple[int, int, int]]:
        first = step * self.global_batch + micro * self.world * self.batch + self.rank * self.batch
        out = []
        for p in range(first, first + self.batch):
            epoch, k = divmod(p, self.per_epoch)
            out.append((p, epoch, int(self.perm(epoch)[k])))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        step = self.start_step
        while True:
            for micro in range(self.accum):
                yield self.micro_batch(step, micro)
            step += 1


class EpochView(Dataset):
    """Item (position, epoch, index) -> the dataset's item `index` drawn with `epoch`'s randomness."""

    def __init__(self, dataset: ClipDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int, int]) -> dict:
        position, epoch, index = key
        self.dataset.set_epoch(epoch)  # per item: each worker process has its own copy
        return {**self.dataset[index], "position": position}


def collate_positions(items: list[dict]) -> dict:
    return {**collate(items), "position": [it["position"] for it in items]}


def sample_config(cfg: TrainConfig, num_frames: int) -> SampleConfig:
    d = cfg.data
    return SampleConfig(num_frames=num_frames, fps=d.fps, height=d.height, width=d.width, kinds=d.kinds,
                        paraphrase_captions=d.paraphrase_captions)


def make_loader(cfg: TrainConfig, num_frames: int, rank: int, world: int, start_step: int) -> DataLoader:
    if not cfg.data.root:
        raise InputError("config: data.root is empty; point it at a dataset folder (kinetograph data build -o DIR)")
    if num_frames > 1 and "image" in cfg.data.kinds:
        raise InputError(
            f"data.kinds has 'image', but this stage samples {num_frames}-frame clips and images are 1-frame "
            'clips; set data.kinds = ["video", "camera"] (images train in stage image)'
        )
    dataset = ClipDataset(cfg.data.root, sample_config(cfg, num_frames), seed=cfg.data.seed)
    batches = PositionBatches(
        len(dataset), cfg.data.batch_size, cfg.optim.grad_accum, rank, world, cfg.data.seed, start_step
    )
    return DataLoader(
        EpochView(dataset),
        batch_sampler=batches,
        collate_fn=collate_positions,
        num_workers=cfg.data.num_workers,
        persistent_workers=cfg.data.num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )
