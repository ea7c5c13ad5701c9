"""Weight-file I/O on real files: safetensors round trips, casting, pickle refusal, atomic saves."""

from __future__ import annotations

import weakref
from pathlib import Path

import pytest
import safetensors
import torch
from safetensors.torch import load_file, save_file

import kinetograph.io.safetensors as st
from kinetograph.errors import CheckpointError, OutputError
from kinetograph.io.safetensors import check_state_dict, list_keys, load_state_dict, read_metadata, save_state_dict


@pytest.fixture
def sd() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "model.diffusion_model.input_blocks.0.0.weight": torch.randn(8, 4, 3, 3, generator=g),
        "model.diffusion_model.input_blocks.0.0.bias": torch.randn(8, generator=g),
        "first_stage_model.decoder.mix_factor": torch.tensor(0.25),  # 0-d, like the real file
        "conditioner.embedders.0.open_clip.model.positional_embedding": torch.randn(77, 16, generator=g).half(),
        "steps": torch.arange(6, dtype=torch.int64),
    }


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


def test_round_trip_metadata_and_header(tmp_path: Path, sd: dict[str, torch.Tensor]) -> None:
    path = save_state_dict(sd, tmp_path / "sub" / "w.safetensors", metadata={"layout": "sgm", "preset": "svd"})
    assert path.is_file()  # missing parent folder was created
    _assert_same(load_state_dict(path), sd)
    _assert_same(load_file(path), sd)  # a plain safetensors reader agrees: the file is standard
    assert read_metadata(path) == {"layout": "sgm", "preset": "svd"}
    assert list_keys(path) == {k: tuple(v.shape) for k, v in sd.items()}
    assert list_keys(path)["first_stage_model.decoder.mix_factor"] == ()


def test_metadata_absent_is_empty(tmp_path: Path, sd: dict[str, torch.Tensor]) -> None:
    save_file(sd, tmp_path / "plain.safetensors")
    assert read_metadata(tmp_path / "plain.safetensors") == {}


def test_dtype_cast_floats_only(tmp_path: Path, sd: dict[str, torch.Tensor]) -> None:
    path = save_state_dict(sd, tmp_path / "w.safetensors")
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        got = load_state_dict(path, dtype=dtype)
        for k, v in sd.items():
            want = v.to(dtype) if v.is_floating_point() else v  # integer tensors keep their dtype
            assert got[k].dtype == want.dtype, (k, dtype)
            assert torch.equal(got[k], want), (k, dtype)


def test_cast_holds_one_source_tensor_at_a_time(
    tmp_path: Path, sd: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Casting must not keep the uncast tensors: at most one fp32 source may be alive at a time."""
    path = save_state_dict(sd, tmp_path / "w.safetensors")
    sources: list[weakref.ref] = []
    real_open = safetensors.safe_open

    class Watched:
        def __init__(self, *args, **kwargs):
            self.f = real_open(*args, **kwargs)

        def __enter__(self):
            self.f.__enter__()
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

        def keys(self):
            return self.f.keys()

        def get_tensor(self, key):
            alive = [r() for r in sources if r() is not None]
            # Tensors already fp16 (or integer) are kept as they are; any other source must be gone.
            casted = [x for x in alive if x.is_floating_point() and x.dtype != torch.float16]
            assert not casted, "an earlier uncast tensor is still referenced while loading the next"
            t = self.f.get_tensor(key)
            sources.append(weakref.ref(t))
            return t

    monkeypatch.setattr(st, "safe_open", Watched)
    got = load_state_dict(path, dtype=torch.float16)
    assert len(sources) == len(sd)
    kept = [r() for r in sources if r() is not None]
    assert len(kept) == 2 and all(x.dtype in (torch.float16, torch.int64) for x in kept)
    _assert_same(got, {k: v.half() if v.is_floating_point() else v for k, v in sd.items()})


def test_pickle_refused_by_default(tmp_path: Path, sd: dict[str, torch.Tensor]) -> None:
    for suffix in (".ckpt", ".pt", ".pth", ".bin"):
        path = tmp_path / f"w{suffix}"
        torch.save(sd, path)
        with pytest.raises(CheckpointError, match="refusing pickle checkpoint.*--allow-pickle.*safetensors"):
            load_state_dict(path)


def test_pickle_allowed_unwraps_state_dict(tmp_path: Path, sd: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "svd.ckpt"
    torch.save({"state_dict": sd, "global_step": 12, "epoch": 1}, path)  # Lightning/sgm shape
    _assert_same(load_state_dict(path, allow_pickle=True), sd)
    got = load_state_dict(path, allow_pickle=True, dtype=torch.bfloat16)
    assert got["model.diffusion_model.input_blocks.0.0.bias"].dtype == torch.bfloat16
    assert got["steps"].dtype == torch.int64
    legacy = tmp_path / "legacy.pt"  # pre-zip format: cannot be memory-mapped, must still load
    torch.save(sd, legacy, _use_new_zipfile_serialization=False)
    _assert_same(load_state_dict(legacy, allow_pickle=True), sd)


class _Payload:
    """Unpickling this would create a file: the classic pickle attack, made visible."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_malicious_pickle_fails_even_when_allowed(tmp_path: Path, sd: dict[str, torch.Tensor]) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": sd, "hook": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="refusing pickle"):
        load_state_dict(path)
    with pytest.raises(CheckpointError, match="objects other than tensors.*open"):
        load_state_dict(path, allow_pickle=True)
    assert not marker.exists()


