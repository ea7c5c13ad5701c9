"""Train, ship and evaluate the default model (docs/model-card.md).

    python bench/default_model.py            # every step; each is skipped when its result exists
    python bench/default_model.py --train-only   # build and train what is not done yet; no ship, no evaluation
    python bench/default_model.py --eval-only
    python bench/default_model.py --compare A.safetensors B.safetensors
                                             # every suite on each file, the model card's numbers side by side
    python bench/default_model.py --vae runs/default_model/vae/checkpoints/step-*/model.safetensors
                                             # the autoencoder's held-out reconstruction, per file
    python bench/default_model.py --motion runs/default_model/finetune_low/export/model.safetensors
                                             # does it move as fast as its training clips? (~1 min at 64x64)
    python bench/default_model.py --probe runs/default_model/finetune/checkpoints/step-*/ema.safetensors
                                             # does the stage-3 UNet carry an unseen photo over? (~1 min each)
    python bench/default_model.py --transport FILE   # does the denoiser carry detail along a move? (~2 min)
    python bench/default_model.py --text-space  # can MiniLM's pooled vector alone tell the suite's wordings apart?
    python bench/default_model.py --training-flicker  # the finetuning clips' flicker, per move (~3 min)
    python bench/default_model.py --ship runs/NAME/export/model.safetensors
                                             # ship that export instead of the recipe's (float16, hash recorded)

Steps:
  1. kinetograph data build --recipe default_model    (1716 camera clips, 256x256 x 14 frames)
     kinetograph data build --recipe default_model_hq (the finetuning set: 260 clips, 20 scenes)
  2. kinetograph train --config configs/default_model/C.toml for C = vae, image (stage 1),
     video (stage 2), finetune_low and finetune (stage 3a at 64x64, then 128x128 windows) and
     finetune_hq (stage 3b, 256x256 on the finetuning set), each from the previous export. A run
     that stopped resumes (--resume). Then kinetograph camera-head: stage 3b's export with a
     camera head fitted on the finetuning set's captions (seconds; docs/text.md).
  3. Ship: that file (EMA weights) in float16 -> src/kinetograph/models/assets/, its
     SHA-256 written into kinetograph/default_model.py.
  4. kinetograph eval on the held-out photos with the suites default_model_text (prompt wordings
     no caption used), default_model_buckets, default_model_val (a third set of wordings, for
     choosing sampling settings) and default_model_words (a fourth: zooms described by what they
     do to the picture, tilts by where they end); the flicker of the training clips for
     comparison. Summary: docs/default_model_report.json (with times and hardware).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KG = [sys.executable, "-m", "kinetograph.cli"]
RUNS = ROOT / "runs" / "default_model"
DATA = {"default_model": ROOT / "data" / "default_model", "default_model_hq": ROOT / "data" / "default_model_hq"}
# Training runs in order: config name -> its stage.
STAGES = {"vae": "vae", "image": "image", "video": "video", "finetune_low": "finetune", "finetune": "finetune",
          "finetune_hq": "finetune"}
# Stage 3b's export with a camera head fitted on the finetuning set's captions: what ships.
LAST_EXPORT = RUNS / "camera_head" / "model.safetensors"
SUITES = ("default_model_text", "default_model_buckets", "default_model_val", "default_model_words", "default_model_words2",
          "default_model_words3", "default_model_words4")
# What --set may change: how a machine runs the recipe, not the recipe (outside a run's fingerprint).
MACHINE_KEYS = ("data.num_workers", "run.threads", "run.progress", "run.compile")
REPORT = ROOT / "docs" / "default_model_report.json"
SUITE_DIR = ROOT / "src" / "kinetograph" / "eval" / "suites"


def run(cmd: list[str]) -> float:
    print("$", " ".join(str(c) for c in cmd), flush=True)
    t0 = time.perf_counter()
    if subprocess.run([str(c) for c in cmd], cwd=ROOT).returncode:
        sys.exit("error: the step above failed (its own message is above); fix it and run again: finished stages are kept")
    return time.perf_counter() - t0


def load_times() -> dict:
    path = RUNS / "times.json"
    return json.loads(path.read_text()) if path.exists() else {}


def save_times(times: dict) -> None:
    RUNS.mkdir(parents=True, exist_ok=True)
    (RUNS / "times.json").write_text(json.dumps(times, indent=2) + "\n")


def built_before_subjects(out: Path) -> bool:
    """A dataset whose camera clips lack the subject that paraphrased captions need (built by an
    older version): the same clips are built again, with it."""
    with open(out / "manifest.jsonl") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return any(r.get("kind") == "camera" and "subject" not in r for r in rows)


# The recipe on one GPU (`--gpu`, bench/gpu_trip.py). A step of this small model costs a GPU
# about the same at 4x the batch (kernel launches, not arithmetic, bound it), so the stages that
# train long take 4x the batch for a quarter of the steps: the same samples, with the learning
# rate x2 (square-root scaling for Adam) and the EMA decay ^4 (the same horizon in samples). The
# autoencoder and stage 1 are short and stay as they are. All in float32, as on a CPU. A
# checkpoint every eighth of a stage: a call stopped by its time limit loses little on resume.
GPU_BATCH = 4
GPU_SCALED = ("video", "finetune_low", "finetune", "finetune_hq")


def gpu_variant(name: str) -> list[str]:
    """--set overrides that turn stage `name` of the recipe into its GPU variant."""
    from kinetograph.training.config import load_config

    # Without the latent cache: a GPU encodes a batch at once in ~7 ms, and hashing each clip on
    # the host took 80 ms of a 0.35 s step (bench/train_step.py on an H200).
    out = ["run.precision=\"fp32\"", "data.cache_latents=false"]
    if name not in GPU_SCALED:
        return out
    cfg = load_config(ROOT / "configs" / "default_model" / f"{name}.toml")
    k = GPU_BATCH
    return out + [f"data.batch_size={cfg.data.batch_size * k}", f"run.max_steps={cfg.run.max_steps // k}",
                  f"run.ckpt_every={max(1, cfg.run.max_steps // k // 8)}", f"optim.lr={cfg.optim.lr * math.sqrt(k):g}",
                  f"ema.decay={round(cfg.ema.decay ** k, 6)}"]


def train(overrides: list[str] = (), gpu: bool = False, compile_long: bool = False) -> None:
    """Data builds and stages not done yet; their times are read back by recorded_seconds.
    `overrides` go to every stage as --set KEY=VALUE: keys of the machine, not of the recipe
    (data.num_workers, run.threads: config.py leaves them out of a run's fingerprint).
    `gpu`: the recipe's GPU variant (`gpu_variant`). `compile_long`: run.compile in the four long
    stages (the short ones would spend longer compiling than training)."""
    for recipe, out in DATA.items():
        if not (out / "dataset.json").exists() or built_before_subjects(out):
            # The same bytes with any number of workers (data/build.py).
            run(KG + ["data", "build", "--recipe", recipe, "-o", out, "--workers", max(2, min(16, os.cpu_count() or 2))])
    exported = [i for i, name in enumerate(STAGES) if (RUNS / name / "export" / "model.safetensors").exists()]
    # The stages up to the last exported one are done, also those whose own export is elsewhere
    # (bench/gpu_trip.py brings back only the last stages' exports).
    for name, stage in list(STAGES.items())[max(exported, default=-1) + 1:]:
        resume = ["--resume"] if (RUNS / name / "checkpoints").is_dir() and any((RUNS / name / "checkpoints").iterdir()) else []
        keys = [*overrides, *(gpu_variant(name) if gpu else []), *(["run.compile=true"] if compile_long and name in GPU_SCALED else [])]
        sets = [a for key in keys for a in ("--set", key)]
        run(KG + ["train", "--stage", stage, "--config", ROOT / "configs" / "default_model" / f"{name}.toml",
                  *resume, *sets])
    if not LAST_EXPORT.exists():
        run(KG + ["camera-head", RUNS / "finetune_hq" / "export" / "model.safetensors",
                  "--data", DATA["default_model_hq"], "-o", LAST_EXPORT])


def ship(src: Path = LAST_EXPORT, force: bool = False) -> bool:
    """float16 copy of `src` (by default stage 3b's export with its camera head) into the package, its SHA-256 recorded;
    False when the shipped file is newer than `src` (unless `force`)."""
    from kinetograph import default_model

    if not src.is_file():
        sys.exit(f"error: {src} does not exist; train it first, or pass an export with --ship FILE")
    if not force and default_model.PATH.is_file() and default_model.PATH.stat().st_mtime >= src.stat().st_mtime:
        return False
    with tempfile.TemporaryDirectory(dir=default_model.PATH.parent) as tmp:
        staged = Path(tmp) / default_model.PATH.name
        run(KG + ["convert", src, staged, "--to", "original", "--dtype", "float16"])
        os.replace(staged, default_model.PATH)
    digest = default_model.sha256(default_model.PATH)
    module = Path(default_model.__file__)
    text = re.sub(r'SHA256 = "[0-9a-f]*"', f'SHA256 = "{digest}"', module.read_text())
    module.write_text(text)
    print(f"shipped {default_model.PATH} ({default_model.PATH.stat().st_size / 1e6:.1f} MB), sha256 {digest}")
    return True


def evaluate(times: dict) -> dict:
    from kinetograph import default_model

    results = {}
    for suite in SUITES:
        out = RUNS / f"eval_{suite}"
        suite_file = SUITE_DIR / f"{suite}.json"
        if not (out / "report.json").exists():
            times[f"eval:{suite}"] = round(
                run(KG + ["eval", "--checkpoint", default_model.PATH, "--suite", suite_file, "-o", out]), 1
            )
            save_times(times)
        results[suite] = json.loads((out / "report.json").read_text())
    return results


def suite_numbers(name: str, report: dict) -> dict:
    """The numbers the model card's tables quote from one suite's report.json."""
    summary, control = report["summary"], report["summary"]["control"]
    out = {"correct": sum(c["correct"] for c in control["per_class"].values()), "scored": control["n_scored"],
           "per_class": {k: f"{v['correct']}/{v['n']}" for k, v in control["per_class"].items()},
           "frame0_psnr": round(summary["mean"]["psnr"], 2), "flicker": round(summary["mean"]["flicker_luminance"], 2)}
    if "flicker_luminance_jitter" in summary["mean"]:  # brightness jitter around the local trend
        out["flicker_jitter"] = round(summary["mean"]["flicker_luminance_jitter"], 2)
    moving = [c["metrics"]["carry_over"] for c in report["cases"]  # NaN: the camera left frame 0 behind
              if c.get("metrics") and c["expected_motion"] != "static" and not math.isnan(c["metrics"]["carry_over"])]
    out["carry_over_moving_median"] = round(statistics.median(moving), 1) if moving else None
    if name == "default_model_buckets":
        out["spearman_within"] = control.get("spearman_within")
        out["spearman_pooled"] = None if control.get("spearman") is None else round(control["spearman"], 2)
    return out


def compare(files: list[Path], out_root: Path = ROOT / "runs" / "compare", jobs: int = 2,
            camera_prior: float | None = None) -> dict:
    """Every suite on each model file (`jobs` evaluations at a time, one thread each: the 2-core
    machine's fastest), reports kept under out_root/<file>-<sha>[-prior<strength>]/<suite>, and a
    table of the numbers the model card quotes. A report already there is reused, so a stopped
    comparison goes on where it was. `camera_prior`: each evaluation's --camera-prior (default:
    the preset's)."""
    from kinetograph import default_model

    if missing := [str(p) for p in files if not p.is_file()]:
        sys.exit(f"error: no model file at {', '.join(missing)}; give exported .safetensors files to compare")
    todo, folders = [], {}
    for path in files:
        prior = [] if camera_prior is None else [f"prior{camera_prior:g}"]
        folder = out_root / "-".join([*path.resolve().parts[-3:-1], path.stem, default_model.sha256(path)[:8], *prior])
        folders[path] = folder
        for suite in SUITES:
            if not (folder / suite / "report.json").exists():
                suite_file = SUITE_DIR / f"{suite}.json"
                todo.append(KG + ["eval", "--checkpoint", str(path), "--suite", str(suite_file), "-o", str(folder / suite),
                                  *([] if camera_prior is None else ["--camera-prior", str(camera_prior)])])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs: list[subprocess.Popen] = []
    for cmd in todo:
        while sum(p.poll() is None for p in procs) >= jobs:
            time.sleep(1)
        print("$", " ".join(cmd), flush=True)
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL))
    if any(p.wait() for p in procs):
        sys.exit("error: an evaluation failed; run its command above to see why")
    table = {}
    for path, folder in folders.items():
        table[str(path)] = {suite: suite_numbers(suite, json.loads((folder / suite / "report.json").read_text()))
                            for suite in SUITES}
    return table


def training_flicker() -> dict:
    """Flicker, brightness jitter and warping error of the finetuning clips, all of them, overall
    and per camera move: the steadiness the model saw (a zoom's brightness changes as new content
    comes in; a still camera's does not)."""
    import numpy as np

    from kinetograph.data.datasets import ClipDataset, SampleConfig
    from kinetograph.eval.evaluate import evaluate_video

    ds = ClipDataset(DATA["default_model_hq"], SampleConfig(num_frames=14, fps=8.0, height=256, width=256, kinds=("camera",)))
    rows: dict[str, list] = {}
    for i in range(len(ds)):
        item = ds[i]
        video = ((item["video"].permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
        m = evaluate_video(video)
        move = ds.rows[i]["move"]["kind"]
        rows.setdefault(move, []).append((m.flicker_luminance, m.flicker_luminance_jitter, m.warping_error))

    def means(values: list) -> dict:
        a = np.array(values, dtype=np.float64)
        return {"clips": len(a), "flicker_luminance": a[:, 0].mean(), "flicker_luminance_jitter": a[:, 1].mean(),
                "warping_error": a[:, 2].mean()}

    return means([r for v in rows.values() for r in v]) | {"per_move": {k: means(v) for k, v in sorted(rows.items())}}


HELD_OUT = ("astronaut", "chelsea", "coffee", "rocket")


def heldout_reconstruction(path: Path) -> dict:
    """Encode + decode (posterior mode, one frame) of the held-out photos at 256x256 by the VAE
    of a model file or of a training checkpoint (its `vae.*` tensors): PSNR in dB, and the share
    of the photos' colour (mean |pixel - its grey|) that survives, the first thing a small
    autoencoder trained with L1 gets wrong."""
    import numpy as np
    import torch
    from skimage import data as skdata

    from kinetograph.eval.fidelity import psnr
    from kinetograph.io.checkpoint import load_checkpoint
    from kinetograph.io.safetensors import load_state_dict
    from kinetograph.models.svd import SVD
    from kinetograph.pipeline.preprocess import image_to_tensor, load_image, resize_and_crop
    from kinetograph.presets import PRESETS

    tensors = load_state_dict(path)
    if any(k.startswith("vae.") for k in tensors):  # a training checkpoint
        vae = SVD(PRESETS["mini256"].model).vae
        vae.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("vae.")})
    else:
        vae = load_checkpoint(path, dtype=torch.float32).model.vae
    vae.eval()
    out = {}
    for name in HELD_OUT:
        image = resize_and_crop(load_image(getattr(skdata, name)()), 256, 256)  # as the eval suites
        photo, x = np.asarray(image), image_to_tensor(image)
        with torch.no_grad():
            y = vae.decode(vae.encode(x), num_frames=1).clamp(-1, 1)
        recon = ((y[0] + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        colour = lambda a: np.abs(a.astype(np.float64) - a.mean(axis=2, keepdims=True)).mean()
        out[name] = {"psnr": round(psnr(photo, recon), 2), "colour_kept": round(colour(recon) / colour(photo), 3)}
    out["mean_psnr"] = round(float(np.mean([out[n]["psnr"] for n in HELD_OUT])), 2)
    out["mean_colour_kept"] = round(float(np.mean([out[n]["colour_kept"] for n in HELD_OUT])), 3)
    return out


def conditioning_probe(weights: Path, config: Path, size: int = 128) -> dict:
    """A one-minute read of whether a stage-3 UNet generalises, long before it makes good videos.

    The denoiser's error at noise levels 2, 8 and 0.5, relative to the latents' variance, on:
    - `unseen`: each held-out photo as a clip that does not move ("A still shot of the scene.",
      the preset's default bucket, as still clips are trained). Copying the conditioning frame's
      latent is almost exact here (`copy`), so a model that carries the frame over scores near
      0; one that recalls training scenes does not.
    - `training`: one batch of training clips (own captions); recall works there.
    `weights`: a training checkpoint's ema/model tensors (`unet.*`) or an exported model file;
    `config`: the stage-3 config whose `model.init` they fit."""
    import torch

    from kinetograph.diffusion.denoiser import Denoiser, VScalingEDMcNoise
    from kinetograph.io.checkpoint import load_checkpoint
    from kinetograph.io.safetensors import load_state_dict
    from kinetograph.pipeline.preprocess import image_to_tensor, load_image, resize_and_crop
    from kinetograph.presets import PRESETS
    from kinetograph.training import config as config_io
    from kinetograph.training.data import make_loader
    from kinetograph.training.loop import build_model
    from kinetograph.training.rng import SampleRNG
    from kinetograph.training.stages import make_stage, unet_network
    from skimage import data as skdata

    cfg = config_io.load_config(config)
    cfg = config_io.with_overrides(cfg, data={"crop": 0, "color_augment": False, "height": size, "width": size,
                                              "cache_latents": False})
    stage = make_stage(cfg)
    model, stage.preset_name = build_model(cfg, stage)
    tensors = load_state_dict(weights)
    if not any(k.startswith("unet.") for k in tensors):  # an exported model file
        tensors = {f"unet.{k}": v for k, v in load_checkpoint(weights).model.unet.state_dict().items()}
    model.load_state_dict({k: v for k, v in tensors.items() if k.startswith("unet.")}, strict=False)
    model.eval()
    t = cfg.data.num_frames
    batch = next(iter(make_loader(cfg, t, 0, 1, 0)))
    photos = torch.stack([image_to_tensor(resize_and_crop(load_image(getattr(skdata, n)()), size, size))[0]
                          for n in HELD_OUT])
    n = len(HELD_OUT)
    bucket = float(PRESETS[stage.preset_name].sampling.motion_bucket_id)
    still = {"video": photos[:, None].expand(-1, t, -1, -1, -1).clone(), "fps": torch.full((n,), cfg.data.fps),
             "motion_bucket": torch.full((n,), bucket), "caption": ["A still shot of the scene."] * n}
    den = Denoiser(unet_network(model.unet), VScalingEDMcNoise(), model.cfg.anchor_scale)
    out = {}
    with torch.no_grad(), stage.forward_context(model.unet):
        for name, b in (("unseen", still), ("training", batch)):
            n = len(b["fps"])
            inputs = stage.encode(model, b, SampleRNG(0, list(range(n)), torch.device("cpu")), train=False)
            x0, var = inputs.x0, inputs.x0.var()
            row = {}
            if name == "unseen":
                copy = inputs.cond.concat * model.vae.cfg.scale_factor
                row["copy"] = round(float((copy - x0).square().mean() / var), 4)
            g = torch.Generator().manual_seed(0)
            for sigma in (2.0, 8.0, 0.5):  # 0.5 last: the first two draw the noise they always drew
                noise = torch.randn(x0.shape, generator=g)
                d = den(x0 + sigma * noise, torch.full((x0.shape[0],), sigma), inputs.cond)
                row[f"sigma_{sigma:g}"] = round(float((d - x0).square().mean() / var), 4)
            out[name] = row
    return out


def motion_probe(weights: Path, size: int = 64, steps: int = 12) -> dict:
    """How fast and which way a model moves, against the clips it was trained on.

    For two training photos and two held-out ones, each camera move at each speed class, prompted
    with a training caption (`camera_motion.caption_for`, so wording is not what is measured): the
    measured class, and the measured speed (translation, or zoom flow) over that of the same move
    rendered at the class's mid speed, as the training clips are. Sample-based text accuracy with
    unseen wordings is the suite's job; this says whether the model moves at the speed it was shown.
    """
    import numpy as np
    import torch
    from skimage import data as skdata

    from kinetograph.data import camera_motion as cm
    from kinetograph.data.build import RECIPES
    from kinetograph.eval.motion import camera_motion
    from kinetograph.eval.prompts import MOVE_CLASS
    from kinetograph.pipeline.image_to_video import ImageToVideo
    from kinetograph.pipeline.preprocess import load_image, resize_and_crop

    recipe = RECIPES["default_model"].camera
    render_cfg = cm.CameraMotionConfig(height=size, width=size, num_frames=recipe.num_frames, fps=recipe.fps,
                                       speeds=recipe.speeds)
    expected = {kind: label for kind, label in MOVE_CLASS.items() if kind != "static"}
    def speed(m, kind: str) -> float:
        return m.zoom_speed if kind.startswith("zoom") else m.translation_speed

    pipe = ImageToVideo.from_checkpoint(weights, dtype=torch.float32)
    out: dict = {}
    for group, names in (("training", ("camera", "coins")), ("held_out", ("chelsea", "coffee"))):
        correct, ratios = 0, {c: [] for c in recipe.speeds}
        for name in names:
            photo = resize_and_crop(load_image(getattr(skdata, name)()), size, size)
            for kind, label in expected.items():
                for speed_class, (lo, hi) in recipe.speeds.items():
                    caption = cm.caption_for(kind, speed_class, "the scene", np.random.default_rng(0))
                    video = pipe(photo, caption, height=size, width=size, num_inference_steps=steps, seed=0)
                    true = cm.render(np.asarray(photo), cm.CameraMove(kind, (lo + hi) / 2), render_cfg,
                                     np.random.default_rng(0))
                    got, ref = camera_motion(video.frames), camera_motion(true)
                    correct += got.label.value == label
                    ratios[speed_class].append(speed(got, kind) / speed(ref, kind))
        n = len(names) * len(expected) * len(recipe.speeds)
        out[group] = {"accuracy": round(correct / n, 3),
                      **{f"speed_ratio_{c}": round(float(np.median(r)), 3) for c, r in ratios.items()}}
    return out


def transport_probe(weights: Path, size: int = 256, speed: float = 11.3, photos: tuple[str, ...] = HELD_OUT) -> dict:
    """Can the denoiser carry the photo's detail along a move it knows? (the smear's cause)

    Each held-out photo rendered as a pan left and a zoom in at `speed` (% of the width a second;
    11.3 is bucket 144, next to the preset's default 145) with the captions' wording, noised at
    sigma 1 and 0.3, denoised in one step with the photo, caption and the preset's bucket, decoded: PSNR against the
    rendered frames 1, 6 and 13 (median over photos), next to the autoencoder's own round trip.
    Frame 1 has moved half a latent pixel, frame 13 six at 256x256: a denoiser that copies detail
    from where it was in the photo keeps frame 13 near frame 1; one that cannot reach that far
    blurs it. Sampling repeats this at every step, so a drop here is a smear in the video."""
    import numpy as np
    import torch
    from skimage import data as skdata

    from kinetograph.data import camera_motion as cm
    from kinetograph.data.build import RECIPES
    from kinetograph.eval.fidelity import psnr
    from kinetograph.pipeline.image_to_video import ImageToVideo
    from kinetograph.pipeline.preprocess import load_image, resize_and_crop

    recipe = RECIPES["default_model"].camera
    render_cfg = cm.CameraMotionConfig(height=size, width=size, num_frames=recipe.num_frames, fps=recipe.fps)
    pipe = ImageToVideo.from_checkpoint(weights, dtype=torch.float32)
    sf, t, defaults = pipe.model.vae.cfg.scale_factor, recipe.num_frames, pipe.preset.sampling
    frames = (1, t // 2 - 1, t - 1)

    rows: dict = {}
    with torch.no_grad():
        for kind in ("pan_left", "zoom_in"):
            got: dict = {}
            for name in photos:
                photo = np.asarray(resize_and_crop(load_image(getattr(skdata, name)()), size, size))
                clip = cm.render(photo, cm.CameraMove(kind, speed), render_cfg, np.random.default_rng(0))
                pixels = torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 127.5 - 1  # (t, 3, h, w)
                x0 = pipe.model.vae.encode(pixels) * sf
                g = torch.Generator().manual_seed(0)
                cond = pipe.encode_condition(pixels[:1], t, recipe.fps - 1, defaults.motion_bucket_id,
                                             defaults.noise_aug_strength, g)
                cond = pipe.add_text(cond, cm.caption_for(kind, "fast", "the scene", np.random.default_rng(0)))
                outs = {"autoencoder": pipe.decode(x0, t, t)}
                for sigma in (1.0, 0.3):
                    d = pipe.denoiser(x0 + sigma * torch.randn(x0.shape, generator=g), torch.tensor(sigma), cond)
                    outs[f"sigma_{sigma:g}"] = pipe.decode(d, t, t)
                for key, video in outs.items():
                    for f in frames:
                        got.setdefault(f"{key}_frame_{f}", []).append(psnr(video[f], clip[f]))
            rows[kind] = {k: round(float(np.median(v)), 1) for k, v in got.items()}
    return rows


def text_space_probe(per_class: int = 60,
                     suites: tuple[str, ...] = ("default_model_text", "default_model_val", "default_model_words")) -> dict:
    """How far the text encoder alone separates each suite's wordings: each wording labelled by
    its nearest training paraphrase (cosine, MiniLM's mean-pooled vector) and by the nearest
    class mean over `per_class` paraphrases per move. A ceiling on what a model that reads only
    that vector could do with these wordings, not a model score."""
    import numpy as np
    import torch

    from kinetograph.data import camera_motion as cm
    from kinetograph.eval.prompts import MOVE_CLASS
    from kinetograph.models.text import minilm_text_encoder

    rng = np.random.default_rng(0)
    train = [(cm.paraphrase(kind, speed, "the scene", rng), name) for kind, name in MOVE_CLASS.items()
             for speed in (("static",) if kind == "static" else ("slow", "fast")) for _ in range(per_class)]
    enc = minilm_text_encoder()
    with torch.no_grad():
        t = torch.nn.functional.normalize(enc.encode([s for s, _ in train]).pooled, dim=-1)
    classes = sorted(set(MOVE_CLASS.values()))
    member = torch.tensor([[name == c for _, name in train] for c in classes], dtype=t.dtype)  # (classes, paraphrases)
    out = {}
    for name in suites:
        suite = json.loads((SUITE_DIR / f"{name}.json").read_text())
        prompts = [(p["text"], p["expected"]) for p in suite["prompts"]]
        with torch.no_grad():
            q = torch.nn.functional.normalize(enc.encode([s for s, _ in prompts]).pooled, dim=-1)
        sim = q @ t.T  # (wordings, paraphrases)
        class_sim = sim @ member.T / member.sum(1)  # mean similarity to each class's paraphrases
        nearest = [train[i][1] for i in sim.argmax(1).tolist()]
        by_mean = [classes[i] for i in class_sim.argmax(1).tolist()]
        expected = [e for _, e in prompts]
        out[name] = {"wordings": len(prompts),
                     "nearest_paraphrase": round(sum(a == e for a, e in zip(nearest, expected)) / len(prompts), 3),
                     "nearest_class_mean": round(sum(a == e for a, e in zip(by_mean, expected)) / len(prompts), 3),
                     "misses": {text: near for (text, e), near in zip(prompts, nearest) if near != e}}
    return out


def stage_seconds(rows: list[dict]) -> float:
    """Training wall time from a run's logged steps: first to last step of each stretch the
    process ran. A resumed run starts again from its checkpoint's step, so a step that does not
    exceed the one before opens a new stretch, and the hours between sessions are not counted."""
    steps = [(r["step"], r["time"]) for r in rows if "time" in r and "loss" in r]
    total, start, prev_step, prev_time = 0.0, None, None, None
    for step, t in steps:
        if prev_step is not None and step <= prev_step:  # resumed: close the stretch
            total += prev_time - start
            start = None
        if start is None:
            start = t
        prev_step, prev_time = step, t
    return total + (prev_time - start if start is not None else 0.0)


def recorded_seconds() -> dict:
    """Wall time of each data build (dataset.json) and training stage (`stage_seconds`) recorded
    on this machine; those without a record are left out."""
    out = {}
    for recipe, folder in DATA.items():
        if (folder / "dataset.json").is_file():
            out[f"data:{recipe}"] = json.loads((folder / "dataset.json").read_text())["seconds"]
    for stage in STAGES:
        if (RUNS / stage / "metrics.jsonl").is_file():
            rows = [json.loads(line) for line in (RUNS / stage / "metrics.jsonl").read_text().splitlines()]
            out[f"train:{stage}"] = round(stage_seconds(rows), 1)
    return out


def report_seconds(seconds: dict) -> dict:
    """The recorded seconds a report of the shipped file quotes: the training stages' only when
    every stage ran here; a run still in progress did not make the shipped file."""
    if all(f"train:{s}" in seconds for s in STAGES):
        return seconds
    return {k: v for k, v in seconds.items() if not k.startswith("train:")}


def summarize(results: dict, times: dict, digest: str) -> dict:
    import torch

    from kinetograph import default_model

    text = results["default_model_text"]
    buckets = results["default_model_buckets"]
    seconds = report_seconds(recorded_seconds())
    return {
        "model": default_model.NAME,
        "file": str(default_model.PATH.relative_to(ROOT)),
        "bytes": default_model.PATH.stat().st_size,
        "sha256": digest,
        "hardware": {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count(),
                     "torch": torch.__version__, "device": "cpu"},
        "seconds": {**times, **seconds},
        # A total only for a run of every stage here; else the file came from elsewhere (its
        # lineage: docs/model-card.md).
        "training_seconds": round(sum(seconds.values()), 1) if all(f"train:{s}" in seconds for s in STAGES) else None,
        "generation": text["settings"].get("generation", {}),  # what the suites were sampled with beyond the preset
        "text_control": text["summary"]["control"],
        "text_means": text["summary"]["mean"],
        "bucket_control": buckets["summary"]["control"],
        "bucket_means": buckets["summary"]["mean"],
        "validation_control": results["default_model_val"]["summary"]["control"],
        "words_control": results["default_model_words"]["summary"]["control"],
        "words2_control": results["default_model_words2"]["summary"]["control"],
        "words3_control": results["default_model_words3"]["summary"]["control"],
        "words4_control": results["default_model_words4"]["summary"]["control"],
        "training_clips": training_flicker(),
        "autoencoder_heldout_256": heldout_reconstruction(default_model.PATH),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval-only", action="store_true", help="evaluate the shipped model only")
    ap.add_argument("--train-only", action="store_true",
                    help="build the data and train the stages not done yet, then stop: no ship, no evaluation "
                         "(a reproduction run, compared with the shipped file before it replaces it)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="with training: a machine setting for every stage, e.g. --set data.num_workers=8 "
                         "(only keys outside a run's fingerprint: data.num_workers, run.threads, run.progress, run.compile)")
    ap.add_argument("--gpu", action="store_true",
                    help="with training: the recipe's GPU variant (4x the batch for a quarter of the steps in the "
                         "long stages; bench/gpu_trip.py runs it on a lent GPU)")
    ap.add_argument("--compile", action="store_true",
                    help="with training: torch.compile the four long stages' UNet (run.compile; for a GPU)")
    ap.add_argument("--vae", nargs="+", type=Path, metavar="FILE",
                    help="only print the held-out reconstruction of these models' or checkpoints' autoencoders")
    ap.add_argument("--probe", nargs="+", type=Path, metavar="FILE",
                    help="only print conditioning_probe of these stage-3 checkpoints' UNets")
    ap.add_argument("--motion", nargs="+", type=Path, metavar="FILE",
                    help="only print motion_probe of these model files (speed against the training clips')")
    ap.add_argument("--motion-size", type=int, default=64, help="frame size of the motion probe (default 64)")
    ap.add_argument("--transport", nargs="+", type=Path, metavar="FILE",
                    help="only print transport_probe of these model files (detail carried along a move)")
    ap.add_argument("--training-flicker", action="store_true",
                    help="only print the finetuning clips' flicker and brightness jitter, overall and per move")
    ap.add_argument("--text-space", action="store_true",
                    help="only print how far MiniLM's pooled vector alone separates the suite's wordings")
    ap.add_argument("--compare", nargs="+", type=Path, metavar="FILE",
                    help="only evaluate these model files on every suite and print the model card's numbers side by side")
    ap.add_argument("--camera-prior", type=float, default=None, metavar="STRENGTH",
                    help="with --compare: evaluate with this camera prior (0 = off; default: the preset's)")
    ap.add_argument("--ship", type=Path, metavar="FILE",
                    help="only ship this model file (float16 into the package, hash recorded) instead of the last stage's")
    ap.add_argument("--probe-config", type=Path, default=ROOT / "configs" / "default_model" / "finetune.toml")
    ap.add_argument("--probe-size", type=int, default=128, help="frame size of the probe (default 128)")
    args = ap.parse_args()
    if args.probe:
        for path in args.probe:
            print(path, json.dumps(conditioning_probe(path, args.probe_config, args.probe_size)), flush=True)
        return
    if args.motion:
        for path in args.motion:
            print(path, json.dumps(motion_probe(path, args.motion_size)), flush=True)
        return
    if args.transport:
        for path in args.transport:
            print(path, json.dumps(transport_probe(path)), flush=True)
        return
    if args.training_flicker:
        print(json.dumps(training_flicker(), indent=1, default=float))
        return
    if args.text_space:
        print(json.dumps(text_space_probe()))
        return
    if args.compare:
        print(json.dumps(compare(args.compare, camera_prior=args.camera_prior), indent=1))
        return
    if args.ship:
        ship(args.ship, force=True)
        return
    if args.vae:
        for path in args.vae:
            print(path, json.dumps(heldout_reconstruction(path)), flush=True)
        return
    from kinetograph import default_model

    times = load_times()  # of the evaluations; data and training times come from their own logs
    if bad := [o for o in args.overrides if o.split("=")[0] not in MACHINE_KEYS]:
        sys.exit(f"error: --set {bad[0]}: only machine settings may change ({', '.join(MACHINE_KEYS)}); "
                 "the recipe itself lives in configs/default_model/")
    if args.train_only:
        train(args.overrides, args.gpu, args.compile)
        print(json.dumps({"training_seconds": recorded_seconds()}, indent=2))
        return
    if not args.eval_only:
        train(args.overrides, args.gpu, args.compile)
        if ship():
            for suite in SUITES:  # a new model invalidates old evaluations
                (RUNS / f"eval_{suite}" / "report.json").unlink(missing_ok=True)
    digest = default_model.sha256(default_model.PATH)
    results = evaluate(times)
    summary = summarize(results, times, digest)
    REPORT.write_text(json.dumps(summary, indent=2, default=float) + "\n")
    print(json.dumps({k: summary[k] for k in ("training_seconds", "text_control", "bucket_control")}, indent=2, default=float))


if __name__ == "__main__":
    main()
