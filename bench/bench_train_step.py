"""Time and memory of one training step of the full SVD architecture on this machine.

    python bench/bench_train_step.py [--height 128 --width 128 --frames 14 --lora-rank 16 --steps 2]

Random weights in the released architecture (preset svd: UNet 1.52 B, VAE 98 M, CLIP ViT-H 632 M
parameters), stage finetune exactly as `kinetograph train` runs it: the batch is encoded (VAE
posterior latents, noise-augmented first-frame latent, CLIP embedding, micro-conditioning),
then EDM loss, backward, AdamW and EMA on the trained parameters. Each configuration runs in its
own process so that its peak resident memory (ru_maxrss) is its own. Prints one Markdown row per
configuration (the table in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time


def one(args: argparse.Namespace) -> dict:
    import torch

    from kinetograph.models.svd import SVD
    from kinetograph.presets import PRESETS
    from kinetograph.training.config import from_dict
    from kinetograph.training.ema import EMA
    from kinetograph.training.rng import SampleRNG
    from kinetograph.training.stages import make_stage

    torch.set_num_threads(args.threads)
    cfg = from_dict({
        "stage": "finetune",
        "model": {"preset": "svd", "lora_rank": args.lora_rank, "gradient_checkpointing": args.checkpointing,
                  "first_stage_quant_conv": False},
        "data": {"num_frames": args.frames, "height": args.height, "width": args.width, "batch_size": 1},
    })
    stage = make_stage(cfg)
    with torch.device("meta"):
        model = SVD(PRESETS["svd"].model)
    model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # small random weights; a real run loads the official file instead
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.ndim > 1:
                p.normal_(0.0, 0.02, generator=g)
            elif "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()
        for name, b in model.named_buffers():
            if b.is_floating_point():
                b.zero_()
    stage.prepare(model)
    trainable = stage.trainable(model)
    model.requires_grad_(False)
    for p in trainable.values():
        p.requires_grad_(True)
    model.unet.gradient_checkpointing = args.checkpointing
    optimizer = torch.optim.AdamW(list(trainable.values()), lr=1e-5)
    ema = EMA(trainable, 0.999, True)
    loss_fn = stage.make_loss(model)
    batch = {
        "video": torch.rand(1, args.frames, 3, args.height, args.width, generator=g) * 2 - 1,
        "caption": [""],
        "fps": torch.tensor([7.0]),
        "motion_bucket": torch.tensor([127]),
    }
    times = []
    for i in range(args.steps + 1):  # the first step warms up allocators and is not counted
        t0 = time.perf_counter()
        rng = SampleRNG(0, [i])
        inputs = stage.encode(model, batch, rng)
        t1 = time.perf_counter()
        loss = stage.loss(loss_fn, model.unet, inputs, rng).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update()
        t2 = time.perf_counter()
        if i:
            times.append((t1 - t0, t2 - t1))
    encode = sum(t[0] for t in times) / len(times)
    unet = sum(t[1] for t in times) / len(times)
    return {
        "config": f"{'LoRA r' + str(args.lora_rank) if args.lora_rank else 'full'}"
                  f"{' + grad ckpt' if args.checkpointing else ''}",
        "size": f"{args.frames}x{args.height}x{args.width}",
        "trained_params": sum(p.numel() for p in trainable.values()),
        "encode_s": round(encode, 2),
        "unet_step_s": round(unet, 2),
        "step_s": round(encode + unet, 2),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "loss_finite": bool(torch.isfinite(loss)),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--frames", type=int, default=14)
    ap.add_argument("--lora-rank", type=int, default=16)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args)))
        return 0
    print(f"# {platform.machine()}, {args.threads} threads, python {platform.python_version()}")
    print("| configuration | frames x H x W | trained parameters | encode (s) | UNet fwd+bwd+AdamW+EMA (s) | step (s) | peak RSS (GiB) |")
    print("|---|---|---|---|---|---|---|")
    base = [sys.executable, __file__, "--one", "--height", str(args.height), "--width", str(args.width),
            "--frames", str(args.frames), "--steps", str(args.steps), "--threads", str(args.threads)]
    for rank, ckpt in ((args.lora_rank, True), (args.lora_rank, False)):
        cmd = base + ["--lora-rank", str(rank)] + (["--checkpointing"] if ckpt else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            print(f"| LoRA r{rank}{' + grad ckpt' if ckpt else ''} | failed: {out.stderr.strip().splitlines()[-1]} |")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        assert r["loss_finite"], r
        print(f"| {r['config']} | {r['size']} | {r['trained_params']:,} | {r['encode_s']} | {r['unet_step_s']} | "
              f"{r['step_s']} | {r['peak_rss_gib']} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
