"""Manifests: the list of inputs curate reads, the per-clip table it writes, and its resume log.

Input: a directory (searched recursively for videos) or a manifest file: JSONL (one object per
line with "path" and optionally "caption"), CSV with those columns, or Parquet. Relative paths are
relative to the manifest's folder.

Output: `manifest.jsonl`, one clip per line (see `CLIP_FIELDS`), plus one line per failed source
with `status: "error"` and its reason; optionally `manifest.parquet` (needs pyarrow).
Resume log: `.work/sources.jsonl`, one line per finished source, appended as sources finish;
a half-written last line (a killed run) is ignored and that source redone.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from kinetograph.data.curation.decode import VIDEO_EXTENSIONS
from kinetograph.errors import InputError, OutputError

# Per-clip fields in the output manifest, in order. Measurements come from the per-source stage;
# verdicts, keep, duplicate_of and motion_bucket from the corpus-wide stage.
CLIP_FIELDS = (
    "id", "status", "source", "clip_index", "start_frame", "end_frame", "start_s", "end_s", "duration_s",
    "fps", "width", "height", "motion_score", "motion_bucket", "black_fraction", "blank_fraction",
    "text_score", "score", "phash", "duplicate_of", "verdicts", "keep", "reject", "caption", "caption_source",
)


@dataclass(frozen=True)
class SourceItem:
    path: str  # absolute path of a video
    caption: str | None = None  # from a manifest column


def list_inputs(spec: str | Path) -> list[SourceItem]:
    """Sources to curate, from a directory or a manifest file; sorted for a stable order."""
    spec = Path(spec)
    if spec.is_dir():
        files = sorted(p for p in spec.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
        if not files:
            raise InputError(f"{spec}: no video files ({', '.join(VIDEO_EXTENSIONS)}); pass a folder of videos")
        return [SourceItem(str(p.resolve())) for p in files]
    if not spec.is_file():
        raise InputError(f"{spec}: no such file or folder; pass a folder of videos or a manifest")
    rows = _read_rows(spec)
    items = []
    for n, row in enumerate(rows, 1):
        path = row.get("path") or row.get("video") or row.get("source")
        if not path:
            raise InputError(f"{spec}: row {n} has no 'path' column; every row needs the video's path")
        p = Path(str(path))
        p = p if p.is_absolute() else (spec.parent / p)
        items.append(SourceItem(str(p.resolve()), row.get("caption")))
    if not items:
        raise InputError(f"{spec}: manifest lists no videos; add rows with a 'path' column")
    return items


def _read_rows(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".json"):
            lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
            return [json.loads(ln) for ln in lines]
        if suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as f:
                return list(csv.DictReader(f))
        if suffix == ".parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError as e:
                raise InputError(f"{path}: reading Parquet needs pyarrow; `pip install pyarrow` or use JSONL") from e
            return pq.read_table(path).to_pylist()
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: unreadable manifest ({e}); fix the file or pass a folder") from e
    raise InputError(f"{path}: unknown manifest type {suffix!r}; use .jsonl, .csv or .parquet")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    """Write rows atomically (temp file + rename), so a reader never sees half a manifest."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"cannot write {path} ({e}); check the output folder is writable") from e


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such manifest; run `kinetograph curate` or `kinetograph data build` first")
    return [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def write_parquet(path: str | Path, rows: list[dict]) -> bool:
    """Also write the manifest as Parquet when pyarrow is installed; returns whether it did."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return False
    # Nested/mixed columns as JSON text, so every row has the same simple schema.
    flat = [
        {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in row.items()}
        for row in rows
    ]
    flat = [{**r, "phash": None if r.get("phash") is None else str(r["phash"])} for r in flat]
    pq.write_table(pa.Table.from_pylist(flat), str(path))
    return True


class ResumeLog:
    """Append-only log of finished sources under OUT/.work, keyed by source path."""

    def __init__(self, out: Path, analysis_key: str) -> None:
        self.path = out / ".work" / "sources.jsonl"
        self.analysis_key = analysis_key  # settings that change measurements; others may change freely
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def load(self) -> dict[str, dict]:
        """Finished sources from earlier runs with the same analysis settings."""
        done: dict[str, dict] = {}
        if not self.path.is_file():
            return done
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line cut short by a killed run: redo that source
            if entry.get("analysis") == self.analysis_key:
                done[entry["source"]] = entry
        return done

    def append(self, entry: dict) -> None:
        # A killed run can leave a last line without newline; start on a fresh line after it.
        if self.path.is_file() and self.path.stat().st_size > 0:
            with self.path.open("rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
        else:
            torn = False
        with self.path.open("a", encoding="utf-8") as f:
            if torn:
                f.write("\n")
            f.write(json.dumps({**entry, "analysis": self.analysis_key}, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
