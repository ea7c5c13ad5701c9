"""Frechet Video Distance (Unterthiner et al. 2018) with an Inception-3D feature network.

Weights layout: the `InceptionI3d` state dict of piergiaj/pytorch-i3d (`pytorch_i3d.py`), as
shipped for FVD in VideoGPT (`videogpt/fvd/pytorch_i3d.py`, weights `i3d_pretrained_400.pt`,
converted from the TF-Hub i3d-kinetics-400 model the original FVD uses) and reused by the
common PyTorch FVD ports. Keys: `Conv3d_1a_7x7.conv3d.weight`, `Conv3d_1a_7x7.bn.{weight,bias,
running_mean,running_var}`, ..., `Mixed_5c.b3b.conv3d.weight`, `logits.conv3d.{weight,bias}`;
`num_batches_tracked` buffers may be present or not. BatchNorm eps is 1e-5 as in VideoGPT
(piergiaj's own `rgb_imagenet.pt` uses 1e-3: set `I3DConfig.bn_eps`).

Features are the 400 Kinetics logits averaged over time (VideoGPT's `forward`). Each video is
resized (bilinear) so its shorter side is 224, center-cropped to 224x224 and scaled to [-1, 1],
the input range of the TF-Hub model. TF "SAME" padding is computed per input size, as in
piergiaj. The clip needs at least 9 frames (the final 2x7x7 average pool needs 2 time steps).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kinetograph.errors import CheckpointError, InputError
from kinetograph.eval.clips import check_video

Triple = tuple[int, int, int]


@dataclass(frozen=True)
class I3DConfig:
    num_classes: int = 400  # Kinetics-400 logits: the FVD feature dimension
    in_channels: int = 3
    bn_eps: float = 1e-5
    resolution: int = 224  # input side after resize + center crop
    min_frames: int = 9


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'SAME' padding (before, after) for one axis: output size ceil(size / stride)."""
    total = max(kernel - stride, 0) if size % stride == 0 else max(kernel - size % stride, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: Triple, stride: Triple) -> torch.Tensor:
    t, h, w = x.shape[2:]
    (tb, ta), (hb, ha), (wb, wa) = (
        same_padding(s, k, st) for s, k, st in zip((t, h, w), kernel, stride)
    )
    return F.pad(x, (wb, wa, hb, ha, tb, ta))  # zeros: inputs to the max pools are post-ReLU


