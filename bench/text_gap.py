"""How much does a trained text model use its caption? Loss per noise level with the true caption,
with the caption of the opposite move, and for a video that does not move at all.

    python bench/text_gap.py --config configs/text_motion/motion32.toml runs/text_motion/motion2/export/model.safetensors ...

On fixed training batches of the config's data (no conditioning dropped), each model denoises
the same noised clips at sigma 0.5, 2, 8 and 32 and we report the EDM-weighted loss (the training
loss at that sigma) for:
  - caption:  the clip's own caption;
  - opposite: the caption with its move swapped (left <-> right, in <-> out, push in <-> pull back);
  - static:   no model: every frame is the first frame's latent (a video that does not move).
A model that ignores the text has opposite == caption; the gap is what the caption buys.

With --motion the denoiser's predictions (caption and opposite) are also decoded and their camera
motion measured by optical flow, as the evaluation does: how many of them move the way their
caption says. Direction is decided at high noise, where the noisy clip no longer shows it.
"""

from __future__ import annotations

import argparse
import re

import numpy as np
import torch
from einops import rearrange

from kinetograph.diffusion.denoiser import Denoiser, VScalingEDMcNoise
from kinetograph.eval.motion import camera_motion
from kinetograph.eval.prompts import expected_motion
from kinetograph.io.checkpoint import load_checkpoint
from kinetograph.io.safetensors import load_state_dict
from kinetograph.training.config import load_config
from kinetograph.training.data import make_loader
from kinetograph.training.loop import build_model
from kinetograph.training.rng import SampleRNG
from kinetograph.training.stages import make_stage, to_uint8, unet_network

SIGMAS = (0.5, 2.0, 8.0, 32.0)
OPPOSITE = {"push in": "pull back", "pull back": "push in", "leftward": "rightward", "rightward": "leftward",
            "upward": "downward", "downward": "upward", "rises": "sinks", "sinks": "rises",
            "left": "right", "right": "left", "in": "out", "out": "in", "up": "down", "down": "up"}
OPPOSITE_MOVE = {"left": "right", "right": "left", "zoom_in": "zoom_out", "zoom_out": "zoom_in", "up": "down",
                 "down": "up"}


def opposite(caption: str) -> str | None:
    """The caption with its move swapped, checked with the same parser the evaluation uses; None
    for a caption without a move that has an opposite (static shots, content-only captions)."""
    words = "|".join(OPPOSITE)  # longest phrases first: "push in" before "in"
    text = re.sub(rf"\b({words})\b", lambda m: OPPOSITE[m.group(1)], caption)
    move, swapped = expected_motion(caption), expected_motion(text)
    if move is None or str(move) not in OPPOSITE_MOVE:
        return None
    assert swapped is not None and str(swapped) == OPPOSITE_MOVE[str(move)], (caption, text, move, swapped)
    return text


