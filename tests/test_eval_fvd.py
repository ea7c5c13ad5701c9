"""FVD: Frechet distance against hand-derived cases, the I3D network and its weight loader.

The I3D forward is checked against an independent functional re-implementation driven only by
the state dict (piergiaj/VideoGPT key names, TF "SAME" padding from the TF formula), on random
weights where every parameter and BatchNorm statistic is randomised.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from kinetograph.errors import CheckpointError, InputError
from kinetograph.eval.fvd import (
    InceptionI3d,
    feature_statistics,
    frechet_distance,
    fvd_from_features,
    i3d_features,
    load_i3d,
    preprocess,
    same_padding,
)

# --- Frechet distance ---------------------------------------------------------------------------


def test_frechet_distance_one_dimensional():
    # N(m1, s1^2) vs N(m2, s2^2): (m1 - m2)^2 + (s1 - s2)^2
    d = frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]]))
    assert d == pytest.approx(2.0**2 + (2.0 - 3.0) ** 2)


def test_frechet_distance_diagonal_and_identity_cases():
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    # commuting covariances: sum (sqrt a - sqrt b)^2 = 1 + 0 + 4
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(1 + 4 + 1 + 0 + 4)
    # sigma1 = I, sigma2 = [[2, 1], [1, 2]] (eigenvalues 1, 3): tr = 2 + 4 - 2 (1 + sqrt 3)
    s2 = np.array([[2.0, 1.0], [1.0, 2.0]])
    assert frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), s2) == pytest.approx(
        6 - 2 * (1 + math.sqrt(3))
    )


def test_frechet_distance_non_commuting_matches_sqrtm_and_is_symmetric():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = a @ a.T, b @ b.T + 0.1 * np.eye(5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    reference = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-8)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
        frechet_distance(mu2, s2, mu1, s1), rel=1e-8
    )


def test_fvd_from_features_zero_for_equal_sets_and_mean_shift():
    x = np.random.default_rng(1).normal(size=(50, 8))
    assert fvd_from_features(x, x) == pytest.approx(0.0, abs=1e-8)
    shift = np.arange(8.0)
    assert fvd_from_features(x, x + shift) == pytest.approx(np.sum(shift**2), rel=1e-8)
    # rank-deficient covariances (fewer samples than dimensions) still give a finite distance
    assert np.isfinite(fvd_from_features(x[:4], x[4:8] * 2))
    mu, sigma = feature_statistics(x)
    assert np.allclose(sigma, np.cov(x.T)) and np.allclose(mu, x.mean(0))
    with pytest.raises(InputError, match="at least 2"):
        feature_statistics(x[:1])


# --- I3D ----------------------------------------------------------------------------------------


def test_same_padding_is_tf_same():
    for size in range(1, 40):
        for kernel in (1, 2, 3, 7):
            for stride in (1, 2):
                before, after = same_padding(size, kernel, stride)
                out = math.ceil(size / stride)
                total = max((out - 1) * stride + kernel - size, 0)  # the TF formula
                assert (before, after) == (total // 2, total - total // 2)
    assert same_padding(224, 7, 2) == (2, 3)


def test_layout_keys_and_shapes_match_pytorch_i3d():
    with torch.device("meta"):
        sd = InceptionI3d().state_dict()
    assert len(sd) == 344  # 57 conv+BN units x 6 entries + logits weight and bias
    expected = {
        "Conv3d_1a_7x7.conv3d.weight": (64, 3, 7, 7, 7),
        "Conv3d_1a_7x7.bn.running_var": (64,),
        "Conv3d_2c_3x3.conv3d.weight": (192, 64, 3, 3, 3),
        "Mixed_3b.b1b.conv3d.weight": (128, 96, 3, 3, 3),
        "Mixed_4b.b0.conv3d.weight": (192, 480, 1, 1, 1),
        "Mixed_4f.b3b.conv3d.weight": (128, 528, 1, 1, 1),
        "Mixed_5c.b2b.conv3d.weight": (128, 48, 3, 3, 3),
        "logits.conv3d.weight": (400, 1024, 1, 1, 1),
        "logits.conv3d.bias": (400,),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    with torch.device("meta"):
        assert InceptionI3d()(torch.zeros(2, 3, 16, 224, 224)).shape == (2, 400)
        assert InceptionI3d()(torch.zeros(1, 3, 9, 224, 224)).shape == (1, 400)


def random_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Every parameter and BatchNorm buffer random, scaled to keep activations O(1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        template = InceptionI3d().state_dict()
    state = {}
    for k, v in template.items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            state[k] = torch.rand(v.shape, generator=g) + 0.5
        elif k.endswith("conv3d.weight"):
            fan_in = math.prod(v.shape[1:])
            state[k] = torch.randn(v.shape, generator=g) * math.sqrt(2.0 / fan_in)
        else:  # BN weight/bias/running_mean, logits bias
            state[k] = torch.randn(v.shape, generator=g) * 0.2 + (
                1.0 if k.endswith("bn.weight") else 0.0
            )
    return state


def reference_i3d(state: dict[str, torch.Tensor], x: torch.Tensor, eps: float) -> torch.Tensor:
    """I3D from the state dict alone: pad (TF formula) -> conv -> BN -> ReLU, per unit."""

    def pad(x, kernel, stride):
        pads = []
        for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.pad(x, pads)

    def unit(x, name, stride=(1, 1, 1)):
        w = state[f"{name}.conv3d.weight"]
        x = F.conv3d(pad(x, w.shape[2:], stride), w, stride=stride)
        x = F.batch_norm(
            x,
            state[f"{name}.bn.running_mean"],
            state[f"{name}.bn.running_var"],
            state[f"{name}.bn.weight"],
            state[f"{name}.bn.bias"],
            eps=eps,
        )
        return F.relu(x)

    def pool(x, kernel, stride):
        return F.max_pool3d(pad(x, kernel, stride), kernel, stride)

    def mixed(x, name):
        b0 = unit(x, f"{name}.b0")
        b1 = unit(unit(x, f"{name}.b1a"), f"{name}.b1b")
        b2 = unit(unit(x, f"{name}.b2a"), f"{name}.b2b")
        b3 = unit(pool(x, (3, 3, 3), (1, 1, 1)), f"{name}.b3b")
        return torch.cat([b0, b1, b2, b3], 1)

    x = unit(x, "Conv3d_1a_7x7", (2, 2, 2))
    x = pool(x, (1, 3, 3), (1, 2, 2))
    x = unit(unit(x, "Conv3d_2b_1x1"), "Conv3d_2c_3x3")
    x = pool(x, (1, 3, 3), (1, 2, 2))
    x = mixed(mixed(x, "Mixed_3b"), "Mixed_3c")
    x = pool(x, (3, 3, 3), (2, 2, 2))
    for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
        x = mixed(x, name)
    x = pool(x, (2, 2, 2), (2, 2, 2))
    x = mixed(mixed(x, "Mixed_5b"), "Mixed_5c")
    x = F.avg_pool3d(x, (2, 7, 7), stride=1)
    x = F.conv3d(x, state["logits.conv3d.weight"], state["logits.conv3d.bias"])
    return x.mean(dim=(2, 3, 4))  # time mean of the (1 x 1 spatial) logits


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    state = random_state()
    folder = tmp_path_factory.mktemp("i3d")
    torch.save(state, folder / "i3d.pt")
    save_file(
        {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")},
        str(folder / "i3d.safetensors"),
    )
    return state, folder


def test_random_weight_forward_matches_reference(weights):
    state, folder = weights
    model = load_i3d(folder / "i3d.pt")
    x = torch.rand(1, 3, 10, 224, 224, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        ours = model(x)
        ref = reference_i3d(state, x, eps=1e-5)  # VideoGPT i3d_pretrained_400 BatchNorm3d eps
    assert ours.shape == (1, 400)
    assert ref.abs().mean() > 1e-2  # not a degenerate all-zero comparison
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
    # the safetensors copy (without num_batches_tracked) loads to the same network
    again = load_i3d(folder / "i3d.safetensors")
    for k, v in again.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(v, state[k]), k


def test_loader_rejects_missing_files_keys_and_shapes(weights, tmp_path):
    state, _ = weights
    with pytest.raises(CheckpointError, match="not found"):
        load_i3d(tmp_path / "nope.pt")
    broken = dict(state)
    del broken["Mixed_4c.b1b.conv3d.weight"]
    broken["fc.weight"] = torch.zeros(1)
    torch.save(broken, tmp_path / "keys.pt")
    with pytest.raises(CheckpointError, match="1 missing keys.*Mixed_4c.b1b.conv3d.weight"):
        load_i3d(tmp_path / "keys.pt")
    wrong = dict(state)
    wrong["logits.conv3d.bias"] = torch.zeros(600)
    torch.save(wrong, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_i3d(tmp_path / "shape.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_i3d(tmp_path / "junk.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_i3d(tmp_path / "junk.safetensors")


def test_preprocess_resizes_crops_and_scales():
    video = np.zeros((9, 120, 200, 3), np.uint8)
    video[..., 0] = 255
    video[:, :, 90:110, 1] = 255  # a green band in the middle columns survives the center crop
    x = preprocess(video)
    assert x.shape == (3, 9, 224, 224)
    assert torch.allclose(x[0], torch.ones(()))  # 255 -> +1
    assert x[2].max() == -1  # 0 -> -1
    assert x[1, :, :, 112].min() > 0.9 and x[1, :, :, 0].max() == -1


def test_i3d_features_need_enough_frames(weights):
    _, folder = weights
    model = load_i3d(folder / "i3d.safetensors")
    with pytest.raises(InputError, match="at least 9 frames"):
        i3d_features(model, [np.zeros((8, 32, 32, 3), np.uint8)])
