"""Weight files: safetensors in and out, tensor by tensor; pickle only when asked.

Loading a pickle (`.ckpt`, `.pt`, `.pth`, `.bin`) can run arbitrary code, so it is refused unless
the caller opts in, and even then goes through `torch.load(weights_only=True)`, which only
rebuilds tensors and plain containers. SVD checkpoints are ~10 GB of fp32: `SafetensorsReader`
reads each tensor straight from the file into its own aligned memory (cast on the way), and
`save_state_dict` streams tensors to disk, so neither ever holds a second copy of the model.
The format (https://github.com/huggingface/safetensors, "Format"): an 8-byte little-endian header
length, a JSON header {name: {dtype, shape, data_offsets}, "__metadata__": {...}}, then the bytes.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import secrets
import struct
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from kinetograph.errors import CheckpointError, OutputError

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SHOW = 3  # offenders named per category in a mismatch message
MAX_HEADER = 100_000_000  # bytes; the reference implementation's limit

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}  # fmt: skip
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


class SafetensorsReader:
    """Random access to a safetensors file without a memory map.

    `get` reads one tensor with `preadv` into a fresh tensor: aligned, anonymous memory that the
    kernel cannot evict mid-sampling (a mapped view can be), and no mapped pages kept resident.
    `get` is thread-safe: loading reads several tensors in parallel.
    """

    def __init__(self, path: str | Path):
        self.path = _safetensors_path(path)
        self._file = open(self.path, "rb")  # noqa: SIM115 - closed by close() / the context manager
        try:
            self._parse_header()
        except BaseException:
            self._file.close()
            raise

    def _parse_header(self) -> None:
        bad = f"{self.path} is not a valid safetensors file"
        raw = self._file.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{bad} (too short); re-download or re-convert it")
        (n,) = struct.unpack("<Q", raw)
        size = self.path.stat().st_size
        if n > min(MAX_HEADER, size - 8):
            raise CheckpointError(f"{bad} (header length {n}); re-download or re-convert it")
        try:
            header = json.loads(self._file.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{bad} (header: {e}); re-download or re-convert it") from None
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self._entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        for key, e in header.items():
            try:
                dtype = DTYPES[e["dtype"]]
                shape = tuple(int(d) for d in e["shape"])
                begin, end = (8 + n + int(o) for o in e["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"{bad} (entry {key!r}); re-download or re-convert it") from None
            numel = 1
            for d in shape:
                numel *= d
            if end - begin != numel * dtype.itemsize or end > size or begin < 8 + n:
                raise CheckpointError(f"{bad} (entry {key!r} has the wrong byte range; truncated?)")
            self._entries[key] = (dtype, shape, begin, end)
        self.shapes: dict[str, tuple[int, ...]] = {k: e[1] for k, e in self._entries.items()}

    def get(self, key: str, dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
        """Tensor `key`; floating-point tensors are cast to `dtype` when given."""
        stored, shape, begin, end = self._entries[key]
        out = torch.empty(shape, dtype=stored)
        if end > begin:
            # Positional reads (no shared file position), so several threads may read at once.
            view = memoryview(out.view(-1).view(torch.uint8).numpy())
            done = 0
            while done < end - begin:
                n = os.preadv(self._file.fileno(), [view[done:]], begin + done)
                if n <= 0:
                    raise CheckpointError(f"{self.path}: unexpected end of file reading {key}; re-download it")
                done += n
        target = dtype if dtype is not None and out.is_floating_point() else stored
        return out.to(device=device, dtype=target)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SafetensorsReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_state_dict(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    allow_pickle: bool = False,
) -> dict[str, torch.Tensor]:
    """Read every tensor of a checkpoint, casting floating-point ones to `dtype` (integer ones keep theirs).

    A pickle's top-level "state_dict" entry is unwrapped (Lightning/sgm `.ckpt`); the rest of it is dropped.
    """
    path = _existing(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        out = {}
        with _open(path) as f:
            for key in f.keys():
                out[key] = _place(f.get_tensor(key), device, dtype)  # the uncast tensor dies here
        return out
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise CheckpointError(
                f"refusing pickle checkpoint {path}: unpickling can run arbitrary code; pass --allow-pickle "
                "(loads with torch.load(weights_only=True)) or convert it to safetensors"
            )
        sd = _torch_load(path)
        return {key: _place(t, device, dtype) for key, t in sd.items()}
    raise CheckpointError(
        f"unknown checkpoint type '{path.suffix}' for {path}; pass a .safetensors file "
        f"(or {', '.join(PICKLE_SUFFIXES)} with --allow-pickle)"
    )


def read_metadata(path: str | Path) -> dict[str, str]:
    """The safetensors header's `__metadata__` (string to string; empty if absent), without reading tensors."""
    with _open(_safetensors_path(path)) as f:
        return dict(f.metadata() or {})