class Unit3D(nn.Module):
    """Conv3d (no bias) + BatchNorm3d + ReLU with SAME padding; the logits unit has bias only."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: Triple = (1, 1, 1),
        stride: Triple = (1, 1, 1),
        bn_eps: float = 1e-5,
        activation: bool = True,
        batch_norm: bool = True,
        bias: bool = False,
    ):
        super().__init__()
        self.kernel, self.stride, self.activation = kernel, stride, activation
        self.conv3d = nn.Conv3d(c_in, c_out, kernel, stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(c_out, eps=bn_eps) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.activation else x


class MaxPool3dSame(nn.Module):
    def __init__(self, kernel: Triple, stride: Triple):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionModule(nn.Module):
    """Four branches: 1x1 | 1x1 -> 3x3x3 | 1x1 -> 3x3x3 | maxpool 3x3x3 -> 1x1, concatenated."""

    def __init__(self, c_in: int, widths: Sequence[int], bn_eps: float):
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3b = widths
        self.b0 = Unit3D(c_in, w0, bn_eps=bn_eps)
        self.b1a = Unit3D(c_in, w1a, bn_eps=bn_eps)
        self.b1b = Unit3D(w1a, w1b, (3, 3, 3), bn_eps=bn_eps)
        self.b2a = Unit3D(c_in, w2a, bn_eps=bn_eps)
        self.b2b = Unit3D(w2a, w2b, (3, 3, 3), bn_eps=bn_eps)
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(c_in, w3b, bn_eps=bn_eps)
        self.c_out = w0 + w1b + w2b + w3b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))]
        return torch.cat(branches, dim=1)


# (name, in channels, branch widths) of the Inception blocks, in the order of Carreira & Zisserman.
_MIXED = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


class InceptionI3d(nn.Module):
    """Inception-v1 I3D (Carreira & Zisserman 2017, "Quo Vadis, Action Recognition?").

    Module names follow piergiaj/pytorch-i3d so its state dicts load with strict=True.
    (b, 3, t, 224, 224) in [-1, 1] -> (b, num_classes) logits averaged over time.
    """

    def __init__(self, cfg: I3DConfig = I3DConfig()):
        super().__init__()
        self.cfg = cfg
        eps = cfg.bn_eps
        self.Conv3d_1a_7x7 = Unit3D(cfg.in_channels, 64, (7, 7, 7), (2, 2, 2), bn_eps=eps)
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64, bn_eps=eps)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3), bn_eps=eps)
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Mixed_3b = InceptionModule(*_MIXED["Mixed_3b"], eps)
        self.Mixed_3c = InceptionModule(*_MIXED["Mixed_3c"], eps)
        self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
        self.Mixed_4b = InceptionModule(*_MIXED["Mixed_4b"], eps)
        self.Mixed_4c = InceptionModule(*_MIXED["Mixed_4c"], eps)
        self.Mixed_4d = InceptionModule(*_MIXED["Mixed_4d"], eps)
        self.Mixed_4e = InceptionModule(*_MIXED["Mixed_4e"], eps)
        self.Mixed_4f = InceptionModule(*_MIXED["Mixed_4f"], eps)
        self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
        self.Mixed_5b = InceptionModule(*_MIXED["Mixed_5b"], eps)
        self.Mixed_5c = InceptionModule(*_MIXED["Mixed_5c"], eps)
        self.avg_pool = nn.AvgPool3d((2, 7, 7), stride=(1, 1, 1))
        self.logits = Unit3D(1024, cfg.num_classes, activation=False, batch_norm=False, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in (
            self.Conv3d_1a_7x7,
            self.MaxPool3d_2a_3x3,
            self.Conv3d_2b_1x1,
            self.Conv3d_2c_3x3,
            self.MaxPool3d_3a_3x3,
            self.Mixed_3b,
            self.Mixed_3c,
            self.MaxPool3d_4a_3x3,
            self.Mixed_4b,
            self.Mixed_4c,
            self.Mixed_4d,
            self.Mixed_4e,
            self.Mixed_4f,
            self.MaxPool3d_5a_2x2,
            self.Mixed_5b,
            self.Mixed_5c,
        ):
            x = block(x)
        x = self.logits(self.avg_pool(x))  # (b, classes, t', 1, 1); dropout is identity in eval
        assert x.shape[3:] == (1, 1), f"I3D expects 224x224 input, pooled to {tuple(x.shape[3:])}"
        return x[:, :, :, 0, 0].mean(dim=2)  # (b, classes)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"cannot read I3D weights {path}: {e}") from e
    try:
        # weights_only: the restricted unpickler, tensors and containers only, no code.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise CheckpointError(
            f"cannot read I3D weights {path}: {e}; pass a state dict (.pt/.safetensors)"
        ) from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not an I3D state dict")
    return state


def load_i3d(
    path: Path, cfg: I3DConfig = I3DConfig(), device: str | torch.device = "cpu"
) -> InceptionI3d:
    """Load an I3D state dict in the piergiaj/VideoGPT layout (strict: names and shapes)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"I3D weights not found at {path}; pass the FVD I3D state dict (e.g. i3d_pretrained_400.pt)"
        )
    state = _read_state_dict(path)
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    with torch.device("meta"):
        expected = {
            k: v.shape
            for k, v in InceptionI3d(cfg).state_dict().items()
            if not k.endswith("num_batches_tracked")
        }
    missing, unexpected = (
        sorted(expected.keys() - state.keys()),
        sorted(state.keys() - expected.keys()),
    )
    if missing or unexpected:
        raise CheckpointError(
            f"{path} is not an InceptionI3d (piergiaj layout) state dict: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    wrong = [
        (k, tuple(state[k].shape), tuple(s)) for k, s in expected.items() if state[k].shape != s
    ]
    if wrong:
        raise CheckpointError(
            f"{path}: {len(wrong)} tensors have the wrong shape, e.g. {wrong[:3]}"
        )
    model = InceptionI3d(cfg)
    model.load_state_dict(state, strict=False)  # only num_batches_tracked may be absent
    return model.eval().to(device)


def preprocess(video: np.ndarray, resolution: int = 224) -> torch.Tensor:
    """uint8 (t, h, w, 3) -> float32 (3, t, resolution, resolution) in [-1, 1]."""
    check_video(video)
    x = torch.from_numpy(video).permute(0, 3, 1, 2).float() / 255.0  # (t, 3, h, w)
    h, w = x.shape[2:]
    scale = resolution / min(h, w)
    size = (max(resolution, math.ceil(h * scale)), max(resolution, math.ceil(w * scale)))
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    top, left = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    x = x[:, :, top : top + resolution, left : left + resolution]
    return (2.0 * x - 1.0).permute(1, 0, 2, 3).contiguous()  # (3, t, r, r)


@torch.no_grad()
def i3d_features(model: InceptionI3d, videos: Sequence[np.ndarray]) -> np.ndarray:
    """(n, num_classes) float64 FVD features, one video at a time (videos may differ in size)."""
    device = next(model.parameters()).device
    features = []
    for i, video in enumerate(videos):
        if len(video) < model.cfg.min_frames:
            raise InputError(
                f"FVD needs at least {model.cfg.min_frames} frames per video; video {i} has {len(video)}"
            )
        x = preprocess(video, model.cfg.resolution)[None].to(device)  # (1, 3, t, r, r)
        features.append(model(x).double().cpu().numpy()[0])
    return np.stack(features)


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and unbiased covariance (d, d) of (n, d) features."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise InputError(f"need at least 2 feature vectors (n, d), got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((a + a.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Squared Frechet (2-Wasserstein) distance of N(mu1, sigma1) and N(mu2, sigma2):
    |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)).

    tr (sigma1 sigma2)^(1/2) = tr (s sigma2 s)^(1/2) with s = sigma1^(1/2); the inner matrix is
    symmetric PSD, so eigh is exact and stable even for singular covariances (n < d).
    """
    s = _psd_sqrt(sigma1)
    inner = s @ sigma2 @ s
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


def fvd_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """FVD between two (n, d) feature sets."""
    return frechet_distance(*feature_statistics(real), *feature_statistics(fake))
