"""The training loop on tiny models: exact resume after SIGKILL, overfitting, export, config handling."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomize_

from kinetograph.data.build import build
from kinetograph.errors import CheckpointError, InputError
from kinetograph.io.checkpoint import convert, load_checkpoint, save_original
from kinetograph.io.safetensors import load_state_dict
from kinetograph.models.svd import SVD
from kinetograph.presets import PRESETS
from kinetograph.pipeline.image_to_video import ImageToVideo
from kinetograph.training.config import TrainConfig, from_dict, load_config, to_toml, with_overrides
from kinetograph.training.loop import build_model, lr_factor, train
from kinetograph.training.rng import SampleRNG
from kinetograph.training.stages import LatentCache, first_stage_moments, is_temporal, make_stage

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny_data")
    build(out, "tiny", seed=0, workers=1, progress=False)
    return out


def tiny_cfg(root: Path, out: Path, stage: str, **sections) -> TrainConfig:
    sections.setdefault("data", {})
    base = from_dict({
        "stage": stage,
        "model": {"preset": "tiny"},
        "data": {"root": str(root), "num_frames": 3, "height": 32, "width": 32, "batch_size": 2,
                 "kinds": ["video", "camera"] if stage != "image" else ["image", "camera"]},
        "optim": {"lr": 1e-3, "warmup_steps": 2, "schedule": "cosine"},
        "run": {"out_dir": str(out), "max_steps": 6, "ckpt_every": 2, "val_count": 0, "progress": False,
                "tensorboard": False, "threads": 2},
    })
    return with_overrides(base, **sections)


def losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_config_round_trip_and_errors(tmp_path: Path):
    cfg = tiny_cfg(tmp_path, tmp_path / "run", "finetune", model={"lora_rank": 4}, loss={"p_mean": 1.0})
    path = tmp_path / "c.toml"
    path.write_text(to_toml(cfg))
    assert load_config(path) == cfg
    assert load_config(path, overrides=["optim.lr=0.5", 'run.out_dir="elsewhere"']).optim.lr == 0.5
    for repo_config in sorted((ROOT / "configs").rglob("*.toml")):
        load_config(repo_config)  # every committed recipe validates
    path.write_text(to_toml(cfg).replace("[optim]", "[optim]\nlearning_rate = 1.0"))
    with pytest.raises(InputError, match="optim.learning_rate"):
        load_config(path)
    with pytest.raises(InputError, match="--stage video"):
        path.write_text(to_toml(cfg))
        load_config(path, stage="video")
    with pytest.raises(InputError, match="optim.lr must be of type float"):
        load_config(path, overrides=['optim.lr="fast"'])


def test_lr_schedule():
    cfg = with_overrides(TrainConfig(), optim={"lr": 1.0, "warmup_steps": 4, "schedule": "cosine", "min_lr_ratio": 0.1},
                         run={"max_steps": 14})
    assert [lr_factor(cfg, s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(cfg, 9) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(cfg, 14) == pytest.approx(0.1)


def test_resume_after_sigkill_continues_the_same_run(data: Path, tmp_path: Path):
    steps = 8
    ref = tiny_cfg(data, tmp_path / "ref", "finetune", run={"max_steps": steps, "ckpt_every": 2, "keep_last": 2, "progress": False,
                                                             "tensorboard": False, "threads": 2, "val_count": 0, "out_dir": str(tmp_path / "ref")})
    reference = train(ref)
    assert sorted(reference.losses) == list(range(1, steps + 1))

    out = tmp_path / "killed"
    cfg = with_overrides(ref, run={"out_dir": str(out)})
    path = tmp_path / "killed.toml"
    path.write_text(to_toml(cfg))
    proc = subprocess.Popen(
        [sys.executable, "-m", "kinetograph.training.cli", "--stage", "finetune", "--config", str(path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    marker = out / "checkpoints" / "step-00000004" / "state.json"
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the training subprocess made no checkpoint in time"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed mid-run, not finished
    assert max(losses(out)) < steps

    resumed = train(cfg, resume=True)
    assert min(resumed.losses) > 4  # it continued; it did not start over
    curve, want = losses(out), reference.losses
    assert sorted(curve) == list(range(1, steps + 1))
    torch.testing.assert_close(torch.tensor([curve[s] for s in want]), torch.tensor(list(want.values())), rtol=1e-5, atol=1e-6)
    # Final EMA weights (the export) agree too.
    a, b = load_state_dict(out / "export" / "model.safetensors"), load_state_dict(tmp_path / "ref" / "export" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    assert len(list((out / "checkpoints").iterdir())) == 2  # keep_last


def test_resume_refuses_other_settings_and_fresh_runs_refuse_old_dirs(data: Path, tmp_path: Path):
    cfg = tiny_cfg(data, tmp_path / "run", "image", run={"max_steps": 1, "ckpt_every": 1, "out_dir": str(tmp_path / "run"),
                                                         "progress": False, "tensorboard": False, "val_count": 0})
    train(cfg)
    with pytest.raises(InputError, match="--resume"):
        train(cfg)
    with pytest.raises(InputError, match="optim.lr"):
        train(with_overrides(cfg, optim={"lr": 0.5}, run={"max_steps": 2}), resume=True)
    assert train(with_overrides(cfg, run={"max_steps": 2}), resume=True).step == 2  # more steps: fine


def test_a_second_trainer_on_a_run_in_use_stops_before_touching_it(data: Path, tmp_path: Path):
    """While one process trains a run, another `train --resume` of it fails in one line naming the
    holder, and leaves the run's metrics and checkpoints as they were; once the run is free it resumes."""
    from kinetograph.training.loop import lock_run_dir

    cfg = tiny_cfg(data, tmp_path / "run", "image", run={"max_steps": 2, "ckpt_every": 1, "out_dir": str(tmp_path / "run"),
                                                         "progress": False, "tensorboard": False, "val_count": 0})
    train(cfg)
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    held = lock_run_dir(tmp_path / "run")  # the other trainer
    with pytest.raises(InputError, match=rf"run is in use by another training process \(pid {os.getpid()}\)"):
        train(with_overrides(cfg, run={"max_steps": 3}), resume=True)
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before
    assert not (tmp_path / "run" / "checkpoints" / "step-00000003").exists()
    held.close()
    assert train(with_overrides(cfg, run={"max_steps": 3}), resume=True).step == 3


