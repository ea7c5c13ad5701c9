"""The `kinetograph` command line: generate, convert, inspect.

Users see one-line errors, never a traceback: exit 2 for bad input or arguments, 1 for failures
at run time (set KINETOGRAPH_DEBUG=1 to see the traceback of an unexpected error).
"""

from __future__ import annotations

import functools
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Annotated

import typer

from kinetograph.errors import InputError, KinetographError

app = typer.Typer(
    name="kinetograph",
    help="Image (+ text) to video with Stable Video Diffusion.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16"}


def _dtype(name: str):
    import torch

    if name not in DTYPES:
        raise InputError(f"unknown --dtype {name!r}; choose float32, bfloat16 or float16")
    return getattr(torch, DTYPES[name])


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {name}: no CUDA device is available here; use --device cpu")
    return name


@app.command()
def generate(
    image: Annotated[Path, typer.Argument(help="Input image (any common format).")],
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="Text prompt (text-conditioned checkpoints).")] = None,
    negative_prompt: Annotated[
        str | None, typer.Option("--negative-prompt", help="What the video should not show (steered away from).")
    ] = None,
    text_guidance: Annotated[
        float | None,
        typer.Option(
            "--text-guidance",
            help="Text models: scale of the text guidance term (0 = image only; preset default 4). "
            "Official weights with --text-encoder: CLIP-space steering strength (default 0.3).",
        ),
    ] = None,
    text_encoder: Annotated[
        Path | None,
        typer.Option(
            "--text-encoder",
            help="Official weights: OpenCLIP ViT-H-14 text weights file, to steer with the prompt. "
            "Text models: the encoder they name by default; or a transformers folder.",
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint", "-c",
            help="Official .safetensors file or diffusers folder; default: the shipped default model kinetograph-mini256 (docs/model-card.md).",
        ),
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help=".mp4, .gif, .webp, or a folder for PNG frames.")] = Path(
        "outputs/video.mp4"
    ),
    frames: Annotated[int | None, typer.Option("--frames", help="Number of frames (preset default: 14 or 25).")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Sampling steps.")] = None,
    height: Annotated[int | None, typer.Option("--height", help="Output height, a multiple of 64.")] = None,
    width: Annotated[int | None, typer.Option("--width", help="Output width, a multiple of 64.")] = None,
    fps: Annotated[int | None, typer.Option("--fps", help="Frame rate; conditions the model (fps_id = fps - 1).")] = None,
    motion_bucket_id: Annotated[int | None, typer.Option("--motion-bucket-id", help="Amount of motion, 0..255.")] = None,
    noise_aug: Annotated[float | None, typer.Option("--noise-aug", help="Noise augmentation of the input frame.")] = None,
    min_guidance: Annotated[float | None, typer.Option("--min-guidance", help="Guidance scale of the first frame.")] = None,
    max_guidance: Annotated[float | None, typer.Option("--max-guidance", help="Guidance scale of the last frame.")] = None,
    guidance_ramp: Annotated[str, typer.Option("--guidance-ramp", help="linear or triangle.")] = "linear",
    pin_first_frame: Annotated[
        bool | None,
        typer.Option("--pin-first-frame/--no-pin-first-frame",
                     help="Frame 0 is the input image itself (default: the preset's; SVD's: off)."),
    ] = None,
    deflicker: Annotated[
        bool | None,
        typer.Option("--deflicker/--no-deflicker",
                     help="Steady each frame's brightness along the clip's trend, frame 0 kept "
                          "(default: the preset's; the default model's: on; SVD's: off)."),
    ] = None,
    text_tokens: Annotated[
        bool | None,
        typer.Option("--text-tokens/--no-text-tokens",
                     help="Text models: read the prompt's tokens too, not only its pooled vector (default: yes)."),
    ] = None,
    camera_prompt: Annotated[
        bool | None,
        typer.Option("--camera-prompt/--no-camera-prompt",
                     help="Models with a camera head (the default model): sample with the training captions' "
                          "wording of the move the head reads in the prompt (default: yes)."),
    ] = None,
    camera_move: Annotated[
        str | None,
        typer.Option("--camera-move",
                     help="Render this camera move of the image and sample from it (the camera prior; any model): "
                          "static, pan_left, pan_right, tilt_up, tilt_down, zoom_in or zoom_out, at the speed the "
                          "motion bucket stands for."),
    ] = None,
    camera_prior: Annotated[
        float | None,
        typer.Option("--camera-prior",
                     help="Fraction of the steps the rendered move stands in for, 0..1 (0 = off; default: the "
                          "preset's, or 0.5 with --camera-move on a preset without one). Without --camera-move, the "
                          "move the camera head reads."),
    ] = None,
    decode_chunk: Annotated[int | None, typer.Option("--decode-chunk", help="Frames decoded at once.")] = None,
    sampler: Annotated[str, typer.Option("--sampler", help="euler (reference), heun, dpmpp_2m or euler_ancestral (stochastic, seeded).")] = "euler",
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 23,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto.")] = "auto",
    dtype: Annotated[str, typer.Option("--dtype", help="float32, bfloat16 or float16 (UNet and CLIP).")] = "float32",
    preset: Annotated[str | None, typer.Option("--preset", help="Sampling defaults: svd, svd_xt, svd_xt_1_1, ...")] = None,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Accept .ckpt/.pt/.bin (weights only).")] = False,
) -> None:
    """Generate a video from IMAGE."""
    if not image.is_file():
        raise InputError(f"image not found: {image}")
    _check_output(output)
    from tqdm import tqdm

    from kinetograph.pipeline.image_to_video import ImageToVideo
    from kinetograph.pipeline.preprocess import check_size

    if camera_move is not None:  # fail before loading gigabytes of weights
        from kinetograph.pipeline.camera_prior import check_move

        check_move(camera_move)
    if height is not None or width is not None:
        check_size(height or 64, width or 64, multiple=1)  # the model's own multiple is checked once loaded

    dev = _device(device)
    t0 = time.perf_counter()
    if checkpoint is None:  # the model bundled with the package (docs/model-card.md)
        from kinetograph.default_model import default_checkpoint

        checkpoint = default_checkpoint()
    pipe = ImageToVideo.from_checkpoint(
        checkpoint, device=dev, dtype=_dtype(dtype), preset=preset, allow_pickle=allow_pickle, text_encoder=text_encoder
    )
    typer.echo(f"loaded {checkpoint} ({pipe.preset.name}) on {dev} in {time.perf_counter() - t0:.1f}s", err=True)
    lines, prompt, camera_prompt = pipe.camera_report(prompt, camera_prompt, camera_move, camera_prior)
    for line in lines:
        typer.echo(line, err=True)
    bars: list[tqdm] = []  # created at the first step, so an early error prints no empty bar

    def progress(step: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, desc="sampling", unit="step", file=sys.stderr))
        bars[0].update(step - bars[0].n)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        video = pipe(
            image,
            prompt,
            negative_prompt=negative_prompt,
            text_guidance_scale=text_guidance,
            height=height,
            width=width,
            num_frames=frames,
            num_inference_steps=steps,
            min_guidance_scale=min_guidance,
            max_guidance_scale=max_guidance,
            fps=fps,
            motion_bucket_id=motion_bucket_id,
            noise_aug_strength=noise_aug,
            decode_chunk_size=decode_chunk,
            seed=seed,
            sampler=sampler,
            guidance_ramp=guidance_ramp,
            pin_first_frame=pin_first_frame,
            deflicker=deflicker,
            text_tokens=text_tokens,
            camera_prompt=camera_prompt,
            camera_move=camera_move,
            camera_prior=camera_prior,
            callback=progress,
        )
    for bar in bars:
        bar.close()
    for w in caught:
        typer.echo(f"warning: {w.message}", err=True)
    path = video.save(output)
    t, h, w_, _ = video.frames.shape
    typer.echo(f"wrote {path} ({t} frames, {w_}x{h}, {video.fps:g} fps) in {time.perf_counter() - t0:.1f}s")


