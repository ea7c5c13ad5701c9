"""train(cfg): the whole training loop, one function, top to bottom.

    batch -> encode (frozen VAE / CLIP, conditioning) -> loss -> backward -> clip -> AdamW step
    -> EMA -> log / validate / checkpoint

Same code for one CPU process, one GPU, and torchrun with DDP or FSDP2 (training.distributed).
Float32 master weights; on GPUs the forward runs under bf16 (or fp16 with loss scaling) autocast.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from kinetograph.data.datasets import ClipDataset
from kinetograph.errors import InputError
from kinetograph.io.checkpoint import load_checkpoint, save_diffusers, save_original
from kinetograph.io.video import save_video
from kinetograph.models.svd import SVD
from kinetograph.presets import PRESETS
from kinetograph.training import checkpoint as ckpt
from kinetograph.training import config as config_io
from kinetograph.training.config import TrainConfig
from kinetograph.training.data import make_loader, sample_config
from kinetograph.training.distributed import Dist, all_mean, barrier, init_distributed, no_sync, shutdown, wrap
from kinetograph.training.ema import EMA
from kinetograph.training.lora import merge_lora
from kinetograph.training.rng import SampleRNG
from kinetograph.training.camera import add_camera_head
from kinetograph.training.stages import Stage, add_attention, add_text_branch, make_stage


@dataclass
class RunResult:
    out_dir: Path
    step: int
    losses: dict[int, float] = field(default_factory=dict)  # step -> mean training loss (this invocation)
    exports: list[Path] = field(default_factory=list)
    validation: list[Path] = field(default_factory=list)


def train(cfg: TrainConfig, resume: bool = False) -> RunResult:
    """Run (or continue, with `resume`) the training run described by `cfg`; returns where it ended."""
    d = init_distributed(cfg.run.device)
    try:
        return _train(cfg, resume, d)
    finally:
        shutdown(d)


def _train(cfg: TrainConfig, resume: bool, d: Dist) -> RunResult:
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    out = Path(cfg.run.out_dir)
    start_ckpt = _check_run_dir(cfg, out, resume)
    amp_dtype = _autocast_dtype(cfg, d.device)

    # -- model: init checkpoint or seeded random weights, stage changes, trained part, wrapping
    stage = make_stage(cfg)
    model, stage.preset_name = build_model(cfg, stage)
    barrier(d)
    lock = None
    if d.is_main:  # only once the model builds: a config that cannot leaves no run folder behind
        out.mkdir(parents=True, exist_ok=True)
        lock = lock_run_dir(out)  # before anything is written: a second process must not touch the run
        (out / "config.toml").write_text(config_io.to_toml(cfg))
    model.to(d.device)
    trainable = stage.trainable(model)
    model.requires_grad_(False)
    for name, p in trainable.items():
        # The camera head and gate were fitted when they were added (`training/camera.py`): they are
        # kept in the checkpoints with the trained weights (a resume or export reads them back, not
        # a refit) but get no gradient, so the optimizer never moves them.
        p.requires_grad_(".camera_head." not in name and ".camera_gate." not in name)
    fingerprint = ckpt.frozen_fingerprint(model, trainable)
    model.eval()
    model.unet.gradient_checkpointing = cfg.model.gradient_checkpointing
    model.vae.gradient_checkpointing = cfg.model.gradient_checkpointing and stage.name == "vae"
    module = wrap(stage.module(model), d, cfg.run.distributed)
    module.train()
    # The loss calls the compiled module; no_sync and the checkpoints see the module itself.
    forward = torch.compile(module) if cfg.run.compile else module
    trainable = stage.trainable(model)  # FSDP2 replaces parameters by sharded ones
    optimizer = _optimizer(cfg, trainable)
    ema = EMA(trainable, cfg.ema.decay, cfg.ema.warmup) if cfg.ema.enabled else None
    scaler = torch.amp.GradScaler(d.device.type, enabled=amp_dtype == torch.float16)

    step = 0
    if start_ckpt is not None:
        state = ckpt.load_checkpoint_state(start_ckpt, trainable, optimizer, ema)
        if not ckpt.frozen_matches(state, fingerprint):
            raise InputError(f"{start_ckpt}: the frozen weights differ from the run's (was model.init changed?)")
        if "scaler" in state and scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])
        step = state["step"]

    loader = make_loader(cfg, stage.num_frames, d.rank, d.world, step)
    batches = iter(loader)
    loss_fn = stage.make_loss(model)
    log = _Logger(cfg, out, step, d.is_main)
    global_batch = cfg.data.batch_size * cfg.optim.grad_accum * d.world
    val_clips = _validation_clips(cfg, stage) if d.is_main else []
    result = RunResult(out, step)
    bar = tqdm(total=cfg.run.max_steps, initial=step, unit="step", disable=not (d.is_main and cfg.run.progress), dynamic_ncols=True)
    autocast = torch.autocast(d.device.type, dtype=amp_dtype) if amp_dtype != torch.float32 else nullcontext()

    while step < cfg.run.max_steps:
        t0 = time.perf_counter()
        lr = _set_lr(cfg, optimizer, step)
        total = torch.zeros((), device=d.device)
        for micro in range(cfg.optim.grad_accum):
            batch = _to_device(next(batches), d.device)
            rng = SampleRNG(cfg.data.seed, batch["position"], d.device)
            with no_sync(module, d, active=micro < cfg.optim.grad_accum - 1), autocast:
                inputs = stage.encode(model, batch, rng)  # encode: latents + conditioning, no grad
                with stage.forward_context(model.unet):
                    loss = stage.loss(loss_fn, forward, inputs, rng).mean()  # loss
                scaler.scale(loss / cfg.optim.grad_accum).backward()  # backward
            total += loss.detach() / cfg.optim.grad_accum
        scaler.unscale_(optimizer)
        grad_norm = _clip(cfg, trainable)
        scaler.step(optimizer)  # step
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update()  # EMA
        step += 1

        loss_value = float(all_mean(total, d))  # log / validate / checkpoint
        result.losses[step] = loss_value
        samples_per_s = global_batch / (time.perf_counter() - t0)
        if step % cfg.run.log_every == 0 or step == cfg.run.max_steps:
            log.scalars(step, {"loss": loss_value, "lr": lr, "grad_norm": grad_norm, "samples_per_s": samples_per_s})
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}", samples_s=f"{samples_per_s:.2f}")
        if cfg.run.val_every and step % cfg.run.val_every == 0 and step != cfg.run.max_steps:
            result.validation += _validate(cfg, stage, model, ema, val_clips, step, d, log)
        if step % cfg.run.ckpt_every == 0 or step == cfg.run.max_steps:
            extra = {"frozen_fingerprint": fingerprint, "samples_seen": step * global_batch, "world_size": d.world}
            if scaler.is_enabled():
                extra["scaler"] = scaler.state_dict()
            ckpt.save_checkpoint(out, step, trainable, optimizer, ema, extra, d.is_main, cfg.run.keep_last)
            barrier(d)
    bar.close()

    result.step = step
    if stage.name == "vae":  # calibrate the weights that are exported: the EMA's when export writes it
        exported_ema = ema is not None and cfg.run.export_ema
        with ema.swapped() if exported_ema else nullcontext():
            stage.calibrate(model, batches, d)
            if exported_ema:
                ema.absorb()
    result.validation += _validate(cfg, stage, model, ema, val_clips, step, d, log)
    result.exports = _export(cfg, stage, model, ema, out, d)
    log.close()
    if lock is not None:
        lock.close()  # the run is free for the next process
    return result


# ---------------------------------------------------------------------------------------------
# Setup helpers.


def build_model(cfg: TrainConfig, stage: Stage) -> tuple[SVD, str]:
    """The model a run starts from, and its preset name: `model.init` or seeded random weights, then
    the stage's changes (insertion, LoRA, ...). Deterministic, so a resume rebuilds the same frozen parts."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.run.seed)
        if cfg.model.init:
            loaded = load_checkpoint(cfg.model.init, dtype=torch.float32)
            model, preset = loaded.model, loaded.preset.name
        else:
            if cfg.model.preset not in PRESETS:
                raise InputError(f"model.preset {cfg.model.preset!r}: choose one of {', '.join(PRESETS)}")
            model, preset = SVD(PRESETS[cfg.model.preset].model), cfg.model.preset
        if cfg.model.text_encoder:
            model = add_text_branch(model, cfg.model.text_encoder)
        if cfg.model.attention_resolutions:
            model = add_attention(model, cfg.model.attention_resolutions)
        if cfg.model.camera_head:
            model = add_camera_head(model, cfg.data.root, cfg.model.camera_head_captions)
        stage.prepare(model)
    return model, preset


