"""WebDataset-style tar shards: `<key>.<ext>` members grouped by key, written with stdlib tarfile.

A sample is a key plus files, e.g. {"mp4": bytes, "json": dict} for a clip or {"png": bytes,
"json": dict} for an image. Shards are plain tars, so the `webdataset` package (or `tar tf`)
reads them too; `index_shard` gives byte offsets for random access without unpacking.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

from kinetograph.errors import InputError, OutputError


class ShardWriter:
    """Write samples into `<prefix>-000000.tar`, `-000001.tar`, ...; a new shard every max_count samples."""

    def __init__(self, folder: str | Path, prefix: str, max_count: int = 256) -> None:
        self.folder, self.prefix, self.max_count = Path(folder), prefix, max_count
        self.folder.mkdir(parents=True, exist_ok=True)
        self.shards: list[str] = []  # names written, relative to folder
        self._tar: tarfile.TarFile | None = None
        self._count = 0

    def write(self, key: str, files: dict[str, bytes | dict | str]) -> str:
        """Add one sample; returns the shard name it went into."""
        assert "." not in key and "/" not in key, key  # WebDataset splits key and extension at the first dot
        if self._tar is None or self._count >= self.max_count:
            self._open_next()
        assert self._tar is not None
        for ext, data in files.items():
            if isinstance(data, dict):
                data = json.dumps(data, ensure_ascii=False).encode()
            elif isinstance(data, str):
                data = data.encode()
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644  # mtime 0: same bytes every run
            self._tar.addfile(info, io.BytesIO(data))
        self._count += 1
        return self.shards[-1]

    def _open_next(self) -> None:
        self.close()
        name = f"{self.prefix}-{len(self.shards):06d}.tar"
        try:
            self._tar = tarfile.open(self.folder / name, "w", format=tarfile.USTAR_FORMAT)
        except OSError as e:
            raise OutputError(f"cannot write {self.folder / name} ({e}); check the output folder") from e
        self.shards.append(name)
        self._count = 0

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Member:
    offset: int  # byte offset of the data in the tar
    size: int


def index_shard(path: str | Path) -> dict[str, dict[str, Member]]:
    """key -> {ext -> Member} for every sample of a shard, in order."""
    out: dict[str, dict[str, Member]] = {}
    try:
        with tarfile.open(path, "r") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                key, _, ext = m.name.rpartition("/")[2].partition(".")
                out.setdefault(key, {})[ext] = Member(m.offset_data, m.size)
    except (OSError, tarfile.TarError) as e:
        raise InputError(f"{path}: not a readable tar shard ({e}); rebuild the dataset") from e
    return out


def read_member(path: str | Path, member: Member) -> bytes:
    with open(path, "rb") as f:
        f.seek(member.offset)
        return f.read(member.size)