def _check_output(output: Path) -> None:
    """Refuse a bad output path before minutes of sampling, not after."""
    from kinetograph.io.video import output_kind

    try:
        output_kind(output)
    except KinetographError as e:
        raise InputError(str(e)) from None


@app.command()
def convert(
    src: Annotated[Path, typer.Argument(help="Checkpoint to convert (file or diffusers folder).")],
    dst: Annotated[Path, typer.Argument(help="Output: a .safetensors file (original) or a folder (diffusers).")],
    to: Annotated[str, typer.Option("--to", help="diffusers or original.")],
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Accept .ckpt/.pt/.bin (weights only).")] = False,
    dtype: Annotated[
        str | None, typer.Option("--dtype", help="Store floating-point tensors as float32, float16 or bfloat16.")
    ] = None,
) -> None:
    """Convert a checkpoint between the official single-file layout and the diffusers folder layout."""
    from kinetograph.io.checkpoint import convert as run_convert

    path = run_convert(src, dst, to, allow_pickle=allow_pickle, dtype=dtype)
    typer.echo(f"wrote {path}")


@app.command()
def init(
    output: Annotated[Path, typer.Argument(help="Output .safetensors file (official layout).")],
    preset: Annotated[str, typer.Option("--preset", help="Architecture: tiny, svd, svd_image_decoder, ...")] = "tiny",
    seed: Annotated[int, typer.Option("--seed", help="Random seed of the initialisation.")] = 0,
) -> None:
    """Write a randomly initialised checkpoint of a preset (smoke runs, benchmarks, training from scratch)."""
    import torch

    from kinetograph.io.checkpoint import save_original
    from kinetograph.models.svd import SVD
    from kinetograph.presets import PRESETS

    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if output.suffix != ".safetensors":
        raise InputError(f"{output}: name the output *.safetensors")
    torch.manual_seed(seed)
    path = save_original(SVD(PRESETS[preset].model), output, preset)
    typer.echo(f"wrote {path}")