@torch.no_grad()
def _eval_loss(cfg: TrainConfig, model, batch) -> float:
    stage = make_stage(cfg)
    loss_fn = stage.make_loss(model)
    total = 0.0
    for k in range(8):  # fixed noise levels and noise: positions 1000 + ...
        rng = SampleRNG(123, [1000 + 2 * k, 1001 + 2 * k])
        inputs = stage.encode(model, batch, rng, train=False)
        with stage.forward_context(model.unet):
            total += float(stage.loss(loss_fn, model.unet, inputs, rng).mean())
    return total / 8


def test_image_stage_overfits_and_writes_validation(data: Path, tmp_path: Path):
    cfg = tiny_cfg(data, tmp_path / "img", "image",
                   data={"kinds": ["image"], "batch_size": 2, "height": 32, "width": 32},
                   optim={"lr": 2e-3, "warmup_steps": 0, "schedule": "constant"},
                   ema={"enabled": False},
                   run={"max_steps": 30, "ckpt_every": 30, "val_count": 1, "val_steps": 3, "out_dir": str(tmp_path / "img"),
                        "progress": False, "tensorboard": True})
    from kinetograph.data.datasets import ClipDataset, collate
    from kinetograph.training.data import sample_config

    ds = ClipDataset(data, sample_config(cfg, 1), seed=0)
    batch = collate([ds[0], ds[1]])
    before, _ = build_model(cfg, make_stage(cfg))
    result = train(cfg)

    after = load_checkpoint(result.exports[0]).model
    l0, l1 = _eval_loss(cfg, before, batch), _eval_loss(cfg, after, batch)
    assert l1 < 0.8 * l0, (l0, l1)
    # Temporal layers were frozen: identical to the random init.
    for (n, p), q in zip(before.unet.named_parameters(), after.unet.parameters(), strict=True):
        if is_temporal(n):
            assert torch.equal(p, q), n
        elif n.startswith("out.") or n.startswith("input_blocks.1.0.in_layers"):
            assert not torch.equal(p, q), n
    assert result.validation and result.validation[0].is_file()
    assert list((tmp_path / "img" / "tensorboard").iterdir())