def lock_run_dir(out: Path):
    """An exclusive lock on the run folder `out`, held while the returned file stays open (until
    this process ends). Two trainers on one run would interleave its metrics and checkpoints, and a
    resume truncates the metrics past its checkpoint under the other's feet."""
    import fcntl

    f = open(out / ".lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        pid = f.read().strip() or "?"
        f.close()
        raise InputError(f"{out} is in use by another training process (pid {pid}); wait for it to end or stop it, "
                         "then --resume") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


def _check_run_dir(cfg: TrainConfig, out: Path, resume: bool) -> Path | None:
    found = ckpt.latest(out)
    if not resume:
        if found is not None:
            raise InputError(f"{out} already holds checkpoints; pass --resume to continue that run or set run.out_dir")
        return None
    if found is None:
        raise InputError(f"--resume: no checkpoint in {out}/checkpoints; start the run without --resume")
    saved = out / "config.toml"
    if saved.is_file():
        old = config_io.load_config(saved)
        diff = config_io.resume_differences(old, cfg)
        if diff:
            raise InputError(f"--resume with a different config ({', '.join(diff)}); resume with the run's own settings")
    return found


def _autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    p = cfg.run.precision
    if device.type != "cuda":
        if p in ("bf16", "fp16"):
            raise InputError(f"run.precision {p} needs a GPU; CPUs train in fp32 (run.precision = \"auto\")")
        return torch.float32
    if p == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[p]


def _optimizer(cfg: TrainConfig, trainable: dict[str, torch.nn.Parameter]) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases, norms and blend factors (1-D parameters)."""
    o = cfg.optim
    decay = [p for p in trainable.values() if p.ndim >= 2]
    rest = [p for p in trainable.values() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps)


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """Linear warmup over warmup_steps, then constant or cosine down to min_lr_ratio at max_steps."""
    o = cfg.optim
    if step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    if o.schedule == "constant":
        return 1.0
    span = max(1, cfg.run.max_steps - o.warmup_steps)
    progress = min(1.0, (step - o.warmup_steps) / span)
    return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _set_lr(cfg: TrainConfig, optimizer: torch.optim.Optimizer, step: int) -> float:
    lr = cfg.optim.lr * lr_factor(cfg, step)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def _clip(cfg: TrainConfig, trainable: dict[str, torch.nn.Parameter]) -> float:
    params = [p for p in trainable.values() if p.grad is not None]
    max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------
# Logging, validation, export.


class _Logger:
    """metrics.jsonl (one JSON object per line) and TensorBoard event files, rank 0 only.

    On resume the lines after the checkpoint's step (written by the interrupted process) are
    dropped, so the file is the run's one loss curve.
    """

    def __init__(self, cfg: TrainConfig, out: Path, start: int, active: bool):
        self.active = active
        self.path = out / "metrics.jsonl"
        self.tb = None
        if not active:
            return
        if self.path.is_file():
            kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= start]
            self.path.write_text("".join(line + "\n" for line in kept))
        if cfg.run.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: JSONL only
                SummaryWriter = None
            if SummaryWriter is not None:
                self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=start + 1)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.write({"step": step, **values, "time": round(time.time(), 3)})
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"train/{k}", v, step)

    def write(self, row: dict) -> None:
        if self.active:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _validation_clips(cfg: TrainConfig, stage: Stage) -> list[dict]:
    """The first val_count items of the dataset, centre-cropped: the same clips at every validation."""
    if cfg.run.val_count <= 0 or not cfg.data.root:
        return []
    sc = sample_config(cfg, stage.num_frames)
    ds = ClipDataset(cfg.data.root, type(sc)(**{**sc.__dict__, "random_crop": False, "flip_images": False}), seed=cfg.data.seed)
    return [ds[i] for i in range(min(cfg.run.val_count, len(ds)))]


def _validate(cfg, stage, model, ema, clips, step, d: Dist, log: _Logger) -> list[Path]:
    if not clips:
        return []
    if cfg.run.distributed == "fsdp" and d.enabled:
        log.write({"step": step, "note": "validation skipped under FSDP (parameters are sharded)"})
        return []
    paths: list[Path] = []
    if d.is_main:
        swap = ema.swapped() if ema is not None else nullcontext()
        modes = {m: m.training for m in model.modules()}
        model.eval()
        with swap, torch.no_grad():
            for i, clip in enumerate(clips):
                frames = clip["video"][None].to(d.device)  # (1, t, 3, H, W)
                video = stage.sample(
                    model, frames, clip["fps"], clip["motion_bucket"], cfg.run.val_steps, seed=i, prompt=clip["caption"]
                )
                path = Path(cfg.run.out_dir) / "validation" / f"step-{step:08d}-{i}.{cfg.run.val_format}"
                path.parent.mkdir(parents=True, exist_ok=True)
                paths.append(save_video(video, path, fps=max(1.0, clip["fps"])))
        for m, mode in modes.items():
            m.training = mode
        log.write({"step": step, "validation": [str(p) for p in paths]})
    barrier(d)
    return paths


def sampling_defaults(cfg: TrainConfig, stage: Stage) -> dict:
    """What a video model was trained on, recorded in its export as its sampling defaults: size,
    frames, fps and the median motion bucket of its clips. Sampling outside the buckets a model
    has seen asks for motion it never learned. Empty for the vae and image stages."""
    if stage.name not in ("video", "finetune"):
        return {}
    d = cfg.data
    manifest = Path(d.root) / "manifest.jsonl"
    buckets = [
        r["motion_bucket"] for r in (json.loads(line) for line in manifest.read_text().splitlines() if line.strip())
        if r.get("kind") in d.kinds and r.get("kind") != "image"
    ] if manifest.is_file() else []
    out = {"height": d.height, "width": d.width, "num_frames": stage.num_frames, "fps": max(1, round(d.fps))}
    if buckets:
        out["motion_bucket_id"] = int(np.median(buckets))
    return out


def _export(cfg: TrainConfig, stage: Stage, model: SVD, ema: EMA | None, out: Path, d: Dist) -> list[Path]:
    """The final model (EMA weights if kept, LoRA merged) in the requested checkpoint layouts."""
    if cfg.run.distributed == "fsdp" and d.enabled:
        full = {k: ckpt._full(v) for k, v in model.state_dict().items()}  # every rank gathers
        if ema is not None and cfg.run.export_ema:
            full.update({k: ckpt._full(v) for k, v in ema.state_dict().items()})
        if d.is_main:
            with torch.device("meta"):
                plain = SVD(model.cfg)
            stage.prepare(plain)  # the same module structure (LoRA wrappers)
            plain.load_state_dict(full, assign=True)
            model, ema = plain, None
    if not d.is_main:
        barrier(d)
        return []
    swap = ema.swapped() if ema is not None and cfg.run.export_ema else nullcontext()
    with swap:
        merge_lora(model.unet)  # training is over: fold the adapters into the weights
        model.to("cpu")
        paths = _write_exports(cfg, stage, model, out / "export")
    barrier(d)
    return paths


def _write_exports(cfg: TrainConfig, stage: Stage, model: SVD, folder: Path) -> list[Path]:
    """`model` in each of `run.export_layouts` under `folder`, with the run's sampling defaults."""
    folder.mkdir(parents=True, exist_ok=True)
    sampling = sampling_defaults(cfg, stage)
    paths: list[Path] = []
    if "original" in cfg.run.export_layouts:
        paths.append(save_original(model, folder / "model.safetensors", stage.preset_name, sampling=sampling))
    if "diffusers" in cfg.run.export_layouts:
        shutil.rmtree(folder / "diffusers", ignore_errors=True)
        paths.append(save_diffusers(model, folder / "diffusers", stage.preset_name, sampling=sampling))
    return paths


@torch.no_grad()
def export_checkpoint(run_dir: str | Path, step: int | None = None, weights: str = "ema",
                      out: str | Path | None = None) -> list[Path]:
    """Export one checkpoint of a run as the run's end would: its `weights` ("ema" or "model", the raw
    trained parameters) over the run's starting model, LoRA merged, in the run's export layouts, to
    `out` (default RUN_DIR/export/step-N). For choosing a step by evaluation while a run goes on, or
    after it ended. `step` None = the latest checkpoint."""
    run_dir = Path(run_dir)
    saved = run_dir / "config.toml"
    if not saved.is_file():
        raise InputError(f"{run_dir} has no config.toml, so it is not a training run's folder; pass a run.out_dir")
    dirs = {int(ckpt.STEP_DIR.match(p.name)[1]): p for p in ckpt.checkpoint_dirs(run_dir)}
    if not dirs:
        raise InputError(f"{run_dir}/checkpoints holds no checkpoint yet; wait for run.ckpt_every steps")
    if step is None:
        step = max(dirs)
    if step not in dirs:
        raise InputError(f"{run_dir} has no checkpoint of step {step}; it has steps {', '.join(map(str, sorted(dirs)))}")
    if weights not in ("ema", "model"):
        raise InputError(f"weights {weights!r}: choose ema or model")
    cfg = config_io.load_config(saved)
    stage = make_stage(cfg)
    if stage.name == "vae":
        raise InputError("a vae run calibrates its latent scale on data when it ends, so its checkpoints are not "
                         "exported on their own; resume the run to its end (--resume with a larger run.max_steps)")
    if cfg.model.init and not Path(cfg.model.init).is_file():
        raise InputError(f"the run started from {cfg.model.init}, which is gone; put it back to export the run")
    model, stage.preset_name = build_model(cfg, stage)
    trainable = stage.trainable(model)
    state = json.loads((dirs[step] / "state.json").read_text())
    if not ckpt.frozen_matches(state, ckpt.frozen_fingerprint(model, trainable)):
        raise InputError(f"{cfg.model.init or 'the preset'} differs from the weights the run started from; "
                         "export with the run's own model.init")
    file = dirs[step] / f"{weights}.safetensors"
    if not file.is_file():
        raise InputError(f"{dirs[step]} has no {file.name} (the run kept no EMA); export with weights='model'")
    ckpt.load_weights(file, trainable)
    merge_lora(model.unet)
    return _write_exports(cfg, stage, model, Path(out) if out is not None else run_dir / "export" / f"step-{step:08d}")