@app.command("camera-head")
def camera_head(
    src: Annotated[Path, typer.Argument(help="A text model file (original layout), e.g. a stage's export.")],
    data: Annotated[Path, typer.Option("--data", help="Dataset folder with camera clips (`kinetograph data build`).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output .safetensors file.")],
    captions: Annotated[int, typer.Option("--captions", help="Training captions fitted per camera clip.")] = 16,
    refit: Annotated[bool, typer.Option("--refit", help="Fit again the head of a model that has one (else it is kept).")] = False,
) -> None:
    """Give a text model a camera head: a classifier of the camera move a prompt asks for, fitted on
    the dataset's captions; generation then samples with the captions' wording of that move."""
    from kinetograph.training.camera import write_camera_head

    if output.suffix != ".safetensors":
        raise InputError(f"{output}: the output must be a .safetensors file")
    path = write_camera_head(src, data, output, captions, refit)
    typer.echo(f"wrote {path}")


@app.command()
def info(checkpoint: Annotated[Path, typer.Argument(help="Checkpoint file or diffusers folder.")]) -> None:
    """Print a checkpoint's layout, preset and parameter counts."""
    from kinetograph.io.checkpoint import load_checkpoint

    loaded = load_checkpoint(checkpoint, dtype=None)
    typer.echo(f"layout: {loaded.layout}\npreset: {loaded.preset.name}")
    for name in ("unet", "vae", "image_encoder"):
        n = sum(p.numel() for p in getattr(loaded.model, name).parameters())
        typer.echo(f"{name}: {n:,} parameters")


@app.command()
def serve(
    checkpoint: Annotated[
        Path | None,
        typer.Option("--checkpoint", "-c", help="The model every job uses; default: the shipped default model."),
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help="Where jobs, uploads and videos are kept (docs/server.md).")
    ] = Path("outputs/server"),
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto.")] = "auto",
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", help="Largest image upload accepted.")] = 25.0,
) -> None:
    """Serve the web UI: upload an image, queue jobs that persist across restarts, watch and download videos."""
    import logging
    import socket

    try:
        import uvicorn

        from kinetograph.server.app import create_app
        from kinetograph.server.jobs import JobQueue, Limits, Runner
    except ImportError as e:
        raise InputError(f"the web server needs {e.name}: pip install 'kinetograph[server]'") from None
    if not 1 <= port <= 65535:
        raise InputError(f"--port {port} is not a TCP port; pick one in 1..65535")
    if not 0 < max_upload_mb <= 1024:
        raise InputError(f"--max-upload-mb {max_upload_mb:g} must be in (0, 1024]")
    try:  # say so now rather than after loading the model
        with socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET):
            pass
    except OSError as e:
        raise InputError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --host or --port") from None
    if checkpoint is None:
        from kinetograph.default_model import default_checkpoint

        checkpoint = default_checkpoint()
    runner = Runner(checkpoint, _device(device))
    t0 = time.perf_counter()
    pipe = runner.pipeline()  # a bad checkpoint fails here, in one line, not at the first job
    typer.echo(f"loaded {checkpoint} ({pipe.preset.name}) on {pipe.device} in {time.perf_counter() - t0:.1f}s",
               err=True)
    queue = JobQueue(data_dir, runner, Limits(max_upload_bytes=int(max_upload_mb * 2**20)))
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(f"warning: the server has no login; anyone who can reach {host}:{port} can run jobs", err=True)
    shown = f"[{host}]" if ":" in host else host
    typer.echo(f"kinetograph web UI: http://{shown}:{port}/  (jobs in {queue.root}; Ctrl+C stops)")
    handler = logging.StreamHandler()  # one line per job event: running, done, failed, re-queued
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logging.getLogger("kinetograph.server").addHandler(handler)
    logging.getLogger("kinetograph.server").setLevel(logging.INFO)
    # On IPv4 loopback, answer only its own names: a web page cannot rebind another name to it.
    allowed = ["127.0.0.1", "localhost"] if host in ("127.0.0.1", "localhost") else None
    uvicorn.run(create_app(queue, allowed_hosts=allowed), host=host, port=port, log_level="warning")


