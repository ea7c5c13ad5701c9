"""`kinetograph eval`: generate (or read) a suite's videos, score them, write the report.

Generation is injected: `eval_command` takes `generate_fn(image_path, prompt, motion_bucket_id,
seed) -> uint8 (t, h, w, 3)`, so this module never imports the pipeline. `make_eval_cli` wraps
it as a Typer command; the top-level CLI registers it with its own generator factory:

    app.command("eval")(make_eval_cli(make_generate_fn))   # make_generate_fn(checkpoint, settings) -> fn

`settings` holds only the generation options the user set (height, width, steps, sampler,
text_guidance_scale, min/max_guidance_scale, negative_prompt, pin_first_frame, deflicker, text_tokens, camera_prompt,
camera_prior), under the pipeline's argument names; the rest are the preset's defaults.

Importing this module is cheap: OpenCV, scikit-image, matplotlib and torch load only when
`eval_command` runs, so `kinetograph --help` stays fast.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from kinetograph import __version__
from kinetograph.errors import InputError, OutputError

if TYPE_CHECKING:
    import numpy as np

    from kinetograph.eval.clip_score import ClipEmbedders
    from kinetograph.eval.fidelity import PrepareImage
    from kinetograph.eval.flow import FlowConfig
    from kinetograph.eval.motion import MotionConfig
    from kinetograph.eval.suite import Case

GenerateFn = Callable[
    [Path, str, int, int], "np.ndarray"
]  # (image_path, prompt, bucket, seed) -> video
Log = Callable[[str], None]
# What a model reads in a prompt (a camera head): {"move", "p", "sampled_prompt", "camera_prior"}, or None.
ReadPrompt = Callable[[str], "dict[str, Any] | None"]

_MEAN_KEYS = (
    "psnr",
    "ssim",
    "flicker_luminance",
    "flicker_high_frequency",
    "flicker_luminance_jitter",
    "flicker_high_frequency_jitter",
    "warping_error",
    "carry_over",
    "flow_magnitude",
)


def _metrics_dict(metrics: Any) -> dict[str, Any]:
    d = asdict(metrics)
    motion = d.pop("motion")
    d.update(
        translation=list(motion["translation"]),
        divergence=motion["divergence"],
        rotation=motion["rotation"],
        translation_speed=motion["translation_speed"],
        zoom_speed=motion["zoom_speed"],
        direction=motion["direction"].value,
    )
    return d


def _case_record(case: Case) -> dict[str, Any]:
    """The report entry of a case before it is scored."""
    return {
        "id": case.id,
        "image": case.image.id,
        "prompt_id": case.prompt.id,
        "prompt": case.prompt.text,
        "expected_motion": case.prompt.expected.value if case.prompt.expected else None,
        "motion_bucket_id": case.motion_bucket_id,
        "seed": case.seed,
        "group": case.group,
        "status": "ok",  # or "missing" / "error" (with `error`)
        "error": None,
        "video": None,
        "contact_sheet": None,
    }


def _camera_head_summary(ok: list[dict[str, Any]]) -> dict[str, int] | None:
    """Whether a miss is the camera head's or the video model's: of the cases with an expected
    motion and a head reading, how many the head read as that move and sampled with its wording
    (`read_right`), and how many of those the video then moved that way."""
    from kinetograph.eval.prompts import MOVE_CLASS

    read = [c for c in ok if c.get("camera_reading") and c["expected_motion"]]
    if not read:
        return None
    right = [c for c in read if MOVE_CLASS.get(c["camera_reading"]["move"]) == c["expected_motion"]
             and c["camera_reading"]["sampled_prompt"] != c["prompt"]]
    return {"n": len(read), "read_right": len(right), "moved_right_when_read_right": sum(c["correct"] for c in right)}


def _means(ok: list[dict[str, Any]], notes: list[str]) -> dict[str, float | None]:
    """Per-metric means over the scored cases; non-finite values (PSNR inf) are left out."""
    import numpy as np

    means = {}
    for key in _MEAN_KEYS:
        values = [c["metrics"][key] for c in ok if c["metrics"][key] is not None]
        finite = [v for v in values if np.isfinite(v)]
        if len(finite) < len(values):
            notes.append(
                f"{len(values) - len(finite)} videos have a non-finite {key} (an identical frame 0, or a camera "
                "that left frame 0 behind); "
                "the mean is over the others"
            )
        means[key] = float(np.mean(finite)) if finite else None
    return means


def _reference_videos(folder: Path) -> list[np.ndarray]:
    from kinetograph.eval.clips import VIDEO_SUFFIXES, read_video

    entries = sorted(
        p for p in folder.iterdir() if p.is_dir() or p.suffix.lower() in VIDEO_SUFFIXES
    )
    return [read_video(p) for p in entries]


def eval_command(
    checkpoint: Path | None,
    suite: Path | None,
    out: Path,
    videos: Path | None = None,
    *,
    generate_fn: GenerateFn | None = None,
    i3d_weights: Path | None = None,  # FVD: I3D state dict (piergiaj/VideoGPT layout)
    fvd_reference: Path | None = None,  # FVD: folder of real videos to compare against
    clip: ClipEmbedders | None = None,  # CLIP towers; None skips the CLIP scores
    prepare_image: PrepareImage | None = None,  # image -> output size (PSNR/SSIM); None: fit_image
    save_videos: bool = True,  # write generated videos to out/videos/<case>.mp4
    fps: int = 7,  # of the saved mp4s
    flow_cfg: FlowConfig | None = None,  # None: FlowConfig()
    motion_cfg: MotionConfig | None = None,  # None: MotionConfig()
    device: str = "cpu",  # for I3D
    generation: dict[str, Any] | None = None,  # the generation settings used, recorded in the report
    read_prompt: ReadPrompt | None = None,  # what the model read in each case's prompt, recorded
    log: Log | None = None,
) -> dict[str, Any]:
    """Score every case of a suite and write out/report.json and out/report.html.

    With `videos`, case videos are read from that folder (`<case id>.mp4|.gif|.webp|.npy|...` or
    a folder of frames `<case id>/`); missing ones are listed, not fatal. Otherwise each case is
    generated with `generate_fn`. `checkpoint` is only recorded. Returns the report dict.
    """
    import numpy as np

    from kinetograph.eval.clip_score import clip_consistency, clip_score
    from kinetograph.eval.clips import check_video, find_video, fit_image, read_video
    from kinetograph.eval.control import ControlCase, control_fidelity
    from kinetograph.eval.evaluate import evaluate_video
    from kinetograph.eval.flow import FlowConfig
    from kinetograph.eval.fvd import fvd_from_features, i3d_features, load_i3d
    from kinetograph.eval.motion import MotionConfig
    from kinetograph.eval.report import contact_sheet, save_png, write_report
    from kinetograph.eval.suite import load_suite, load_suite_image
    from kinetograph.io.video import save_video

    prepare_image = prepare_image or fit_image
    flow_cfg = flow_cfg or FlowConfig()
    motion_cfg = motion_cfg or MotionConfig()
    say = log or (lambda _msg: None)
    suite_obj = load_suite(suite)
    if videos is None and generate_fn is None:
        raise InputError(
            "nothing to evaluate: pass --videos DIR with existing videos, or --checkpoint PATH to generate them"
        )
    if videos is not None and not videos.is_dir():
        raise InputError(f"--videos {videos} is not a folder")
    notes: list[str] = []

    # Optional feature networks: fail now on a bad path, skip with a reason when not asked for.
    i3d = None
    if i3d_weights is None:
        fvd_block: dict[str, Any] = {
            "status": "skipped",
            "reason": "no I3D weights given (--i3d PATH: the FVD "
            "InceptionI3d state dict, e.g. VideoGPT's i3d_pretrained_400.pt)",
        }
    elif fvd_reference is None:
        fvd_block = {
            "status": "skipped",
            "reason": "no reference videos given (--fvd-reference DIR of real videos)",
        }
    else:
        if not fvd_reference.is_dir():
            raise InputError(f"--fvd-reference {fvd_reference} is not a folder of videos")
        i3d = load_i3d(i3d_weights, device=device)
        fvd_block = {"status": "pending"}
    if clip is None:
        clip_block: dict[str, Any] = {
            "status": "skipped",
            "reason": "no CLIP model supplied (needs the CLIP text and image towers)",
        }
    else:
        clip_block = {"status": "ok", "model": clip.name}
        if clip.text is None:
            notes.append(
                "CLIP score skipped: the CLIP model has no text tower; frame consistency only"
            )

    try:
        for sub in ("inputs", "sheets") + (("videos",) if videos is None and save_videos else ()):
            (out / sub).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the report folder {out}: {e}") from e
    image_paths, images = {}, {}
    for image in suite_obj.images:
        images[image.id] = load_suite_image(image, suite_obj.base)
        image_paths[image.id] = out / "inputs" / f"{image.id}.png"
        save_png(image_paths[image.id], images[image.id])

    cases: list[dict[str, Any]] = []
    control_cases: list[ControlCase] = []
    fake_features, clip_scores, consistencies = [], [], []
    for n, case in enumerate(suite_obj.cases, 1):
        record = _case_record(case)
        cases.append(record)
        if videos is not None:
            found = find_video(videos, case.id)
            if found is None:
                record.update(
                    status="missing", error=f"no video named {case.id}.* or {case.id}/ in {videos}"
                )
                continue
            try:
                frames = check_video(read_video(found), str(found), min_frames=2)
            except InputError as e:
                record.update(status="error", error=str(e))
                continue
            record["video"] = str(found)
        else:
            say(f"[{n}/{len(suite_obj.cases)}] generating {case.id}")
            frames = generate_fn(
                image_paths[case.image.id], case.prompt.text, case.motion_bucket_id, case.seed
            )
            check_video(frames, f"generated video for case {case.id}", min_frames=2)
            if read_prompt is not None and (reading := read_prompt(case.prompt.text)) is not None:
                record["camera_reading"] = reading
            if save_videos:
                # Metrics use the raw frames; the near-lossless crf keeps a --videos rerun close to them.
                save_video(frames, out / "videos" / f"{case.id}.mp4", fps, crf=12)
                record["video"] = f"videos/{case.id}.mp4"
        metrics = evaluate_video(
            frames,
            images[case.image.id],
            prepare=prepare_image,
            flow_cfg=flow_cfg,
            motion_cfg=motion_cfg,
        )
        measured = metrics.motion.label
        record.update(
            metrics=_metrics_dict(metrics),
            measured_motion=measured.value,
            correct=None if case.prompt.expected is None else measured == case.prompt.expected,
        )
        control_cases.append(
            ControlCase(
                case.prompt.expected,
                measured,
                case.motion_bucket_id,
                metrics.flow_magnitude,
                case.group,
                metrics.motion.direction,
            )
        )
        save_png(out / "sheets" / f"{case.id}.png", contact_sheet(frames, images[case.image.id]))
        record["contact_sheet"] = f"sheets/{case.id}.png"
        if i3d is not None:
            fake_features.append(i3d_features(i3d, [frames])[0])
        if clip is not None:
            if clip.text is not None:
                record["clip_score"] = clip_score(frames, case.prompt.text, clip)
                clip_scores.append(record["clip_score"])
            record["clip_consistency"] = clip_consistency(frames, clip)
            consistencies.append(record["clip_consistency"])
        say(f"  {case.id}: {measured.value} ({metrics.flow_magnitude:.2f} px/frame)")

    ok = [c for c in cases if c["status"] == "ok"]
    if not ok:
        raise InputError(
            f"no case could be evaluated ({len(cases)} missing or unreadable); check --videos names"
        )
    control = control_fidelity(control_cases)
    head = _camera_head_summary(ok)

    if i3d is not None:
        real = _reference_videos(fvd_reference)
        if len(real) < 2 or len(fake_features) < 2:
            fvd_block = {
                "status": "skipped",
                "reason": f"FVD needs at least 2 real and 2 generated videos "
                f"(got {len(real)} and {len(fake_features)})",
            }
        else:
            real_features = i3d_features(i3d, real)
            fvd_block = {
                "status": "ok",
                "value": fvd_from_features(real_features, np.stack(fake_features)),
                "n_real": len(real),
                "n_generated": len(fake_features),
                "weights": str(i3d_weights),
            }
            if min(len(real), len(fake_features)) < real_features.shape[1]:
                notes.append(
                    "FVD from fewer videos than feature dimensions (400) is biased and noisy; "
                    "compare only runs with the same counts"
                )
    if clip is not None:
        clip_block.update(
            mean_score=float(np.mean(clip_scores)) if clip_scores else None,
            mean_consistency=float(np.mean(consistencies)) if consistencies else None,
        )

    report: dict[str, Any] = {
        "schema": "kinetograph.eval/1",
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "kinetograph_version": __version__,
        "suite": {
            "name": suite_obj.name,
            "description": suite_obj.description,
            "path": str(suite) if suite else "default",
            "n_cases": len(suite_obj.cases),
        },
        "checkpoint": str(checkpoint) if checkpoint else None,
        "source": "videos" if videos is not None else "generated",
        "videos_dir": str(videos) if videos is not None else None,
        "settings": {"flow": asdict(flow_cfg), "motion": asdict(motion_cfg), "generation": generation or {}},
        "cases": cases,
        "summary": {
            "n_evaluated": len(ok),
            "n_missing": sum(c["status"] == "missing" for c in cases),
            "n_failed": sum(c["status"] == "error" for c in cases),
            "mean": _means(ok, notes),
            "control": {
                **asdict(control),
                "per_class": {
                    k: {"n": v.n, "correct": v.correct, "accuracy": v.accuracy}
                    for k, v in control.per_class.items()
                },
            },
            **({"camera_head": head} if head else {}),
        },
        "fvd": fvd_block,
        "clip": clip_block,
        "notes": notes,
        "plots": {},
    }
    json_path, html_path = write_report(report, out)
    say(f"wrote {json_path} and {html_path}")
    return report


def make_eval_cli(
    make_generate_fn: Callable[[Path, dict[str, Any]], GenerateFn] | None = None,
) -> Callable[..., None]:
    """The `kinetograph eval` Typer command; `make_generate_fn(checkpoint, settings)` builds the
    generator (None: only `--videos` works)."""

    def eval_cli(
        out: Annotated[Path, typer.Option("-o", "--out", help="Report folder (created).")],
        checkpoint: Annotated[
            Path | None,
            typer.Option(
                "--checkpoint", help="Model checkpoint used to generate the suite's videos; default: the shipped default model."
            ),
        ] = None,
        suite: Annotated[
            Path | None,
            typer.Option("--suite", help="Suite file (.json/.toml); default: the shipped suite."),
        ] = None,
        videos: Annotated[
            Path | None,
            typer.Option(
                "--videos", help="Score existing videos named <case id>.mp4 etc. instead."
            ),
        ] = None,
        i3d: Annotated[
            Path | None,
            typer.Option(
                "--i3d", help="I3D weights for FVD (piergiaj/VideoGPT InceptionI3d state dict)."
            ),
        ] = None,
        fvd_reference: Annotated[
            Path | None,
            typer.Option("--fvd-reference", help="Folder of real videos FVD compares against."),
        ] = None,
        clip_weights: Annotated[
            Path | None,
            typer.Option("--clip", help="OpenCLIP weights file for CLIP score / consistency (e.g. ViT-H-14)."),
        ] = None,
        allow_pickle: Annotated[
            bool, typer.Option("--allow-pickle", help="Accept a pickle --clip file (loaded weights-only).")
        ] = False,
        device: Annotated[str, typer.Option("--device", help="Device for I3D and CLIP.")] = "cpu",
        height: Annotated[
            int | None, typer.Option("--height", help="Generated height; default: the checkpoint's preset.")
        ] = None,
        width: Annotated[
            int | None, typer.Option("--width", help="Generated width; default: the checkpoint's preset.")
        ] = None,
        steps: Annotated[
            int | None, typer.Option("--steps", help="Sampler steps; default: the checkpoint's preset.")
        ] = None,
        sampler: Annotated[
            str | None, typer.Option("--sampler", help="euler, heun, dpmpp_2m or euler_ancestral; default: euler.")
        ] = None,
        text_guidance: Annotated[
            float | None,
            typer.Option("--text-guidance", help="Text guidance scale (text-conditioned models); default: the preset's."),
        ] = None,
        min_guidance: Annotated[
            float | None, typer.Option("--min-guidance", help="Image guidance of the first frame; default: the preset's.")
        ] = None,
        max_guidance: Annotated[
            float | None, typer.Option("--max-guidance", help="Image guidance of the last frame; default: the preset's.")
        ] = None,
        negative_prompt: Annotated[
            str | None, typer.Option("--negative-prompt", help="Steer every case away from this text.")
        ] = None,
        pin_first_frame: Annotated[
            bool | None,
            typer.Option("--pin-first-frame/--no-pin-first-frame",
                         help="Frame 0 is the input image itself; default: the preset's."),
        ] = None,
        deflicker: Annotated[
            bool | None,
            typer.Option("--deflicker/--no-deflicker",
                         help="Steady each frame's brightness along the clip's trend; default: the preset's."),
        ] = None,
        text_tokens: Annotated[
            bool | None,
            typer.Option("--text-tokens/--no-text-tokens",
                         help="Text models read the prompt's tokens too; default: yes."),
        ] = None,
        camera_prompt: Annotated[
            bool | None,
            typer.Option("--camera-prompt/--no-camera-prompt",
                         help="Camera-head models sample with the captions' wording of the move read; default: yes."),
        ] = None,
        camera_prior: Annotated[
            float | None,
            typer.Option("--camera-prior",
                         help="Sample from the image moved by the move the camera head reads, this fraction of the "
                              "steps down the schedule (0..1; prompts it does not read sample as usual); "
                              "default: the preset's."),
        ] = None,
    ) -> None:
        """Generate (or read) a suite's videos, measure them, write report.json and report.html."""
        clip = None
        if clip_weights is not None:
            from kinetograph.eval.clip_loader import load_clip_embedders

            clip = load_clip_embedders(clip_weights, allow_pickle=allow_pickle, device=device)
        options = dict(height=height, width=width, num_inference_steps=steps, sampler=sampler,
                       text_guidance_scale=text_guidance, min_guidance_scale=min_guidance,
                       max_guidance_scale=max_guidance, negative_prompt=negative_prompt,
                       pin_first_frame=pin_first_frame, deflicker=deflicker, text_tokens=text_tokens,
                       camera_prompt=camera_prompt, camera_prior=camera_prior)
        generation = {k: v for k, v in options.items() if v is not None}
        if videos is not None and generation:
            raise InputError(f"--videos scores existing videos; drop the generation options ({', '.join(generation)})")
        generate_fn = None
        if videos is None:
            if checkpoint is None:  # the shipped default model, as `kinetograph generate` uses
                from kinetograph import default_model

                checkpoint = default_model.default_checkpoint()  # says what to pass when none ships
            if make_generate_fn is None:
                raise InputError(
                    "this build cannot generate videos; pass --videos DIR to score existing ones"
                )
            generate_fn = make_generate_fn(checkpoint, generation)
        report = eval_command(
            checkpoint,
            suite,
            out,
            videos,
            generate_fn=generate_fn,
            i3d_weights=i3d,
            fvd_reference=fvd_reference,
            clip=clip,
            device=device,
            generation=generation,
            read_prompt=getattr(generate_fn, "read_prompt", None),
            log=lambda msg: typer.echo(msg, err=True),
        )
        summary = report["summary"]
        accuracy, direction = summary["control"]["accuracy"], summary["control"]["direction_accuracy"]
        typer.echo(
            f"{summary['n_evaluated']} videos; motion accuracy "
            f"{'-' if accuracy is None else f'{accuracy:.2f}'}"
            f"{'' if direction is None else f' (direction only {direction:.2f})'}; report: {out / 'report.html'}"
        )
        if head := summary.get("camera_head"):
            typer.echo(f"camera head: read {head['read_right']} of {head['n']} prompts as their move; "
                       f"{head['moved_right_when_read_right']} of those moved that way")

    return eval_cli