def test_finetune_lora_export_loads_and_generates_in_both_layouts(data: Path, tmp_path: Path):
    out = tmp_path / "ft"
    # Start from weights with no zero layers (a fresh UNet's zeroed proj_out would block LoRA's gradients).
    init = save_original(randomize_(SVD(PRESETS["tiny"].model), seed=2), tmp_path / "init.safetensors", "tiny")
    cfg = tiny_cfg(data, out, "finetune",
                   data={"height": 64, "width": 64, "num_frames": 2, "batch_size": 1},
                   model={"lora_rank": 2, "gradient_checkpointing": True, "init": str(init)},
                   optim={"lr": 1e-2},
                   run={"max_steps": 2, "ckpt_every": 2, "val_count": 1, "val_steps": 2, "out_dir": str(out),
                        "export_layouts": ["original", "diffusers"], "progress": False, "tensorboard": False})
    result = train(cfg)
    ckpt_weights = load_state_dict(out / "checkpoints" / "step-00000002" / "model.safetensors")
    assert ckpt_weights and all(k.endswith(("lora_A", "lora_B")) for k in ckpt_weights)  # adapters only
    original, diffusers = result.exports
    plain = with_overrides(cfg, model={"lora_rank": 0})
    before, _ = build_model(plain, make_stage(plain))
    frames = []
    # The export records what the model was trained on as its sampling defaults.
    rows = [json.loads(x) for x in (data / "manifest.jsonl").read_text().splitlines()]
    buckets = [r["motion_bucket"] for r in rows if r["kind"] in cfg.data.kinds and r["kind"] != "image"]
    trained_on = {"height": 64, "width": 64, "num_frames": 2, "fps": round(cfg.data.fps),
                  "motion_bucket_id": int(np.median(buckets))}
    assert trained_on != {k: getattr(PRESETS["tiny"].sampling, k) for k in trained_on}
    for path in (original, diffusers):
        pipe = ImageToVideo.from_checkpoint(path)
        assert pipe.preset.name == "tiny"
        assert {k: getattr(pipe.preset.sampling, k) for k in trained_on} == trained_on
        assert ImageToVideo.from_checkpoint(path, preset="tiny").preset.sampling == PRESETS["tiny"].sampling
        to = "diffusers" if path == original else "original"
        converted = convert(path, tmp_path / ("conv" if to == "diffusers" else "conv.safetensors"), to)
        assert load_checkpoint(converted).preset.sampling == pipe.preset.sampling
        w = pipe.model.unet.input_blocks[1][1].transformer_blocks[0].attn1.to_q.weight
        assert not torch.equal(w, before.unet.input_blocks[1][1].transformer_blocks[0].attn1.to_q.weight)  # merged
        image = (torch.rand(64, 64, 3, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8).numpy()
        video = pipe(image, num_inference_steps=2, seed=0)  # size and frames from the export
        assert video.frames.shape == (2, 64, 64, 3)
        frames.append(torch.from_numpy(video.frames).float())
    assert (frames[0] - frames[1]).abs().max() <= 1  # the two layouts hold the same model
    assert result.validation and result.validation[0].is_file()


def test_unknown_recorded_sampling_default_is_an_error(tmp_path: Path):
    model = SVD(PRESETS["tiny"].model)
    with pytest.raises(CheckpointError, match="unknown sampling defaults"):
        save_original(model, tmp_path / "bad.safetensors", "tiny", sampling={"motion_bucket": 3})
    path = save_original(model, tmp_path / "ok.safetensors", "tiny", sampling={"motion_bucket_id": 200})
    assert load_checkpoint(path).preset.sampling.motion_bucket_id == 200
    assert load_checkpoint(path).preset.sampling.height == PRESETS["tiny"].sampling.height


def test_latent_cache_encodes_each_clip_once_and_keeps_the_run(data: Path, tmp_path: Path):
    torch.manual_seed(0)
    vae = SVD(PRESETS["tiny"].model).vae.eval()
    randomize_(vae)
    clips = torch.rand(3, 2, 3, 32, 32) * 2 - 1
    cache = LatentCache()
    mean, logvar = cache(vae, clips[[0, 1, 0]], quant_conv=True)  # clip 0 twice: one encode
    assert (cache.misses, cache.hits) == (2, 1)
    ref_mean, ref_logvar = first_stage_moments(vae, clips[0], quant_conv=True)
    assert torch.equal(mean[:2], ref_mean) and torch.equal(mean[4:], ref_mean) and torch.equal(logvar[:2], ref_logvar)
    cache(vae, clips[[1]], quant_conv=True)
    assert (cache.misses, cache.hits) == (2, 2)

    run = {"max_steps": 6, "ckpt_every": 2, "keep_last": 4}
    plain = train(tiny_cfg(data, tmp_path / "plain", "finetune", run={**run, "out_dir": str(tmp_path / "plain")}))
    cached_cfg = tiny_cfg(data, tmp_path / "cached", "finetune", data={"cache_latents": True},
                          run={**run, "out_dir": str(tmp_path / "cached")})
    cached = train(cached_cfg)
    # Same draws and data; latents differ only by the rounding of per-clip vs batched encoding.
    assert cached.losses == pytest.approx(plain.losses, rel=1e-4)
    # A resumed run starts with an empty cache and still computes the very same numbers.
    split = with_overrides(cached_cfg, run={"out_dir": str(tmp_path / "split"), "max_steps": 3})
    train(split)
    resumed = train(with_overrides(split, run={"max_steps": 6}), resume=True)
    assert {s: resumed.losses[s] for s in range(4, 7)} == {s: cached.losses[s] for s in range(4, 7)}

    with pytest.raises(InputError, match="cache_latents"):
        tiny_cfg(data, tmp_path / "vae", "vae", data={"cache_latents": True})


def test_vae_decoder_only_training_keeps_the_encoder_and_its_latents(data: Path, tmp_path: Path):
    first = train(tiny_cfg(data, tmp_path / "vae", "vae", run={"max_steps": 2}))
    init = first.exports[0]
    cfg = tiny_cfg(data, tmp_path / "dec", "vae", model={"init": str(init), "train": "decoder"}, run={"max_steps": 3})
    after = train(cfg).exports[0]
    before_sd, after_sd = load_state_dict(init), load_state_dict(after)
    enc = [k for k in before_sd if ".encoder." in k or ".quant_conv." in k]
    dec = [k for k in before_sd if k.startswith("first_stage_model.decoder.")]
    assert enc and dec
    assert all(torch.equal(before_sd[k], after_sd[k]) for k in enc)  # same latent space
    assert sum(not torch.equal(before_sd[k], after_sd[k]) for k in dec) > len(dec) // 2
    # ... and its scale: a UNet trained on the init's latents sees the same numbers (the run's
    # own calibration on other batches would move it).
    assert load_checkpoint(after).model.cfg.vae.scale_factor == load_checkpoint(init).model.cfg.vae.scale_factor
    with pytest.raises(InputError, match="decoder"):
        tiny_cfg(data, tmp_path / "x", "finetune", model={"train": "decoder"})


def test_vae_export_can_standardize_each_latent_channel(data: Path, tmp_path: Path):
    cfg = tiny_cfg(data, tmp_path / "std", "vae", model={"standardize_latent_channels": True}, run={"max_steps": 2})
    model = load_checkpoint(train(cfg).exports[0]).model.eval()
    from kinetograph.data.datasets import ClipDataset, SampleConfig

    clips = ClipDataset(data, SampleConfig(num_frames=3, height=32, width=32, kinds=("video", "camera")))
    x = torch.cat([clips[i]["video"] for i in range(len(clips))])
    with torch.no_grad():
        z = model.vae.encode(x)
    std = z.std(dim=(0, 2, 3))
    assert std.max() / std.min() < 2.0  # every channel near one std (the export measured 4 batches)
    assert abs(model.cfg.vae.scale_factor - 1.0) < 0.5  # nothing left for the global factor to do


def test_export_of_a_checkpoint_equals_the_runs_own_export(data: Path, tmp_path: Path, capsys):
    """`kinetograph export RUN --step N`: the last checkpoint's EMA exports to exactly the file the
    run wrote when it ended; an earlier step's raw weights come out as trained; wrong asks are refused."""
    from kinetograph.cli import main
    from kinetograph.training.loop import export_checkpoint

    init = save_original(randomize_(SVD(PRESETS["tiny"].model), seed=3), tmp_path / "init.safetensors", "tiny")
    out = tmp_path / "run"
    cfg = tiny_cfg(data, out, "finetune", model={"init": str(init)}, optim={"lr": 1e-2},
                   run={"max_steps": 4, "ckpt_every": 2, "keep_last": 3, "out_dir": str(out)})
    (end,) = train(cfg).exports
    assert main(["export", str(out), "-o", str(tmp_path / "latest")]) == 0
    assert str(tmp_path / "latest" / "model.safetensors") in capsys.readouterr().out
    theirs, ours = load_state_dict(end), load_state_dict(tmp_path / "latest" / "model.safetensors")
    assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in theirs)
    assert load_checkpoint(tmp_path / "latest" / "model.safetensors").preset == load_checkpoint(end).preset

    (early,) = export_checkpoint(out, step=2, weights="model")
    assert early == out / "export" / "step-00000002" / "model.safetensors"
    trained = load_state_dict(out / "checkpoints" / "step-00000002" / "model.safetensors")
    unet = load_checkpoint(early).model.state_dict()
    assert all(torch.equal(unet[k], v) for k, v in trained.items())
    assert not all(torch.equal(unet[k], load_checkpoint(end).model.state_dict()[k]) for k in trained)

    with pytest.raises(InputError, match="has no checkpoint of step 3; it has steps 2, 4"):
        export_checkpoint(out, step=3)
    with pytest.raises(InputError, match="choose ema or model"):
        export_checkpoint(out, weights="best")
    with pytest.raises(InputError, match="not a training run's folder"):
        export_checkpoint(tmp_path)
    save_original(randomize_(SVD(PRESETS["tiny"].model), seed=4), init, "tiny")  # the init file changed since
    with pytest.raises(InputError, match="differs from the weights the run started from"):
        export_checkpoint(out)
    assert main(["export", str(out), "--step", "9"]) == 2
    assert "error: " in capsys.readouterr().err


