"""The text-steering experiment: does the prompt set the camera motion of a model we train?

    python bench/text_motion.py [--out runs/text_motion] [--report docs/text_motion.json]

Steps, each skipped when its result already exists (so a rerun only evaluates):
  1. kinetograph data build --recipe text_motion -o data/text_motion
     64x64, 8-frame pans left/right and zooms in/out over 10 scikit-image photos, the move named
     in the caption ("A gentle leftward pan over lunar craters."); 320 clips.
  2. kinetograph train --stage vae      --config configs/text_motion/vae.toml
  3. kinetograph train --stage finetune --config configs/text_motion/finetune.toml
     a random mini_text UNet (MiniLM text tokens) on the clips, captions dropped 15% of the time;
     then configs/text_motion/motion.toml and motion2.toml: the same continued at higher noise.
  4. For 4 photos never seen in training x 8 prompt wordings never seen in training (2 per move)
     x seeds: generate with the prompt, measure the camera motion by optical flow
     (eval.motion.camera_motion), and count how often the measured class is the prompt's.
     The same cases with text guidance 0 (the image-only branch) are the baseline: with 4
     moves, chance is 25%.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HELD_OUT = ("astronaut", "chelsea", "coffee", "rocket")
# Wordings that none of the caption templates (data/camera_motion.py) uses.
PROMPTS = {
    "left": ("the camera drifts to the left", "a shot panning toward the left side"),
    "right": ("the camera drifts to the right", "a shot panning toward the right side"),
    "zoom_in": ("the view pushes in closer", "the camera moves closer to the subject"),
    "zoom_out": ("the lens pulls back to show more", "the camera moves back, away from the subject"),
}


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/text_motion")
    ap.add_argument("--runs", default="runs/text_motion")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--report", default="runs/text_motion/report.json")
    ap.add_argument("--checkpoint", default="", help="evaluate this checkpoint instead of training one")
    args = ap.parse_args()
    exe = str(Path(sys.executable).with_name("kinetograph"))
    t0 = time.time()
    timings = {}
    if not args.checkpoint:
        if not (ROOT / args.data / "manifest.jsonl").is_file():
            run([exe, "data", "build", "--recipe", "text_motion", "-o", args.data])
        previous = None
        for step, stage in (("vae", "vae"), ("finetune", "finetune"), ("motion", "finetune"), ("motion2", "finetune")):
            export = ROOT / args.runs / step / "export" / "model.safetensors"
            if not export.is_file():
                s = time.time()
                run([exe, "train", "--stage", stage, "--config", f"configs/text_motion/{step}.toml",
                     "--set", f'data.root="{args.data}"', "--set", f'run.out_dir="{args.runs}/{step}"',
                     *(["--set", f'model.init="{previous}"'] if previous else [])])
                timings[step] = round(time.time() - s, 1)
            previous = f"{args.runs}/{step}/export/model.safetensors"
        checkpoint = ROOT / args.runs / "motion2" / "export" / "model.safetensors"
    else:
        checkpoint = Path(args.checkpoint)

    import numpy as np

    from kinetograph.data.sources import load_photo
    from kinetograph.eval.motion import camera_motion
    from kinetograph.eval.prompts import expected_motion
    from kinetograph.pipeline.image_to_video import ImageToVideo

    pipe = ImageToVideo.from_checkpoint(checkpoint)
    rows = []
    s = time.time()
    for photo in HELD_OUT:
        image = load_photo(photo)
        for move, wordings in PROMPTS.items():
            for prompt in wordings:
                assert expected_motion(prompt) == move, (prompt, expected_motion(prompt))
                for seed in range(args.seeds):
                    for scale in (None, 0.0):  # the preset's text guidance, and the image-only baseline
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            video = pipe(image, prompt, seed=seed, text_guidance_scale=scale)
                        m = camera_motion(video.frames)
                        rows.append({"photo": photo, "prompt": prompt, "expected": move, "seed": seed,
                                     "text": scale is None, "measured": str(m.label),
                                     "translation": [round(v, 3) for v in m.translation],
                                     "zoom_speed": round(m.zoom_speed, 3)})
    eval_s = round(time.time() - s, 1)

    def accuracy(text: bool) -> float:
        sel = [r for r in rows if r["text"] == text]
        return float(np.mean([r["measured"] == r["expected"] for r in sel]))

    per_move = {
        move: float(np.mean([r["measured"] == move for r in rows if r["text"] and r["expected"] == move]))
        for move in PROMPTS
    }
    report = {
        "checkpoint": str(checkpoint),
        "cases": len(rows) // 2,
        "accuracy_with_text": accuracy(True),
        "accuracy_text_scale_0": accuracy(False),
        "chance": 1 / len(PROMPTS),
        "per_move_with_text": per_move,
        "measured_with_text": dict(Counter(r["measured"] for r in rows if r["text"])),
        "measured_text_scale_0": dict(Counter(r["measured"] for r in rows if not r["text"])),
        "train_seconds": timings,
        "eval_seconds": eval_s,
        "total_seconds": round(time.time() - t0, 1),
        "rows": rows,
    }
    out = ROOT / args.report
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"held-out photos {HELD_OUT}, {report['cases']} cases (4 moves x 2 wordings x {args.seeds} seeds per photo)")
    print(f"motion matches the prompt: {report['accuracy_with_text']:.1%} with text, "
          f"{report['accuracy_text_scale_0']:.1%} with text guidance 0, chance {report['chance']:.0%}")
    print("per move:", {k: f"{v:.0%}" for k, v in per_move.items()})
    print("report:", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
