"""The command line end to end on a tiny random checkpoint in the official layout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import av
import pytest
import torch

from conftest import randomize_
from kinetograph.cli import main
from kinetograph.io.checkpoint import save_original
from kinetograph.models.svd import SVD
from kinetograph.presets import PRESETS

ASSETS = Path(__file__).resolve().parents[1] / "assets"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = randomize_(SVD(PRESETS["tiny"].model), seed=4).eval()
    return save_original(model, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", "tiny")


def test_generate_writes_playable_h264(checkpoint, tmp_path):
    out = tmp_path / "out.mp4"
    cmd = [sys.executable, "-m", "kinetograph.cli", "generate", str(ASSETS / "chelsea.jpg"), "--checkpoint",
           str(checkpoint), "-o", str(out), "--frames", "5", "--steps", "2", "--height", "64", "--width", "128",
           "--device", "cpu", "--seed", "1"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "wrote" in res.stdout and "Traceback" not in res.stderr
    with av.open(str(out)) as c:
        s = c.streams.video[0]
        frames = [f for f in c.decode(s)]
        assert s.codec_context.name == "h264" and s.codec_context.pix_fmt == "yuv420p"
        assert (s.codec_context.width, s.codec_context.height) == (128, 64)
    assert len(frames) == 5


@pytest.mark.parametrize("suffix", [".gif", ".webp"])
def test_generate_other_formats(checkpoint, tmp_path, suffix):
    out = tmp_path / f"out{suffix}"
    code = main(["generate", str(ASSETS / "coffee.jpg"), "-c", str(checkpoint), "-o", str(out), "--steps", "1",
                 "--device", "cpu"])
    assert code == 0 and out.is_file() and out.stat().st_size > 0


def test_generate_pin_first_frame_flag_reaches_the_pipeline(checkpoint, tmp_path):
    outs = {}
    for flag in ("--pin-first-frame", "--no-pin-first-frame", None):
        out = tmp_path / f"{flag}.gif"
        argv = ["generate", str(ASSETS / "coffee.jpg"), "-c", str(checkpoint), "-o", str(out), "--steps", "2",
                "--device", "cpu"] + ([flag] if flag else [])
        assert main(argv) == 0
        outs[flag] = out.read_bytes()
    assert outs["--pin-first-frame"] != outs["--no-pin-first-frame"]
    assert outs[None] == outs["--no-pin-first-frame"]  # this checkpoint's preset (tiny) keeps SVD's way


def run(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


def test_bad_inputs_exit_2_with_one_line_and_no_output(checkpoint, tmp_path, capsys, monkeypatch):
    from kinetograph import default_model

    # No -c and no default model (whatever a developer has trained into the package).
    monkeypatch.setattr(default_model, "PATH", tmp_path / "no-default.safetensors")
    monkeypatch.setattr(default_model, "SHA256", "")
    out = tmp_path / "x.mp4"
    cases = [
        ["generate", str(tmp_path / "missing.png"), "-c", str(checkpoint), "-o", str(out)],
        ["generate", str(ASSETS / "chelsea.jpg"), "-c", str(checkpoint), "-o", str(out), "--height", "101"],
        ["generate", str(ASSETS / "chelsea.jpg"), "-c", str(tmp_path / "nope.safetensors"), "-o", str(out)],
        ["generate", str(ASSETS / "chelsea.jpg"), "-c", str(checkpoint), "-o", str(tmp_path / "x.avi")],
        ["generate", str(ASSETS / "chelsea.jpg"), "-o", str(out)],
    ]
    not_image = tmp_path / "fake.png"
    not_image.write_text("not an image")
    cases.append(["generate", str(not_image), "-c", str(checkpoint), "-o", str(out)])
    for argv in cases:
        code, err = run(argv, capsys)
        lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert code == 2, (argv, err)
        assert len(lines) == 1 and "Traceback" not in err, err
        assert not out.exists() and not list(tmp_path.glob("*.mp4*"))


def test_unknown_option_is_usage_error(capsys):
    code, _ = run(["generate", "x.png", "--frobnicate"], capsys)
    assert code == 2


def test_train_errors_exit_2_with_one_line(tmp_path, capsys):
    # The train command turns its errors into typer.Exit(2) (it also runs alone under torchrun);
    # the app must pass that code on, not exit 0.
    code, err = run(["train", "--stage", "vae", "--config", str(tmp_path / "missing.toml")], capsys)
    assert code == 2
    assert err.strip().count("\n") == 0 and "config file not found" in err
    config = tmp_path / "vae.toml"
    config.write_text(f'stage = "vae"\n[model]\npreset = "tiny"\n[data]\nroot = "{tmp_path}"\n[run]\nout_dir = "{tmp_path / "run"}"\n')
    code, err = run(["train", "--stage", "vae", "--config", str(config), "--resume"], capsys)
    assert code == 2 and "--resume: no checkpoint" in err
    assert not (tmp_path / "run").exists()


def test_convert_command(checkpoint, tmp_path, capsys):
    code, err = run(["convert", str(checkpoint), str(tmp_path / "d"), "--to", "diffusers"], capsys)
    assert code == 0, err
    assert (tmp_path / "d" / "unet" / "config.json").is_file()
    code, err = run(["convert", str(tmp_path / "d"), str(tmp_path / "o.safetensors"), "--to", "original"], capsys)
    assert code == 0, err
    code, err = run(["convert", str(checkpoint), str(tmp_path / "e"), "--to", "onnx"], capsys)
    assert code == 2 and "--to" in err


def test_pickle_needs_flag(checkpoint, tmp_path, capsys):
    from safetensors.torch import load_file

    ckpt = tmp_path / "model.ckpt"
    torch.save(load_file(checkpoint), ckpt)
    code, err = run(["convert", str(ckpt), str(tmp_path / "o.safetensors"), "--to", "original"], capsys)
    assert code == 2 and "pickle" in err


def test_eval_generates_with_the_checkpoint_and_writes_report(checkpoint, tmp_path, capsys):
    import json

    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps({
        "name": "mini",
        "images": [{"id": "chelsea", "source": str(ASSETS / "chelsea.jpg")}],
        "prompts": [{"id": "left", "text": "the camera pans left", "expected": "left"}],
        "motion_buckets": [40, 200],
        "seeds": [0],
    }))
    code, err = run(["eval", "--checkpoint", str(checkpoint), "--suite", str(suite), "-o", str(tmp_path / "r")], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    cases = report["cases"]
    assert len(cases) == 2 and all(c["status"] == "ok" for c in cases), cases
    assert (tmp_path / "r" / "report.html").is_file()
    # generation options: the videos are made at the size asked for (the preset's is 64x64)
    code, err = run(["eval", "--checkpoint", str(checkpoint), "--suite", str(suite), "-o", str(tmp_path / "r2"),
                     "--width", "128", "--steps", "2", "--sampler", "euler_ancestral"], capsys)
    assert code == 0, err
    from kinetograph.eval.clips import read_video

    report = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert report["settings"]["generation"] == {"width": 128, "num_inference_steps": 2, "sampler": "euler_ancestral"}
    assert read_video(tmp_path / "r2" / report["cases"][0]["video"]).shape[1:3] == (64, 128)


def test_info_reports_layout_preset_and_sizes(checkpoint, capsys):
    code = main(["info", str(checkpoint)])
    out = capsys.readouterr().out
    assert code == 0
    assert "layout: original" in out and "preset: tiny" in out and "unet:" in out