def follows_caption(model, pred: torch.Tensor, num_frames: int, captions: list[str], verbose: bool) -> list[bool]:
    """Decode each predicted clip ((b t), c, h, w) and check its measured camera motion against its caption."""
    vae = model.vae
    clips = rearrange(pred, "(b t) c h w -> b t c h w", t=num_frames)
    out = []
    for clip, caption in zip(clips, captions, strict=True):
        pixels = vae.decode(clip / vae.cfg.scale_factor, num_frames=num_frames, chunk_size=num_frames)
        motion = camera_motion(to_uint8(pixels))
        if verbose:
            print(f"    {caption[:40]:40s} -> {motion.label.value:8s} t ({motion.translation[0]:+.2f}, "
                  f"{motion.translation[1]:+.2f}) zoom {motion.zoom_speed:.2f}")
        out.append(motion.label.value == str(expected_motion(caption)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+",
                    help="exported models (model.safetensors), or training checkpoints' ema/model tensors of --config")
    ap.add_argument("--config", required=True, help="a training config: its data, size and frames")
    ap.add_argument("--batches", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--sigmas", default=",".join(str(s) for s in SIGMAS), help="comma-separated noise levels")
    ap.add_argument("--motion", action="store_true",
                    help="also decode the predictions and count those that move the way their caption says")
    ap.add_argument("--per-clip", action="store_true", help="with --motion: print each prediction's measured motion")
    ap.add_argument("--size", type=int, default=0,
                    help="frames resized to this size, whole (default: the config's size, and its crop if it has one)")
    args = ap.parse_args()
    sigmas = [float(s) for s in args.sigmas.split(",")]
    torch.set_num_threads(2)
    overrides = [f"data.batch_size={args.batch_size}", "data.cache_latents=false", "data.color_augment=false",
                 "data.paraphrase_captions=false"]  # opposite() reads the build-time captions
    if args.size:
        overrides += [f"data.height={args.size}", f"data.width={args.size}", "data.crop=0"]
    cfg = load_config(args.config, overrides=overrides)
    stage = make_stage(cfg)
    loader = iter(make_loader(cfg, cfg.data.num_frames, 0, 1, 0))
    batches = []  # clips whose caption names a move with an opposite
    while len(batches) < args.batches:
        batch = next(loader)
        keep = [i for i, c in enumerate(batch["caption"]) if opposite(c) is not None]
        if keep:
            batch = {k: v[keep] if isinstance(v, torch.Tensor) else [v[i] for i in keep] for k, v in batch.items()}
            # The config's crop, one fixed window per clip (encode(train=False) does not augment).
            batch["video"] = stage.augment(batch["video"], SampleRNG(7, batch["position"]))
            batches.append(batch)
    scalings = VScalingEDMcNoise()
    size = cfg.data.crop or cfg.data.height
    print(f"{sum(len(b['caption']) for b in batches)} clips of {cfg.data.root} at {size}x{size}; "
          "EDM-weighted loss: caption / opposite move's caption / static video")
    for path in args.checkpoints:
        tensors = load_state_dict(path)
        if any(k.startswith("unet.") for k in tensors):  # a training checkpoint of this config's run
            model, _ = build_model(cfg, stage)
            model.load_state_dict({k: v for k, v in tensors.items() if k.startswith("unet.")}, strict=False)
            model.eval()
        else:
            model = load_checkpoint(path, dtype=torch.float32).model.eval()
        den = Denoiser(unet_network(model.unet), scalings, model.cfg.anchor_scale)
        res: dict[tuple[float, str], list[float]] = {}
        with torch.no_grad():
            for bi, batch in enumerate(batches):
                true = stage.encode(model, batch, SampleRNG(123, batch["position"]), train=False)
                swapped = dict(batch, caption=[opposite(c) for c in batch["caption"]])
                wrong = stage.encode(model, swapped, SampleRNG(123, batch["position"]), train=False)
                x0, t = true.x0, true.num_frames
                first = rearrange(x0, "(b t) c h w -> b t c h w", t=t)[:, :1]
                static = first.expand(-1, t, -1, -1, -1).reshape(x0.shape)
                noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(bi))
                if args.motion:  # the measurement itself, on the clips' own latents
                    res.setdefault((0.0, "data_moves"), []).extend(follows_caption(model, x0, t, batch["caption"], False))
                for s in sigmas:
                    sigma = torch.full((x0.shape[0],), s)
                    weight = 1 / scalings(sigma)[1][0] ** 2
                    noised = x0 + s * noise
                    for name, pred in (("caption", den(noised, sigma, true.cond)),
                                       ("opposite", den(noised, sigma, wrong.cond)), ("static", static)):
                        res.setdefault((s, name), []).append(float(weight * (pred - x0).square().mean()))
                        if args.motion and name != "static":
                            captions = batch["caption"] if name == "caption" else swapped["caption"]
                            res.setdefault((s, name + "_moves"), []).extend(
                                follows_caption(model, pred, t, captions, args.per_clip))
        print(path)
        if args.motion:
            print(f"  the clips themselves (decoded latents) move as captioned: {np.mean(res[(0.0, 'data_moves')]):.0%}")
        for s in sigmas:
            c, o, st = (np.mean(res[(s, n)]) for n in ("caption", "opposite", "static"))
            line = f"  sigma {s:>4}: {c:.4f} / {o:.4f} / {st:.4f}   opposite costs {(o - c) / c:+.1%}"
            if args.motion:
                line += "   predictions moving as captioned: {:.0%} / {:.0%}".format(
                    *(np.mean(res[(s, n)]) for n in ("caption_moves", "opposite_moves")))
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
