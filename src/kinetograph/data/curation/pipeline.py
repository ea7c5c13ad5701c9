"""`curate`: videos -> clips with measurements, verdicts, captions and motion buckets.

Two stages:
1. Per source, in parallel (process pool, or Ray Data with engine="ray"): one streaming decode at
   a small analysis size measures, frame by frame, the cut score, optical flow, luma and pHash
   (text every second, at a larger size); then shots are split at cuts into clips of bounded
   length and every clip gets its measurements. A source that fails becomes an error entry with
   its reason. Each finished source is appended to OUT/.work/sources.jsonl, so an interrupted run
   resumes where it stopped.
2. Corpus-wide, in this process: captions, filter verdicts, near-duplicates, the motion bucket
   map (saved as motion_buckets.json) and the manifest, report and optional shards.

Both engines run the same per-source function on the same inputs, so they give the same manifest.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kinetograph.data.curation import captions as captions_mod
from kinetograph.data.curation.decode import analysis_size, probe
from kinetograph.data.curation.dedupe import find_duplicates, phash
from kinetograph.data.curation.filters import (
    BLACK_LUMA, BLANK_STD, TEXT_WIDTH, FilterConfig, load_scorer, luma_stats, text_score, verdicts,
)
from kinetograph.data.curation.manifest import (
    ResumeLog, SourceItem, list_inputs, write_jsonl, write_parquet,
)
from kinetograph.data.curation.motion import MotionBucketMap, flow_magnitude, gray, motion_score
from kinetograph.data.curation.scenes import SceneConfig, content_score, detect_cuts, hsv, shots, split_shot
from kinetograph.errors import InputError
from kinetograph.io.video import encode_mp4_bytes, iter_av_frames

ENGINES = ("process", "ray")


@dataclass(frozen=True)
class AnalysisConfig:
    """Settings that change measurements; a resumed run must use the same ones."""

    analysis_width: int = 160  # frames are measured at this width (aspect kept)
    min_clip_s: float = 1.0  # shots shorter than this yield no clip
    max_clip_s: float = 5.0  # longer shots are split into equal clips of at most this length
    text_every_s: float = 1.0  # text is measured on one frame per this many seconds
    scene: SceneConfig = field(default_factory=SceneConfig)
    scorer: str | None = None  # user scoring model spec (filters.load_scorer); None: no score

    def key(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class CurateConfig:
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    calibrate: bool = False  # fit the motion bucket map to this corpus (quantiles) instead of the default curve
    bucket_map: str | None = None  # path of an existing motion_buckets.json to reuse (wins over calibrate)
    engine: str = "process"  # "process" or "ray"
    workers: int = 2  # processes (or Ray CPUs for a local Ray)
    ray_address: str | None = None  # an existing Ray cluster; None starts a local one
    shard_size: int | None = None  # write kept clips to WebDataset shards, resized to this short side
    shard_max_count: int = 256  # clips per shard
    parquet: bool = True  # also write manifest.parquet when pyarrow is installed
    progress: bool = True


@dataclass
class CurateResult:
    out: Path
    sources: int  # all sources of the input
    analysed: int  # sources analysed in this run (the rest were resumed from the log)
    errors: int  # sources that failed, with reasons in the manifest
    clips: int
    kept: int
    missing_captions: int
    seconds: float


# ---- stage 1: one source ---------------------------------------------------------------


def analyse_source(path: str, cfg: AnalysisConfig) -> dict:
    """Measure one video. Never raises for a bad file: returns {"source", "error", "clips"}."""
    try:
        return {"source": path, "error": None, **_analyse(path, cfg)}
    except InputError as e:
        return {"source": path, "error": str(e), "clips": []}
    except Exception as e:  # noqa: BLE001 - one broken file must not end a corpus-wide run
        return {"source": path, "error": f"{path}: unexpected {type(e).__name__}: {e}", "clips": []}


def _analyse(path: str, cfg: AnalysisConfig) -> dict:
    info = probe(path)
    fps = info.fps
    aw, ah = analysis_size(info.width, info.height, cfg.analysis_width)
    tw, th = analysis_size(info.width, info.height, TEXT_WIDTH)
    text_every = max(1, round(cfg.text_every_s * fps))
    cut_scores, flow_px, luma_mean, luma_std, hashes = [0.0], [0.0], [], [], []
    texts: dict[int, float] = {}
    prev_hsv = prev_gray = None
    warning = None
    frames = iter_av_frames(path)
    i = -1
    while True:
        try:
            frame = next(frames)
        except StopIteration:
            break
        except InputError as e:
            if i < 0:
                raise
            warning = f"decoding stopped after frame {i}: {e}"  # keep the good part of a broken file
            break
        i += 1
        small = frame.to_ndarray(format="rgb24", width=aw, height=ah)  # (h, w, 3)
        cur_hsv, cur_gray = hsv(small), gray(small)
        if prev_hsv is not None:
            cut_scores.append(content_score(prev_hsv, cur_hsv))
            flow_px.append(flow_magnitude(prev_gray, cur_gray))
        prev_hsv, prev_gray = cur_hsv, cur_gray
        m, s = luma_stats(small)
        luma_mean.append(m)
        luma_std.append(s)
        hashes.append(phash(small))
        if i % text_every == text_every // 2:
            texts[i] = text_score(frame.to_ndarray(format="rgb24", width=tw, height=th))
    n = i + 1
    if n == 0:
        raise InputError(f"{path}: no decodable frames; re-encode it with ffmpeg or remove it")

    cuts = detect_cuts(np.asarray(cut_scores), cfg.scene)
    flow_arr, lm, ls = np.asarray(flow_px), np.asarray(luma_mean), np.asarray(luma_std)
    text_idx = np.asarray(sorted(texts))
    clips = []
    for shot_index, (a, b) in enumerate(shots(cuts, n)):
        for s, e in split_shot(a, b, fps, cfg.min_clip_s, cfg.max_clip_s):
            in_clip = text_idx[(text_idx >= s) & (text_idx < e)]
            if len(in_clip) == 0:  # clip shorter than the text stride: use the nearest sample
                in_clip = text_idx[np.abs(text_idx - (s + e) // 2).argmin(keepdims=True)]
            clips.append({
                "start_frame": s,
                "end_frame": e,
                "shot": shot_index,
                # flow_px[k] is frame k-1 -> k; pairs across the shot's start cut are excluded.
                "motion_score": round(motion_score(float(flow_arr[s + 1 : e].mean()) if e - s > 1 else 0.0, aw, fps), 4),
                "black_fraction": round(float((lm[s:e] < BLACK_LUMA).mean()), 4),
                "blank_fraction": round(float((ls[s:e] < BLANK_STD).mean()), 4),
                "text_score": round(max(texts[int(k)] for k in in_clip), 5),
                "phash": [hashes[s + (e - s) * k // 4] for k in (1, 2, 3)],
            })
    if cfg.scorer is not None and clips:
        _score_clips(path, clips, cfg.scorer, tw, th)
    return {
        "info": {"fps": fps, "width": info.width, "height": info.height, "num_frames": n},
        "cuts": cuts,
        "warning": warning,
        "clips": clips,
    }


def _score_clips(path: str, clips: list[dict], spec: str, w: int, h: int) -> None:
    """Second pass, only with a user scorer: score three frames per clip (1/4, 1/2, 3/4)."""
    scorer = load_scorer(spec)
    want: dict[int, list[int]] = {}
    for ci, c in enumerate(clips):
        s, e = c["start_frame"], c["end_frame"]
        for k in (1, 2, 3):
            want.setdefault(s + (e - s) * k // 4, []).append(ci)
    picked: dict[int, list[np.ndarray]] = {ci: [] for ci in range(len(clips))}
    last = max(want)
    for i, frame in enumerate(iter_av_frames(path)):
        if i in want:
            rgb = frame.to_ndarray(format="rgb24", width=w, height=h)
            for ci in want[i]:
                picked[ci].append(rgb)
        if i >= last:
            break
    for ci, c in enumerate(clips):
        c["score"] = round(float(scorer(np.stack(picked[ci]))), 5) if picked[ci] else None


# ---- engines ---------------------------------------------------------------------------


def _run_process(paths: list[str], cfg: AnalysisConfig, workers: int) -> Iterator[dict]:
    if workers <= 1:
        for p in paths:
            yield analyse_source(p, cfg)
        return
    # spawn: workers start clean (no inherited threads/locks from a caller that imported torch).
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(analyse_source, p, cfg) for p in paths]
        for f in futures:  # in order; the slowest file only delays the log, not the work
            yield f.result()


def _ray_analyse(row: dict, cfg_json: str) -> dict:
    cfg = _analysis_from_json(cfg_json)
    return {"entry": json.dumps(analyse_source(row["path"], cfg))}


def _analysis_from_json(text: str) -> AnalysisConfig:
    d = json.loads(text)
    return AnalysisConfig(**{**d, "scene": SceneConfig(**d["scene"])})


def _run_ray(paths: list[str], cfg: AnalysisConfig, workers: int, address: str | None) -> Iterator[dict]:
    try:
        import ray
    except ImportError as e:
        raise InputError('--engine ray needs Ray Data; `pip install "ray[data]"` or use --engine process') from e
    started = not ray.is_initialized()
    if started:
        ray.init(
            address=address, num_cpus=None if address else workers, include_dashboard=False,
            log_to_driver=False, configure_logging=False,
        )
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        ds = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=max(1, len(paths)))
        ds = ds.map(_ray_analyse, fn_kwargs={"cfg_json": json.dumps(asdict(cfg))})
        for row in ds.iter_rows():
            yield json.loads(row["entry"])
    finally:
        if started:
            ray.shutdown()


# ---- the whole run ---------------------------------------------------------------------


def curate(inputs: str | Path | list[SourceItem], out: str | Path, cfg: CurateConfig = CurateConfig()) -> CurateResult:
    """Curate a folder or manifest of videos into OUT (manifest.jsonl, motion_buckets.json, report.json)."""
    t0 = time.perf_counter()
    if cfg.engine not in ENGINES:
        raise InputError(f"--engine {cfg.engine!r}: choose one of {', '.join(ENGINES)}")
    if cfg.analysis.scorer is not None:
        load_scorer(cfg.analysis.scorer)  # fail now, not once per file in the workers
    items = inputs if isinstance(inputs, list) else list_inputs(inputs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log = ResumeLog(out, cfg.analysis.key())
    done = log.load()
    todo = [it.path for it in items if it.path not in done]

    if todo:
        runner = (
            _run_ray(todo, cfg.analysis, cfg.workers, cfg.ray_address)
            if cfg.engine == "ray"
            else _run_process(todo, cfg.analysis, cfg.workers)
        )
        bar = tqdm(total=len(todo), unit="file", desc=f"curate ({cfg.engine})", disable=not cfg.progress)
        n_clips, t_start = 0, time.perf_counter()
        for entry in runner:
            log.append(entry)
            done[entry["source"]] = entry
            n_clips += len(entry["clips"])
            bar.update(1)
            bar.set_postfix_str(f"{n_clips / max(time.perf_counter() - t_start, 1e-6):.1f} clips/s")
        bar.close()

    rows, bucket_map = finalize([done[it.path] for it in items], items, cfg)
    bucket_map.save(out / "motion_buckets.json")
    if cfg.shard_size:
        placed = write_clip_shards(rows, out / "shards", cfg.shard_size, cfg.shard_max_count)
        for r in rows:
            r["shard"] = placed.get(r["id"])
    write_jsonl(out / "manifest.jsonl", rows)
    if cfg.parquet:
        write_parquet(out / "manifest.parquet", rows)
    clips = [r for r in rows if r["status"] == "ok"]
    missing = [r for r in clips if r["caption"] is None]
    (out / "missing_captions.txt").write_text("".join(f"{r['id']}\t{r['source']}\n" for r in missing))
    result = CurateResult(
        out=out, sources=len(items), analysed=len(todo), errors=sum(r["status"] == "error" for r in rows),
        clips=len(clips), kept=sum(r["keep"] for r in clips), missing_captions=len(missing),
        seconds=round(time.perf_counter() - t0, 2),
    )
    rejected: dict[str, int] = {}
    for r in clips:
        for name in r["reject"]:
            rejected[name] = rejected.get(name, 0) + 1
    report = {
        **{k: v for k, v in asdict(result).items() if k != "out"},
        "rejected_by": rejected,
        "errors_by_source": {r["source"]: r["reason"] for r in rows if r["status"] == "error"},
        "config": asdict(cfg),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return result


def finalize(entries: list[dict], items: list[SourceItem], cfg: CurateConfig) -> tuple[list[dict], MotionBucketMap]:
    """Corpus-wide stage: per-source entries (in input order) -> manifest rows and the bucket map."""
    rows: list[dict] = []
    for item, entry in zip(items, entries, strict=True):
        if entry["error"] is not None:
            rows.append({"id": _source_id(item.path), "status": "error", "source": item.path, "reason": entry["error"]})
            continue
        info = entry["info"]
        caption, caption_source = captions_mod.resolve_caption(item.path, item.caption)
        for k, c in enumerate(entry["clips"]):
            s, e, fps = c["start_frame"], c["end_frame"], info["fps"]
            rows.append({
                "id": f"{_source_id(item.path)}-{k:04d}",
                "status": "ok",
                "kind": "video",
                "source": item.path,
                "clip_index": k,
                "start_frame": s,
                "end_frame": e,
                "start_s": round(s / fps, 4),
                "end_s": round(e / fps, 4),
                "duration_s": round((e - s) / fps, 4),
                "fps": fps,
                "width": info["width"],
                "height": info["height"],
                "motion_score": c["motion_score"],
                "motion_bucket": None,
                "black_fraction": c["black_fraction"],
                "blank_fraction": c["blank_fraction"],
                "text_score": c["text_score"],
                "score": c.get("score"),
                "phash": c["phash"],
                "duplicate_of": None,
                "verdicts": {},
                "keep": False,
                "reject": [],
                "caption": caption,
                "caption_source": caption_source,
                **({"warning": entry["warning"]} if entry.get("warning") else {}),
            })
    clips = [r for r in rows if r["status"] == "ok"]
    fcfg = cfg.filters
    for r in clips:
        r["verdicts"] = verdicts(r, fcfg)
    if fcfg.dedupe:
        # Only clips that pass everything else compete, so a rejected clip never hides a good one.
        cands = [r for r in clips if all(r["verdicts"].values())]
        for r, dup in zip(cands, find_duplicates([r["phash"] for r in cands], fcfg.dedupe_distance)):
            r["duplicate_of"] = None if dup is None else cands[dup]["id"]
        for r in clips:
            r["verdicts"]["duplicate"] = r["duplicate_of"] is None
    for r in clips:
        r["reject"] = [name for name, ok in r["verdicts"].items() if not ok]
        r["keep"] = not r["reject"]

    if cfg.bucket_map is not None:
        bucket_map = MotionBucketMap.load(cfg.bucket_map)
    elif cfg.calibrate:
        bucket_map = MotionBucketMap.fit([r["motion_score"] for r in clips if r["keep"]])
    else:
        bucket_map = MotionBucketMap()
    for r in clips:
        r["motion_bucket"] = bucket_map.bucket(r["motion_score"])
    return rows, bucket_map


def _source_id(path: str) -> str:
    """Readable and unique: the file stem plus a hash of the full path."""
    return f"{Path(path).stem[:40]}-{hashlib.sha1(path.encode()).hexdigest()[:8]}".replace(".", "_")


# ---- shards ----------------------------------------------------------------------------


def write_clip_shards(rows: list[dict], folder: Path, short_side: int, max_count: int = 256) -> dict[str, str]:
    """Decode kept clips, resize to `short_side` (never up), write them (mp4 + json) as tar shards.

    Returns clip id -> shard path relative to folder's parent (as the manifest stores it).
    """
    from kinetograph.data.shards import ShardWriter

    kept = [r for r in rows if r["status"] == "ok" and r["keep"]]
    by_source: dict[str, list[dict]] = {}
    for r in kept:
        by_source.setdefault(r["source"], []).append(r)
    placed: dict[str, str] = {}
    with ShardWriter(folder, "clips", max_count) as writer:

        def flush(row: dict, frames: list[np.ndarray]) -> None:
            if frames:
                meta = {k: row[k] for k in ("id", "source", "start_frame", "end_frame", "fps", "motion_score", "motion_bucket", "caption")}
                shard = writer.write(row["id"], {"mp4": encode_mp4_bytes(np.stack(frames), row["fps"]), "json": {**meta, "kind": "video"}})
                placed[row["id"]] = f"{folder.name}/{shard}"

        for source, clips in by_source.items():
            clips.sort(key=lambda r: r["start_frame"])
            w, h = _short_side_size(clips[0]["width"], clips[0]["height"], short_side)
            buf: list[np.ndarray] = []
            ci = 0
            for i, frame in enumerate(iter_av_frames(source)):
                while ci < len(clips) and i >= clips[ci]["end_frame"]:
                    flush(clips[ci], buf)
                    buf, ci = [], ci + 1
                if ci >= len(clips):
                    break
                if i >= clips[ci]["start_frame"]:
                    buf.append(frame.to_ndarray(format="rgb24", width=w, height=h))
            while ci < len(clips):  # clips ending at the last frame
                flush(clips[ci], buf)
                buf, ci = [], ci + 1
    return placed


def _short_side_size(width: int, height: int, short: int) -> tuple[int, int]:
    scale = min(1.0, short / min(width, height))  # never upscale
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)
