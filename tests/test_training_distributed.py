"""Two processes (torchrun, gloo on CPU) with batch B train to the weights of one process with batch 2B.

DDP and FSDP2 (fully_shard) both; gradient accumulation (2 x B in one process) too. AdamW's eps is
raised to 1e-5 here: with 1e-8, parameters whose gradient is ~0 get an update of ~lr * sign(noise),
which turns float reduction-order differences (1e-9) into 1e-4 weight differences.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kinetograph.data.build import build
from kinetograph.io.safetensors import load_state_dict
from kinetograph.training.config import from_dict, to_toml, with_overrides
from kinetograph.io.checkpoint import load_checkpoint
from kinetograph.training.loop import build_model, train
from kinetograph.training.stages import make_stage


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny_data")
    build(out, "tiny", seed=0, workers=1, progress=False)
    return out


def _cfg(data: Path, out: Path, batch: int, **run):
    return from_dict({
        "stage": "video",
        "data": {"root": str(data), "num_frames": 3, "height": 32, "width": 32, "kinds": ["video", "camera"], "batch_size": batch},
        "optim": {"lr": 1e-3, "eps": 1e-5, "warmup_steps": 1},
        "ema": {"enabled": True, "decay": 0.9},
        "run": {"out_dir": str(out), "max_steps": 3, "ckpt_every": 3, "val_count": 0, "progress": False,
                "tensorboard": False, "threads": 1, **run},
    })


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_state_dict(out / "export" / "model.safetensors")


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5, msg=k)


def test_two_processes_match_one_with_the_doubled_batch(data: Path, tmp_path: Path):
    one = train(_cfg(data, tmp_path / "one", batch=2))
    reference = _weights(tmp_path / "one")

    accum = with_overrides(_cfg(data, tmp_path / "accum", batch=1), optim={"lr": 1e-3, "eps": 1e-5, "warmup_steps": 1, "grad_accum": 2})
    acc = train(accum)
    _assert_same(_weights(tmp_path / "accum"), reference)
    torch.testing.assert_close(torch.tensor(list(acc.losses.values())), torch.tensor(list(one.losses.values())), rtol=1e-5, atol=0)

    for mode in ("ddp", "fsdp"):
        out = tmp_path / mode
        cfg_path = tmp_path / f"{mode}.toml"
        cfg_path.write_text(to_toml(_cfg(data, out, batch=1, distributed=mode)))
        proc = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
             "-m", "kinetograph.training.cli", "--stage", "video", "--config", str(cfg_path)],
            capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        _assert_same(_weights(out), reference)
        # Both ranks consumed different samples: the checkpoint records the global sample count.
        state = (out / "checkpoints" / "step-00000003" / "state.json").read_text()
        assert '"world_size": 2' in state and '"samples_seen": 6' in state

    # The run did train: the export is far (>> tolerance) from the model it started from.
    start, _ = build_model(_cfg(data, tmp_path / "x", batch=2), make_stage(_cfg(data, tmp_path / "x", batch=2)))
    trained = load_checkpoint(tmp_path / "one" / "export" / "model.safetensors").model
    diff = max(float((p - q).abs().max()) for p, q in zip(start.unet.parameters(), trained.unet.parameters(), strict=True))
    assert diff > 1e-3