def list_keys(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Every key's shape, read from the safetensors header alone."""
    with _open(_safetensors_path(path)) as f:
        return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}


def save_state_dict(
    sd: Mapping[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> Path:
    """Write `sd` as safetensors atomically: a crash leaves either the old file or the new one, never half."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise OutputError(f"{path}: weights are written as safetensors; give the file a .safetensors suffix")
    bad = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise TypeError(f"state dict must map str -> Tensor; first bad entry: {bad[0]!r}")
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise TypeError("safetensors metadata must map str -> str; json.dumps other values first")

    tensors, seen = {}, set()
    for key, t in sd.items():
        t = t.detach().to("cpu").contiguous()
        storage = t.untyped_storage().data_ptr() if t.numel() else None
        if storage in seen:  # tied weights share storage: write each under its own name
            t = t.clone()
        elif storage is not None:
            seen.add(storage)
        tensors[key] = t

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    try:
        _write_streaming(tensors, tmp, metadata)
        os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"could not write {path}: {e}") from e
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _write_streaming(tensors: Mapping[str, torch.Tensor], path: Path, metadata: dict[str, str] | None) -> None:
    """The safetensors format written tensor by tensor (the reference `save_file` first copies every
    tensor to bytes, doubling peak memory: 19 GB for an fp32 SVD checkpoint)."""
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for key, t in tensors.items():
        if t.dtype not in DTYPE_NAMES:
            raise TypeError(f"{key}: dtype {t.dtype} cannot be stored in safetensors")
        nbytes = t.numel() * t.element_size()
        header[key] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for t in tensors.values():
            if t.numel():
                f.write(memoryview(t.view(-1).view(torch.uint8).numpy()))
        f.flush()
        os.fsync(f.fileno())  # the bytes are on disk before the name points at them


def check_state_dict(
    expected: Mapping[str, tuple[int, ...]], got: Mapping[str, tuple[int, ...]], layout_name: str
) -> None:
    """Raise if `got` (key -> shape) differs from `expected` in keys or shapes, naming the first offenders."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    misshaped = [k for k in expected if k in got and tuple(expected[k]) != tuple(got[k])]
    if not (missing or unexpected or misshaped):
        return
    first = []
    if missing:
        first.append("missing " + ", ".join(missing[:SHOW]))
    if unexpected:
        first.append("unexpected " + ", ".join(unexpected[:SHOW]))
    if misshaped:
        first.append(
            "mis-shaped "
            + ", ".join(f"{k} (expected {_shape(expected[k])}, got {_shape(got[k])})" for k in misshaped[:SHOW])
        )
    raise CheckpointError(
        f"{layout_name}: {len(missing)} missing, {len(unexpected)} unexpected, {len(misshaped)} mis-shaped keys; "
        f"first: {'; '.join(first)}"
    )


# -------------------------------------------------------------------------------------- helpers


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "not found"
        raise CheckpointError(f"checkpoint {path} {what}; pass the path of a .safetensors file")
    return path


def _safetensors_path(path: str | Path) -> Path:
    path = _existing(path)
    if path.suffix.lower() != ".safetensors":
        raise CheckpointError(f"{path} is not a .safetensors file; only safetensors headers can be read without loading")
    return path


def _open(path: Path):  # -> safetensors safe_open handle (a context manager)
    try:
        return safe_open(str(path), framework="pt", device="cpu")  # memory-mapped, reads nothing yet
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is not a valid safetensors file ({e}); re-download or re-convert it") from e


def _place(t: torch.Tensor, device: str | torch.device, dtype: torch.dtype | None) -> torch.Tensor:
    cast = dtype if dtype is not None and t.is_floating_point() else None
    return t.to(device=device, dtype=cast)


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    def load(mmap: bool) -> object:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)

    try:
        try:
            obj = load(mmap=True)  # zip-format checkpoints are mapped, not read into RAM
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            obj = load(mmap=False)  # legacy (pre-1.6) format cannot be mapped
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))  # torch's message runs to 10 lines
        reason = f"it needs {found[1]}" if found else type(e).__name__
        raise CheckpointError(
            f"{path} holds objects other than tensors, which weights_only loading refuses ({reason}); "
            "convert it to safetensors where you trust the file"
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path} as a torch checkpoint ({e}); re-download it") from e

    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict; save model.state_dict() instead")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entry {bad[0]!r} is not a tensor; this is not a plain state dict")
    return dict(obj)


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"
