"""The eval command end to end: a stand-in generator that makes real camera motion over the
suite's photos, the report files, re-reading videos with --videos, FVD/CLIP paths, the CLI."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from kinetograph.errors import CheckpointError, InputError
from kinetograph.eval.cli import eval_command, make_eval_cli
from kinetograph.eval.clip_score import ClipEmbedders
from kinetograph.eval.clips import find_video, read_video
from kinetograph.eval.fvd import InceptionI3d
from kinetograph.eval.motion import MotionClass
from kinetograph.eval.prompts import expected_motion
from kinetograph.eval.report import contact_sheet, json_safe
from kinetograph.eval.synthetic import camera_clip
from kinetograph.io.video import save_video
from kinetograph.pipeline.preprocess import load_image

PROMPTS = [
    {"id": "left", "text": "the camera pans to the left"},
    {"id": "right", "text": "pan right"},
    {"id": "up", "text": "tilt up"},
    {"id": "down", "text": "the camera tilts down"},
    {"id": "zin", "text": "zoom in"},
    {"id": "zout", "text": "zoom out"},
    {"id": "still", "text": "static shot"},
    {"id": "evil", "text": "<script>alert('x')</script> & \"quotes\"", "expected": None},
]


def fake_generate(num_frames: int = 8):
    """A generator whose camera does what the prompt says, faster for higher buckets."""

    def generate(image_path: Path, prompt: str, motion_bucket_id: int, seed: int) -> np.ndarray:
        motion = expected_motion(prompt) or MotionClass.STATIC
        speed = 0.4 + 2.5 * motion_bucket_id / 255
        return camera_clip(np.asarray(load_image(image_path)), motion, speed, num_frames, (64, 96))

    return generate


def suite_file(
    folder: Path, prompts=PROMPTS, buckets=(40, 127, 220), images=("chelsea", "coffee")
) -> Path:
    doc = {
        "name": "test <suite>",
        "description": "photos & <b>prompts</b>",
        "images": [{"id": name, "source": f"skimage:{name}"} for name in images],
        "prompts": prompts,
        "motion_buckets": list(buckets),
        "seeds": [0],
    }
    path = folder / "suite.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval")
    out = folder / "report"
    report = eval_command(
        Path("ckpt.safetensors"), suite_file(folder), out, generate_fn=fake_generate()
    )
    return folder, out, report


def test_generated_motion_is_measured_as_asked(generated):
    _, _, report = generated
    summary = report["summary"]
    assert summary["n_evaluated"] == 2 * 8 * 3 and summary["n_missing"] == 0
    control = summary["control"]
    assert control["accuracy"] == 1.0 and control["n_scored"] == 2 * 7 * 3
    assert set(control["per_class"]) == {c.value for c in MotionClass}
    # within each (image, prompt) the measured motion grows with the bucket (static groups are
    # constant and drop out of the within-group mean)
    assert control["spearman_within"] == pytest.approx(1.0) and control["n_groups"] == 2 * 6
    assert control["spearman"] > 0.5
    evil = [c for c in report["cases"] if c["prompt_id"] == "evil"]
    assert all(c["correct"] is None and c["measured_motion"] == "static" for c in evil)
    assert report["fvd"]["status"] == "skipped" and "--i3d" in report["fvd"]["reason"]
    assert report["clip"]["status"] == "skipped" and report["checkpoint"] == "ckpt.safetensors"


def test_report_files_are_strict_json_and_self_contained_html(generated):
    _, out, report = generated
    on_disk = json.loads(
        (out / "report.json").read_text(encoding="utf-8"), parse_constant=pytest.fail
    )
    assert on_disk["summary"]["control"]["accuracy"] == 1.0
    assert set(on_disk["plots"]) == {"bucket_vs_motion", "class_accuracy", "flicker"}
    page = (out / "report.html").read_text(encoding="utf-8")
    assert (
        "<script>" not in page and "&lt;script&gt;" in page and "&lt;b&gt;prompts&lt;/b&gt;" in page
    )
    assert "test &lt;suite&gt;" in page
    sources = re.findall(r"(?:src|href)='([^']+)'", page)
    assert len(sources) >= 3 + 48 * 2  # plots, a sheet and a video link per case
    for src in sources:
        assert not src.startswith(("/", "http")) and (out / src).is_file(), src
    for plot in on_disk["plots"].values():
        assert Image.open(out / plot).size[0] > 100
    sheet = np.asarray(Image.open(out / on_disk["cases"][0]["contact_sheet"]))
    assert sheet.shape[0] == 96 + 16  # thumbnails plus the label strip


def test_videos_folder_is_reread_with_the_same_verdicts(generated, tmp_path):
    folder, out, report = generated
    videos = tmp_path / "videos"
    videos.mkdir()
    for path in (out / "videos").iterdir():
        (videos / path.name).write_bytes(path.read_bytes())
    (videos / "coffee-still-m40-s0.mp4").unlink()
    (videos / "coffee-still-m127-s0.mp4").write_bytes(b"garbage")
    again = eval_command(None, folder / "suite.json", tmp_path / "r2", videos=videos)
    by_id = {c["id"]: c for c in again["cases"]}
    assert by_id["coffee-still-m40-s0"]["status"] == "missing"
    assert by_id["coffee-still-m127-s0"]["status"] == "error"
    assert again["summary"]["n_evaluated"] == 46 and again["source"] == "videos"
    for case in report["cases"]:
        if by_id[case["id"]]["status"] == "ok":
            assert by_id[case["id"]]["measured_motion"] == case["measured_motion"], case["id"]
    page = (tmp_path / "r2" / "report.html").read_text(encoding="utf-8")
    assert "missing" in page


def test_fvd_and_clip_paths(tmp_path):
    g = torch.Generator().manual_seed(0)
    state = InceptionI3d().state_dict()  # default init, then random BN statistics
    for k, v in state.items():
        if k.endswith("running_var"):
            state[k] = torch.rand(v.shape, generator=g) + 0.5
        elif k.endswith(("running_mean", "bn.bias")):
            state[k] = torch.randn(v.shape, generator=g) * 0.1
    torch.save(state, tmp_path / "i3d.pt")
    reference = tmp_path / "real"
    reference.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        np.save(reference / f"r{i}.npy", rng.integers(0, 255, (9, 40, 40, 3), dtype=np.uint8))
    prompts = [{"id": "l", "text": "pan left"}, {"id": "z", "text": "zoom in"}]
    clip = ClipEmbedders(
        "toy", image=lambda f: f.reshape(len(f), -1, 3).mean(1), text=lambda p: np.ones((len(p), 3))
    )
    report = eval_command(
        None,
        suite_file(tmp_path, prompts, buckets=(100,), images=("astronaut",)),
        tmp_path / "out",
        generate_fn=fake_generate(num_frames=9),
        i3d_weights=tmp_path / "i3d.pt",
        fvd_reference=reference,
        clip=clip,
        save_videos=False,
    )
    fvd = report["fvd"]
    assert fvd["status"] == "ok" and fvd["n_real"] == 2 and fvd["n_generated"] == 2
    assert math.isfinite(fvd["value"]) and fvd["value"] > 0
    assert any("fewer videos than feature dimensions" in n for n in report["notes"])
    assert report["clip"]["status"] == "ok" and 0 < report["clip"]["mean_score"] <= 100
    assert all(0 < c["clip_score"] <= 100 and c["clip_consistency"] > 0.9 for c in report["cases"])
    assert (
        all(c["video"] is None for c in report["cases"])
        and not (tmp_path / "out" / "videos").exists()
    )
    with pytest.raises(CheckpointError, match="not found"):
        eval_command(
            None,
            tmp_path / "suite.json",
            tmp_path / "o2",
            generate_fn=fake_generate(),
            i3d_weights=tmp_path / "none.pt",
            fvd_reference=reference,
        )


def test_eval_command_input_errors(tmp_path):
    with pytest.raises(InputError, match="--videos DIR"):
        eval_command(None, None, tmp_path / "o")
    with pytest.raises(InputError, match="not a folder"):
        eval_command(None, None, tmp_path / "o", videos=tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no case could be evaluated"):
        eval_command(None, None, tmp_path / "o", videos=empty)


def test_cli_command(tmp_path):
    app = typer.Typer()
    made = []

    def factory(checkpoint: Path, settings: dict):
        made.append((checkpoint, settings))
        return fake_generate()

    app.command("eval")(make_eval_cli(factory))
    app.command("version")(lambda: None)  # a second command makes `eval` a subcommand
    suite = suite_file(tmp_path, PROMPTS[:2], buckets=(127,), images=("chelsea",))
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["eval", "--checkpoint", "m.safetensors", "--suite", str(suite), "-o", str(tmp_path / "r")],
    )
    assert result.exit_code == 0, result.output
    assert made == [(Path("m.safetensors"), {})] and "motion accuracy 1.00" in result.output
    assert (tmp_path / "r" / "report.html").is_file()
    # generation options reach the generator, under the pipeline's names, and the report
    result = runner.invoke(
        app,
        ["eval", "--checkpoint", "m.safetensors", "--suite", str(suite), "-o", str(tmp_path / "r2"),
         "--height", "64", "--width", "96", "--steps", "6", "--sampler", "heun", "--text-guidance", "2.5", "--negative-prompt", "a still shot", "--min-guidance", "1", "--max-guidance", "1.5",
         "--no-pin-first-frame"],
    )
    assert result.exit_code == 0, result.output
    settings = dict(height=64, width=96, num_inference_steps=6, sampler="heun", text_guidance_scale=2.5,
                    min_guidance_scale=1.0, max_guidance_scale=1.5, negative_prompt="a still shot",
                    pin_first_frame=False)
    assert made[-1] == (Path("m.safetensors"), settings)
    assert json.loads((tmp_path / "r2" / "report.json").read_text())["settings"]["generation"] == settings
    result = runner.invoke(app, ["eval", "--videos", str(tmp_path), "--steps", "4", "-o", str(tmp_path / "r5")])
    assert isinstance(result.exception, InputError) and "--videos" in str(result.exception)
    # no --checkpoint: the shipped default model, hash checked; without one, an error naming --checkpoint
    from kinetograph import default_model
    from kinetograph.errors import CheckpointError

    if default_model.SHA256:
        result = runner.invoke(app, ["eval", "--suite", str(suite), "-o", str(tmp_path / "r3")])
        assert result.exit_code == 0, result.output
        assert made[-1] == (default_model.PATH, {})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(default_model, "SHA256", "")
        mp.setattr(default_model, "PATH", tmp_path / "none.safetensors")
        result = runner.invoke(app, ["eval", "-o", str(tmp_path / "r6")])
    assert isinstance(result.exception, CheckpointError) and "--checkpoint" in str(result.exception)
    no_generation = typer.Typer()
    no_generation.command("eval")(make_eval_cli(None))
    no_generation.command("version")(lambda: None)
    result = runner.invoke(no_generation, ["eval", "--checkpoint", "m", "-o", str(tmp_path / "r4")])
    assert isinstance(result.exception, InputError) and "cannot generate" in str(result.exception)


# --- video files and report helpers ---------------------------------------------------------


def test_read_video_formats(tmp_path):
    ramp = np.tile(
        np.arange(0, 250, 2, dtype=np.uint8)[None, :, None], (100, 1, 3)
    )  # (100, 125, 3)
    video = camera_clip(ramp, MotionClass.LEFT, 1.0, 5, (32, 48))
    np.save(tmp_path / "a.npy", video)
    assert np.array_equal(read_video(tmp_path / "a.npy"), video)
    frames = tmp_path / "b"
    frames.mkdir()
    for i, f in enumerate(video):
        Image.fromarray(f).save(frames / f"{i:03d}.png")
    assert np.array_equal(read_video(frames), video)
    Image.fromarray(video[0]).save(
        tmp_path / "c.webp",
        save_all=True,
        lossless=True,
        append_images=[Image.fromarray(f) for f in video[1:]],
    )
    assert np.array_equal(read_video(tmp_path / "c.webp"), video)
    save_video(video, tmp_path / "d.mp4", fps=7, crf=12)
    decoded = read_video(tmp_path / "d.mp4")
    assert decoded.shape == video.shape and np.abs(decoded.astype(int) - video).mean() < 3
    assert find_video(tmp_path, "d") == tmp_path / "d.mp4" and find_video(tmp_path, "b") == frames
    assert find_video(tmp_path, "zzz") is None
    (tmp_path / "e.mp4").write_bytes(b"nope")
    with pytest.raises(InputError, match="cannot decode"):
        read_video(tmp_path / "e.mp4")


def test_contact_sheet_picks_first_and_last_frames():
    video = np.zeros((20, 40, 60, 3), np.uint8)
    video[:, :, :, 0] = np.arange(20, dtype=np.uint8)[:, None, None] * 10  # frame index in red
    sheet = contact_sheet(video, max_frames=4, thumb_height=20)
    tw, label = 30, 14
    reds = [sheet[label + 10, 2 + k * (tw + 2) + 15, 0] for k in range(4)]
    assert reds == [0, 60, 130, 190]  # frames 0, 6, 13, 19
    assert (
        contact_sheet(video, np.zeros((10, 10, 3), np.uint8), max_frames=4, thumb_height=20).shape[
            1
        ]
        == 5 * 32 + 2
    )


def test_json_safe():
    assert json_safe(
        {"a": float("inf"), "b": [np.float32(1.5), np.int64(2), np.bool_(True)], 3: float("nan")}
    ) == {"a": "inf", "b": [1.5, 2, True], "3": "nan"}


def test_report_records_what_the_camera_head_read(tmp_path):
    """A generator that says what it read in each prompt: each case records it, the HTML shows it,
    and the summary tells the head's misses from the video model's."""
    generate = fake_generate()

    def read_prompt(prompt: str) -> dict:
        # Reads every prompt as a pan right and samples with its own wording of it, but for one
        # its camera gate says names no move: that one is sampled as written.
        if prompt == "a static shot":
            return {"move": "pan_right", "p": 0.9, "named": 0.1, "sampled_prompt": prompt, "camera_prior": 0.0}
        return {"move": "pan_right", "p": 0.9, "named": 0.9, "sampled_prompt": "The camera pans right.",
                "camera_prior": 0.5}

    prompts = [{"id": "r", "text": "the camera pans right"}, {"id": "l", "text": "the camera pans left"},
               {"id": "s", "text": "a static shot"}]
    report = eval_command(Path("ckpt.safetensors"), suite_file(tmp_path, prompts=prompts, buckets=(127,)),
                          tmp_path / "out", generate_fn=generate, read_prompt=read_prompt)
    assert all(c["camera_reading"]["move"] == "pan_right" for c in report["cases"])
    # 6 cases (2 photos x 3 prompts); read right: the 2 pans right, which the fake camera moved right.
    assert report["summary"]["camera_head"] == {"n": 6, "read_right": 2, "moved_right_when_read_right": 2}
    html = (tmp_path / "out" / "report.html").read_text()
    assert "camera head read" in html and "The camera pans right." in html
    assert "from the moved image at 50% (camera prior)" in html
    assert html.count("but no camera move named (gate 0.1") == 2  # the static shot, on both photos
    plain = eval_command(Path("ckpt.safetensors"), suite_file(tmp_path, prompts=prompts, buckets=(127,)),
                         tmp_path / "out2", generate_fn=generate)
    assert "camera_head" not in plain["summary"] and "camera_reading" not in plain["cases"][0]


def test_cli_passes_the_generators_reader_and_prints_the_heads_count(tmp_path):
    app = typer.Typer()

    def factory(checkpoint: Path, settings: dict):
        generate = fake_generate()
        generate.read_prompt = lambda prompt: {"move": "zoom_in", "p": 0.7, "sampled_prompt": "The camera zooms in."}
        return generate

    app.command("eval")(make_eval_cli(factory))
    app.command("version")(lambda: None)
    prompts = [{"id": "z", "text": "the camera zooms in"}, {"id": "l", "text": "the camera pans left"}]
    suite = suite_file(tmp_path, prompts, buckets=(127,), images=("chelsea",))
    result = CliRunner().invoke(app, ["eval", "--checkpoint", "m.safetensors", "--suite", str(suite), "-o",
                                      str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "camera head: read 1 of 2 prompts as their move; 1 of those moved that way" in result.output
    cases = json.loads((tmp_path / "r" / "report.json").read_text())["cases"]
    assert [c["camera_reading"]["move"] for c in cases] == ["zoom_in", "zoom_in"]
