"""Time and memory of kinetograph against diffusers' StableVideoDiffusionPipeline on identical weights.

Full-size SVD architecture, random weights written once in the official layout and converted to
the diffusers layout with our converter. Each implementation runs in its own process (so peak
RSS is its own) on the same input: per-UNet-step time (guided: cond + uncond batch), VAE decode
time, and peak RSS. Prints a table and the ratios (diffusers / ours: > 1 means we are faster).

    .venv/bin/python bench/bench_vs_diffusers.py --height 128 --width 128 --frames 8 --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_ours(args) -> dict:
    import torch

    from kinetograph.pipeline.image_to_video import ImageToVideo

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    pipe = ImageToVideo.from_checkpoint(args.original, preset="svd")
    load = time.perf_counter() - t0
    steps: list[float] = []
    last = [time.perf_counter()]

    def cb(i, n):
        now = time.perf_counter()
        steps.append(now - last[0])
        last[0] = now

    kw = dict(height=args.height, width=args.width, num_frames=args.frames, num_inference_steps=args.steps,
              decode_chunk_size=args.frames, seed=0)
    t_all = time.perf_counter()
    last[0] = t_all
    latents = pipe(args.image, output_type="latent", callback=cb, **kw)
    t1 = time.perf_counter()
    pipe.decode(latents.flatten(0, 1), args.frames, args.frames)
    decode = time.perf_counter() - t1
    return summary(load, steps, decode)


def summary(load: float, steps: list[float], decode: float) -> dict:
    """diffusers maps weights lazily and pages them in during the first step, so compare load +
    first step (which also holds CLIP and VAE encoding), then the median of the other steps."""
    return {"load+first_s": load + steps[0], "step_s": sorted(steps[1:])[len(steps[1:]) // 2], "decode_s": decode,
            "total_s": load + sum(steps) + decode, "peak_rss_gib": peak_rss_gib()}


def run_diffusers(args) -> dict:
    import torch
    from diffusers import StableVideoDiffusionPipeline
    from PIL import Image

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    pipe = StableVideoDiffusionPipeline.from_pretrained(args.diffusers)
    load = time.perf_counter() - t0
    steps: list[float] = []
    last = [0.0]

    def cb(p, i, t, kw):
        now = time.perf_counter()
        steps.append(now - last[0])
        last[0] = now
        return kw

    image = Image.open(args.image).convert("RGB").resize((args.width, args.height))
    last[0] = time.perf_counter()
    out = pipe(image, height=args.height, width=args.width, num_frames=args.frames, num_inference_steps=args.steps,
               decode_chunk_size=args.frames, generator=torch.Generator().manual_seed(0), output_type="latent",
               callback_on_step_end=cb).frames
    t1 = time.perf_counter()
    with torch.no_grad():
        pipe.decode_latents(out, args.frames, args.frames)
    decode = time.perf_counter() - t1
    return summary(load, steps, decode)


def prepare(workdir: Path) -> tuple[Path, Path]:
    """Random full-size weights in both layouts (written once, reused)."""
    import torch

    from kinetograph.io.checkpoint import convert, save_original
    from kinetograph.models.svd import SVD
    from kinetograph.presets import PRESETS

    original, folder = workdir / "svd_random.safetensors", workdir / "svd_random_diffusers"
    if not original.exists():
        torch.manual_seed(0)
        model = SVD(PRESETS["svd"].model)
        with torch.no_grad():  # default init leaves zero convs: give the network real work everywhere
            for p in model.parameters():
                if p.abs().sum() == 0:
                    p.normal_(0, 0.01)
        save_original(model, original, "svd")
        del model
    if not folder.exists():
        convert(original, folder, to="diffusers")
    return original, folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/kinetograph-bench"))
    ap.add_argument("--image", type=Path, default=Path(__file__).resolve().parents[1] / "assets" / "chelsea.jpg")
    ap.add_argument("--impl", choices=["ours", "diffusers"], help=argparse.SUPPRESS)
    ap.add_argument("--original", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--diffusers", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.impl:
        result = run_ours(args) if args.impl == "ours" else run_diffusers(args)
        print(json.dumps(result))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    original, folder = prepare(args.workdir)
    results = {}
    for impl in ("ours", "diffusers"):
        cmd = [sys.executable, __file__, "--impl", impl, "--original", str(original), "--diffusers", str(folder),
               "--height", str(args.height), "--width", str(args.width), "--frames", str(args.frames),
               "--steps", str(args.steps), "--threads", str(args.threads), "--image", str(args.image)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        results[impl] = json.loads(out)
    print(f"SVD full size, {args.height}x{args.width}, {args.frames} frames, CFG batch 2, {args.threads} threads")
    print(f"{'':14s}{'ours':>10s}{'diffusers':>11s}{'ratio':>8s}")
    for key in ("load+first_s", "step_s", "decode_s", "total_s", "peak_rss_gib"):
        a, b = results["ours"][key], results["diffusers"][key]
        print(f"{key:14s}{a:10.2f}{b:11.2f}{b / a:8.2f}")


if __name__ == "__main__":
    main()
