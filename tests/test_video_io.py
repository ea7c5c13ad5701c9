"""Video writing/reading on real pictures: MP4 (H.264), GIF, WebP, PNG folders; atomic on failure."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageSequence

import kinetograph.io.video as video
from kinetograph.errors import InputError, OutputError
from kinetograph.io.video import read_video, save_video, video_info


def _pan(t: int = 8, h: int = 64, w: int = 96) -> np.ndarray:
    """A camera pan across the astronaut photo: (t, h, w, 3) uint8, every frame different."""
    a = skimage.data.astronaut()
    return np.stack([a[100 + 6 * i : 100 + 6 * i + h, 150 + 9 * i : 150 + 9 * i + w] for i in range(t)])


def _top_level_boxes(path: Path) -> list[str]:
    data, boxes, i = path.read_bytes(), [], 0
    while i + 8 <= len(data):
        size = int.from_bytes(data[i : i + 4], "big")
        boxes.append(data[i + 4 : i + 8].decode("latin-1"))
        if size < 8:
            break
        i += size
    return boxes


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_mp4_round_trip(tmp_path: Path) -> None:
    frames = _pan()
    path = save_video(frames, tmp_path / "clip.mp4", fps=7)
    info = video_info(path)
    assert info == dict(codec="h264", pix_fmt="yuv420p", width=96, height=64, frames=8, fps=7.0)
    got, fps = read_video(path)
    assert got.shape == frames.shape and got.dtype == np.uint8 and fps == 7.0
    err = np.abs(got.astype(np.int16) - frames)
    assert err.mean() < 3.0 and np.percentile(err, 99) < 20  # crf 18: visually lossless
    assert got[3].astype(float).mean() == pytest.approx(frames[3].mean(), abs=1.5)  # no colour-matrix shift
    data = path.read_bytes()
    assert b"crf=18.0" in data  # x264 writes its settings into the stream
    boxes = _top_level_boxes(path)
    assert boxes.index("moov") < boxes.index("mdat")  # faststart: playable while downloading
    with av.open(str(path)) as c:
        cc = c.streams.video[0].codec_context
        assert (cc.profile, cc.colorspace, cc.color_range) == ("High", 1, 1)  # BT.709, limited range
    assert read_video(path, max_frames=3)[0].shape[0] == 3


def test_mp4_saturated_colours(tmp_path: Path) -> None:
    """Flat patches of primaries survive encode+decode: the writer and reader use the same matrix."""
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0), (200, 120, 40)]
    frame = np.zeros((32, 16 * len(colours), 3), np.uint8)
    for i, c in enumerate(colours):
        frame[:, 16 * i : 16 * (i + 1)] = c
    got, _ = read_video(save_video(np.stack([frame] * 3), tmp_path / "c.mp4", fps=24))
    for i, c in enumerate(colours):
        centre = got[1, 8:24, 16 * i + 4 : 16 * i + 12].reshape(-1, 3).astype(int)
        assert np.abs(centre - c).max() <= 4, (c, centre.mean(0))


def test_mp4_odd_size_is_edge_padded(tmp_path: Path) -> None:
    frames = _pan(t=5, h=63, w=95)
    path = save_video(frames, tmp_path / "odd.mp4", fps=25)
    assert (video_info(path)["height"], video_info(path)["width"]) == (64, 96)
    got, _ = read_video(path)
    assert np.abs(got[:, :63, :95].astype(int) - frames).mean() < 4.0
    # Same pixels as encoding a copy padded by repeating the last row and column ourselves.
    padded = np.concatenate([frames, frames[:, -1:]], axis=1)
    padded = np.concatenate([padded, padded[:, :, -1:]], axis=2)
    ref, _ = read_video(save_video(padded, tmp_path / "even.mp4", fps=25))
    assert np.array_equal(got, ref)


def test_mp4_fractional_fps(tmp_path: Path) -> None:
    path = save_video(_pan(t=4), tmp_path / "ntsc.mp4", fps=29.97)
    assert video_info(path)["fps"] == pytest.approx(29.97, abs=1e-6)


def test_gif(tmp_path: Path) -> None:
    frames = _pan()
    path = save_video(frames, tmp_path / "clip.gif", fps=7)
    with Image.open(path) as im:
        assert im.n_frames == 8 and im.info["loop"] == 0  # loops forever
        durations = [f.info["duration"] for f in ImageSequence.Iterator(im)]
    assert durations == [140, 150, 140, 140, 140, 150, 140, 140]  # 10 ms grid tracking i * 1000 / 7
    got, fps = read_video(path)
    assert got.shape == frames.shape and fps == pytest.approx(7.0, rel=0.01)
    assert np.abs(got.astype(int) - frames).mean() < 6.0  # 256-colour palette per frame
    assert video_info(path) == dict(codec="gif", pix_fmt="P", width=96, height=64, frames=8, fps=fps)
    with pytest.raises(OutputError, match="at most 50 fps"):
        save_video(frames, tmp_path / "fast.gif", fps=60)


def test_webp(tmp_path: Path) -> None:
    frames = _pan(t=6)
    path = save_video(frames, tmp_path / "clip.webp", fps=8)
    with Image.open(path) as im:
        assert im.n_frames == 6 and im.is_animated and im.info["loop"] == 0
    got, fps = read_video(path)
    assert got.shape == frames.shape and fps == pytest.approx(8.0, rel=1e-6)  # 125 ms each, exact
    assert np.abs(got.astype(int) - frames).mean() < 4.0
    info = video_info(path)
    assert (info["codec"], info["frames"], info["width"], info["height"]) == ("webp", 6, 96, 64)


@pytest.mark.parametrize("name", ["frames/", "frames"])
def test_png_folder(tmp_path: Path, name: str) -> None:
    frames = _pan(t=5, h=33, w=47)
    out = save_video(frames, str(tmp_path / "out") + "/" + name, fps=6)
    assert out == tmp_path / "out" / "frames" and out.is_dir()  # parent "out" was created
    assert _listing(out) == [f"frame_000{i}.png" for i in range(5)]
    got, fps = read_video(out)
    assert np.array_equal(got, frames) and fps == 6.0  # lossless, fps kept as PNG text
    assert video_info(out) == dict(codec="png", pix_fmt="RGB", width=47, height=33, frames=5, fps=6.0)
    # Saving again replaces the old frames (fewer now), leaving no stale ones.
    save_video(frames[:2], out, fps=6)
    assert _listing(out) == ["frame_0000.png", "frame_0001.png"]
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="holds other files"):
        save_video(frames, out, fps=6)


def test_unsupported_paths(tmp_path: Path) -> None:
    frames = _pan(t=2)
    with pytest.raises(OutputError, match=r"'\.avi'.*\.mp4.*\.gif.*\.webp.*folder"):
        save_video(frames, tmp_path / "x.avi", fps=7)
    with pytest.raises(OutputError, match="folder path ending in '/'"):
        save_video(frames, tmp_path / "x.png", fps=7)
    with pytest.raises(InputError, match="uint8"):
        save_video(frames.astype(np.float32), tmp_path / "x.mp4", fps=7)
    with pytest.raises(InputError, match=r"\(t, h, w, 3\)"):
        save_video(frames[0], tmp_path / "x.mp4", fps=7)
    with pytest.raises(InputError, match="fps"):
        save_video(frames, tmp_path / "x.mp4", fps=0)
    assert _listing(tmp_path) == []


def test_missing_h264_encoder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_codec(name: str, mode: str = "r") -> None:
        raise av.codec.codec.UnknownCodecError(name)

    monkeypatch.setattr(video.av.codec, "Codec", no_codec)
    with pytest.raises(OutputError, match="no H.264 encoder.*pip install"):
        save_video(_pan(t=2), tmp_path / "x.mp4", fps=7)


def _fail_on_third(monkeypatch: pytest.MonkeyPatch, owner: object, attr: str) -> None:
    real, calls = getattr(owner, attr), []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, attr, flaky)


@pytest.mark.parametrize(
    ("name", "owner", "attr"),
    [
        ("clip.mp4", av.VideoFrame, "from_ndarray"),  # fails mid-encode, after frames were muxed
        ("clip.gif", Image, "fromarray"),
        ("clip.webp", Image, "fromarray"),
        ("frames/", Image, "fromarray"),  # fails after two PNGs were written
    ],
)
def test_atomic_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, owner: object, attr: str) -> None:
    frames = _pan(t=6)
    # Into a new folder: nothing at all may remain, not even the folder.
    _fail_on_third(monkeypatch, owner, attr)
    with pytest.raises(OutputError, match="disk on fire"):
        save_video(frames, str(tmp_path / "new" / "deeper") + "/" + name, fps=7)
    assert _listing(tmp_path) == []
    monkeypatch.undo()

    # Over an existing output: the old one survives untouched.
    old = save_video(frames[:2], str(tmp_path) + "/" + name, fps=7)
    before = {p: p.read_bytes() for p in ([old] if old.is_file() else sorted(old.iterdir()))}
    listing = _listing(tmp_path)
    _fail_on_third(monkeypatch, owner, attr)
    with pytest.raises(OutputError):
        save_video(frames, str(tmp_path) + "/" + name, fps=7)
    assert _listing(tmp_path) == listing
    assert {p: p.read_bytes() for p in before} == before


def test_read_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_video(tmp_path / "nope.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        read_video(tmp_path / "empty.mp4")
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(InputError, match="cannot read .*noise.mp4"):
        read_video(tmp_path / "noise.mp4")
    with pytest.raises(InputError, match="cannot read"):
        video_info(tmp_path / "noise.mp4")
    good = save_video(_pan(), tmp_path / "good.mp4", fps=7).read_bytes()
    for keep in (len(good) // 3, len(good) * 5 // 6):  # moov comes first: the cut removes media data
        (tmp_path / "cut.mp4").write_bytes(good[:keep])
        with pytest.raises(InputError, match="cut.mp4 is (corrupt|truncated)"):
            read_video(tmp_path / "cut.mp4")
    Image.fromarray(_pan()[0]).save(tmp_path / "still.png")
    with pytest.raises(InputError, match="no frame_NNNN.png"):
        video_info(tmp_path)
    gif = save_video(_pan(t=3), tmp_path / "g.gif", fps=5).read_bytes()
    (tmp_path / "cut.gif").write_bytes(gif[: len(gif) // 2])
    with pytest.raises(InputError, match="truncated or corrupt"):
        read_video(tmp_path / "cut.gif")