def test_compiled_training_follows_the_eager_run_and_resumes_it(data: Path, tmp_path: Path, monkeypatch):
    # Dynamo's capture and AOT autograd, the parts our modules could break, without inductor's C++
    # build (3.5 min on 2 cores; run once by hand with it: the same assertions held).
    compile_, compiled_modules = torch.compile, []

    def aot_eager(module, **kw):
        compiled_modules.append(module)
        return compile_(module, backend="aot_eager", **kw)

    monkeypatch.setattr(torch, "compile", aot_eager)
    run = {"max_steps": 3, "ckpt_every": 1, "keep_last": 4}
    eager = train(tiny_cfg(data, tmp_path / "eager", "finetune", run={**run, "out_dir": str(tmp_path / "eager")}))
    cfg = tiny_cfg(data, tmp_path / "compiled", "finetune", run={**run, "out_dir": str(tmp_path / "compiled"), "compile": True})
    compiled = train(cfg)
    assert len(compiled_modules) == 1 and "UNet" in type(compiled_modules[0]).__name__
    # The same draws and data through fused kernels: equal up to rounding.
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-4)
    assert compiled.losses[3] != compiled.losses[1]  # it trained
    # run.compile is a machine key: an eager run resumes a compiled one.
    resumed = train(with_overrides(cfg, run={"max_steps": 4, "compile": False}), resume=True)
    assert resumed.step == 4 and len(compiled_modules) == 1
