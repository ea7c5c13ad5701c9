"""Time one training step of a stage, by phase, on synthetic clips: where a step's time goes.

    python bench/train_step.py --config configs/default_model/finetune_low.toml --gpu-variant --device cuda

Builds the stage's model from the shipped default model (every stage after stage 2 trains this
architecture), feeds it random clips of the stage's size and random caption states (no data, no
text encoder), and runs the loop's own pieces: `stage.encode` -> `stage.loss` -> backward ->
clip -> AdamW -> EMA. Each phase is timed with the device synchronised around it, so the phases
add up to a step that cannot overlap; `total` is a step without those syncs. Modes:
`eager`, `compile` (torch.compile of the trained module), `compile-ro` (mode="reduce-overhead":
CUDA graphs). With `--no-cache` the VAE encodes the whole batch at once instead of clip by clip
through the latent cache (`data.cache_latents`, a machine key).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

try:
    import av  # noqa: F401
except ImportError:  # a GPU machine without PyAV: the bench decodes no video, only imports modules that can
    import types

    for name in ("av", "av.video", "av.video.reformatter"):
        sys.modules[name] = types.ModuleType(name)
    sys.modules["av.video.reformatter"].ColorRange = sys.modules["av.video.reformatter"].Colorspace = None

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def synthetic_batch(cfg, b: int, t: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "video": torch.rand(b, t, 3, cfg.data.height, cfg.data.width, generator=g) * 2 - 1,
        "fps": torch.full((b,), cfg.data.fps),
        "motion_bucket": torch.randint(0, 256, (b,), generator=g),
        "caption": [f"caption {seed} {i}" for i in range(b)],
        "window_centre": [None] * b,
        "position": [seed * b + i for i in range(b)],
    }


class RandomText:
    """Stands in for the caption encoder: (tokens, mask, pooled) of MiniLM's sizes."""

    def __init__(self, width: int, n: int = 12):
        self.width, self.n = width, n

    def __call__(self, captions: list[str], device: torch.device):
        b = len(captions)
        return (torch.randn(b, self.n, self.width, device=device), torch.ones(b, self.n, dtype=torch.bool, device=device),
                torch.randn(b, self.width, device=device))


def measure(args, mode: str) -> dict:
    import default_model as dm

    from kinetograph import default_model
    from kinetograph.training import loop
    from kinetograph.training.config import load_config
    from kinetograph.training.ema import EMA
    from kinetograph.training.rng import SampleRNG
    from kinetograph.training.stages import make_stage

    name = Path(args.config).stem
    sets = dm.gpu_variant(name) if args.gpu_variant else []
    sets += [f'model.init="{default_model.PATH}"', f"data.cache_latents={'false' if args.no_cache else 'true'}"]
    cfg = load_config(args.config, stage=None, overrides=sets)
    device = torch.device(args.device)
    stage = make_stage(cfg)
    model, stage.preset_name = loop.build_model(cfg, stage)
    model.to(device)
    stage.text = RandomText(model.cfg.unet.text_dim)
    trainable = stage.trainable(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in trainable.values():
        p.requires_grad_(True)
    module = stage.module(model)
    if mode == "compile":
        module = torch.compile(module)
    elif mode == "compile-ro":
        module = torch.compile(module, mode="reduce-overhead")
    optimizer = loop._optimizer(cfg, trainable)
    ema = EMA(trainable, cfg.ema.decay)
    loss_fn = stage.make_loss(model)
    b, t = cfg.data.batch_size, stage.num_frames
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    phases = {"encode": 0.0, "forward+backward": 0.0, "clip+adamw+ema": 0.0}

    def step(i: int, timed: bool) -> None:
        batch = loop._to_device(synthetic_batch(cfg, b, t, i), device)
        rng = SampleRNG(cfg.data.seed, batch["position"], device)
        marks = [time.perf_counter()]
        inputs = stage.encode(model, batch, rng)
        if timed:
            sync()
            marks.append(time.perf_counter())
        loss = stage.loss(loss_fn, module, inputs, rng).mean()
        loss.backward()
        if timed:
            sync()
            marks.append(time.perf_counter())
        loop._clip(cfg, trainable)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update()
        float(loss.detach())
        if timed:
            marks.append(time.perf_counter())
            for k, a, z in zip(phases, marks, marks[1:]):
                phases[k] += z - a

    t0 = time.perf_counter()
    for i in range(args.warmup):
        step(i, False)
    sync()
    warm = time.perf_counter() - t0
    for i in range(args.steps):
        step(args.warmup + i, True)
    t0 = time.perf_counter()
    for i in range(args.steps):
        step(args.warmup + args.steps + i, False)
    sync()
    total = (time.perf_counter() - t0) / args.steps
    kernels = {}
    if args.profile and device.type == "cuda":  # the GPU's busy time per step, against the step's wall time
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for i in range(2):
                step(10_000 + i, False)
            sync()
        events = prof.key_averages()
        kernels = {"gpu_busy_s": round(sum(e.self_device_time_total for e in events) / 2e6, 4),
                   "ops_per_step": sum(e.count for e in events if e.key.startswith("aten::")) // 2}
    return {"mode": mode, "batch": b, "size": [cfg.data.height, cfg.data.width], "frames": t,
            "warmup_s": round(warm, 1), "step_s": round(total, 4),
            **{k: round(v / args.steps, 4) for k, v in phases.items()}, **kernels}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "default_model" / "finetune_low.toml"))
    ap.add_argument("--gpu-variant", action="store_true", help="the stage's GPU variant (bench/default_model.py --gpu)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--modes", default="eager,compile")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-cache", action="store_true")
    ap.add_argument("--profile", action="store_true", help="CUDA: the kernels' busy time and the aten ops of a step")
    ap.add_argument("--deadline", type=float, default=0, help="seconds: skip the modes left once this has passed")
    args = ap.parse_args()
    t0 = time.time()
    for mode in args.modes.split(","):
        if args.deadline and time.time() - t0 > args.deadline:
            print(json.dumps({"mode": mode, "skipped": "deadline"}), flush=True)
            continue
        try:
            print(json.dumps({"config": Path(args.config).stem, "cache": not args.no_cache, **measure(args, mode)}), flush=True)
        except Exception as e:  # a mode that fails to compile is a result, not the end of the bench
            print(json.dumps({"mode": mode, "error": f"{type(e).__name__}: {str(e)[:300]}"}), flush=True)


if __name__ == "__main__":
    main()
