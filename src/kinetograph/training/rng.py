"""Per-sample randomness: every draw for a training sample comes from its own generator.

The generator of a sample is seeded by (run seed, the sample's position in the run's global
stream of samples). Noise levels, noise, posterior samples, augmentation and dropout therefore do
not depend on the number of processes, the per-process batch or gradient accumulation, and a run
resumed from a checkpoint draws exactly what the uninterrupted run drew: no generator state has
to be saved. Draws for one sample happen in a fixed order (the stage's, then the loss's).
"""

from __future__ import annotations

import torch

_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: spreads consecutive positions over the seed space


def sample_seed(seed: int, position: int) -> int:
    return (seed * _MIX + position * 0xBF58476D1CE4E5B9 + 1) % (2**63 - 1)


class SampleRNG:
    """One torch.Generator per sample of a batch; draws return (b, *shape) tensors."""

    def __init__(self, seed: int, positions: list[int], device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.generators = [torch.Generator(self.device).manual_seed(sample_seed(seed, int(p))) for p in positions]

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, *shape: int) -> torch.Tensor:
        """(b, *shape) float32 standard normal, row i from sample i's generator."""
        return torch.stack([torch.randn(shape, generator=g, device=self.device) for g in self.generators])

    def rand(self, *shape: int) -> torch.Tensor:
        """(b, *shape) float32 uniform on [0, 1)."""
        return torch.stack([torch.rand(shape, generator=g, device=self.device) for g in self.generators])

    def log_normal(self, p_mean: float, p_std: float) -> torch.Tensor:
        """(b,) with ln(x) ~ N(p_mean, p_std^2)."""
        return (p_mean + p_std * self.randn()).exp()