def _make_generate_fn(checkpoint: Path, settings: dict | None = None):
    """The generator `kinetograph eval` uses: the checkpoint with its preset's sampling defaults,
    overridden by `settings` (ImageToVideo arguments: height, width, num_inference_steps, ...)."""
    from kinetograph.pipeline.image_to_video import ImageToVideo

    pipe = ImageToVideo.from_checkpoint(checkpoint, device=_device("auto"))
    settings = dict(settings or {})

    @functools.lru_cache(maxsize=None)  # a suite repeats each prompt over its photos
    def read_prompt(prompt: str) -> dict | None:
        """The camera head's reading of `prompt` and the wording sampled with (None: no head, or off)."""
        reading = pipe.camera_reading(prompt) if settings.get("camera_prompt", True) else None
        if reading is None:
            return None
        out = {"move": reading.move, "p": round(reading.p, 4), "named": round(reading.named, 4),
               "sampled_prompt": pipe.camera_caption(prompt, reading) or prompt}
        # The camera prior's strength: a prompt that names no move it reads samples as usual.
        prior = pipe.camera_prior_plan(out["sampled_prompt"], None, settings.get("camera_prior"))[0] \
            if reading.asked else 0.0
        return {**out, "camera_prior": prior}

    def generate_fn(image: Path, prompt: str, motion_bucket_id: int, seed: int):
        options = settings
        if reading := read_prompt(prompt):  # read once here: the pipeline reads it no more
            prompt, options = reading["sampled_prompt"], {**settings, "camera_prompt": False}
            options["camera_prior"] = reading["camera_prior"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a text-blind model's prompt warning, once per case
            return pipe(image, prompt, motion_bucket_id=motion_bucket_id, seed=seed, **options).frames

    generate_fn.read_prompt = read_prompt  # recorded in each case of the report
    return generate_fn


def _register_subcommands() -> None:
    from kinetograph.data.cli import app as data_app
    from kinetograph.data.cli import curate_command
    from kinetograph.eval.cli import make_eval_cli
    from kinetograph.training.cli import export_command, train_command

    app.command("eval", help="Generate (or read) a suite's videos, score them, write report.json + report.html.")(
        make_eval_cli(_make_generate_fn)
    )
    app.command("curate")(curate_command)
    app.add_typer(data_app, name="data")
    app.command("train", help="Train or finetune a model: --stage vae|image|video|finetune --config FILE.")(
        train_command
    )
    app.command("export", help="Export a training run's checkpoint (its EMA by default) as a model file.")(
        export_command
    )


_register_subcommands()


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning our errors into one line and an exit code."""
    try:
        # Outside standalone mode click returns a command's typer.Exit code instead of raising it.
        rc = app(args=argv, standalone_mode=False)
    except KinetographError as e:
        typer.echo(f"error: {e}", err=True)
        return e.exit_code
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 1
    except Exception as e:
        # Usage errors (unknown option, missing argument) print their own message and exit code 2.
        # Typer vendors click, so recognise them by their interface rather than their class.
        if callable(getattr(e, "show", None)) and isinstance(getattr(e, "exit_code", None), int):
            e.show()
            return e.exit_code
        if os.environ.get("KINETOGRAPH_DEBUG"):
            raise
        typer.echo(f"error: {type(e).__name__}: {e} (set KINETOGRAPH_DEBUG=1 for details)", err=True)
        return 1
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