def test_pickle_of_non_tensors_rejected(tmp_path: Path) -> None:
    path = tmp_path / "notsd.pt"
    torch.save({"a": torch.ones(2), "lr": 0.1}, path)
    with pytest.raises(CheckpointError, match="'lr' is not a tensor"):
        load_state_dict(path, allow_pickle=True)


def test_missing_corrupt_and_unknown_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_state_dict(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        list_keys(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        load_state_dict(bad)
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        read_metadata(bad)
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unknown checkpoint type"):
        load_state_dict(tmp_path / "w.npz")
    with pytest.raises(CheckpointError, match="folder"):
        load_state_dict(tmp_path)


def test_save_is_atomic_on_failure(tmp_path: Path, sd: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_state_dict(sd, tmp_path / "w.safetensors", metadata={"v": "old"})
    before = path.read_bytes()

    def half_written(tensors, filename, metadata=None):  # dies halfway, like a full disk
        Path(filename).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(st, "_write_streaming", half_written)
    new = {k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}
    with pytest.raises(OutputError, match="could not write"):
        save_state_dict(new, path, metadata={"v": "new"})
    assert path.read_bytes() == before  # old file intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]  # no temp left behind


def test_save_overwrites_and_handles_views(tmp_path: Path) -> None:
    w = torch.randn(6, 4)
    sd = {"emb.weight": w, "head.weight": w, "half": w[:, :2], "t": w.t()}  # tied, non-contiguous
    path = save_state_dict(sd, tmp_path / "w.safetensors")
    got = load_state_dict(path)
    for k, v in sd.items():
        assert torch.equal(got[k], v), k
    save_state_dict({"x": torch.zeros(1)}, path)
    assert list_keys(path) == {"x": (1,)}
    with pytest.raises(OutputError, match=".safetensors suffix"):
        save_state_dict(sd, tmp_path / "w.bin")
    with pytest.raises(TypeError, match="str -> str"):
        save_state_dict(sd, tmp_path / "m.safetensors", metadata={"steps": 3})  # type: ignore[dict-item]


def test_check_state_dict_messages() -> None:
    expected = {f"block.{i}.weight": (4, 4) for i in range(6)} | {"out.bias": (4,)}
    check_state_dict(expected, dict(expected), "sgm")  # identical: no error
    check_state_dict(expected, {k: torch.Size(v) for k, v in expected.items()}, "sgm")  # Size == tuple

    got = {k: v for k, v in expected.items() if k not in {f"block.{i}.weight" for i in range(4)}}
    got |= {"extra.a": (1,), "out.bias": (5,)}
    with pytest.raises(CheckpointError) as info:
        check_state_dict(expected, got, "diffusers unet")
    msg = str(info.value)
    assert msg.startswith("diffusers unet: 4 missing, 1 unexpected, 1 mis-shaped keys; first: ")
    assert "missing block.0.weight, block.1.weight, block.2.weight;" in msg
    assert "block.3.weight" not in msg  # only the first few are named
    assert "unexpected extra.a" in msg
    assert "mis-shaped out.bias (expected (4), got (5))" in msg
    assert "\n" not in msg


def test_streaming_writer_and_reader_agree_with_the_reference_library(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    sd = {
        "a": torch.randn(3, 5),
        "b": torch.randn(7).to(torch.bfloat16),
        "c": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "scalar": torch.tensor(4.5),
        "empty": torch.zeros(0, 4),
        "half": torch.randn(2, 2).half(),
    }
    ours = st.save_state_dict(sd, tmp_path / "ours.safetensors", metadata={"k": "v"})
    back = load_file(ours)  # the reference reader accepts our file ...
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
    assert st.read_metadata(ours) == {"k": "v"}
    save_file(sd, tmp_path / "ref.safetensors", metadata={"k": "v"})
    for path in (ours, tmp_path / "ref.safetensors"):  # ... and our reader reads both
        with st.SafetensorsReader(path) as r:
            assert r.metadata == {"k": "v"} and r.shapes == {k: tuple(v.shape) for k, v in sd.items()}
            for k, v in sd.items():
                got = r.get(k)
                assert got.dtype == v.dtype and torch.equal(got, v)
                assert got.data_ptr() % 16 == 0  # own, aligned memory, not a view of the file
            assert r.get("a", dtype=torch.float16).dtype == torch.float16
            assert r.get("c", dtype=torch.float16).dtype == torch.int64  # integers keep their dtype


def test_reader_rejects_truncated_and_garbage_files(tmp_path: Path) -> None:
    good = st.save_state_dict({"w": torch.randn(64)}, tmp_path / "g.safetensors")
    data = good.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-10])
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 64)
    for name in ("cut.safetensors", "junk.safetensors"):
        with pytest.raises(CheckpointError, match="safetensors"):
            st.SafetensorsReader(tmp_path / name)
