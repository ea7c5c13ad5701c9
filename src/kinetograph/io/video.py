"""Write and read short videos: H.264 MP4 (PyAV), animated GIF and WebP (Pillow), PNG frame folders.

The output format follows the path:
- `*.mp4`  -> H.264 (libx264), yuv420p, BT.709 tagged, crf 18, `moov` atom first ("faststart")
  so browsers start playing before the download ends. yuv420p needs even sizes, so an odd
  height or width is padded by one row/column that repeats the edge (the file is then 1 px larger).
- `*.gif`  -> looping GIF; frame times are rounded to the GIF's 10 ms grid so the total
  length stays right (e.g. 7 fps -> 140, 150, 140, ... ms). At most 50 fps: browsers slow
  frames shorter than 20 ms down to 100 ms.
- `*.webp` -> looping animated WebP (lossy, quality 90), millisecond frame times.
- a path that ends in "/" or has no suffix -> a folder of PNG frames
  `frame_0000.png`, `frame_0001.png`, ... with the fps kept as PNG text ("fps").
  A `*.png` path is refused: one file cannot hold a video.

Every write is atomic: the output is built under a hidden temporary name in the target folder
and renamed into place, so a crash or error never leaves a half-written video, and an existing
output is only replaced once the new one is complete. A missing parent folder is created.

Besides whole files, data curation needs two things here, sharing the same H.264 settings:
- streaming decode of long files, one frame at a time (`iter_av_frames`, `iter_frames`), and
- MP4 bytes in memory for tar shards (`encode_mp4_bytes`, `decode_mp4_bytes`), byte-identical
  from run to run (`deterministic=True`).
"""

from __future__ import annotations

import io
import math
import numbers
import os
import re
import shutil
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import IO

import av
import numpy as np
from av.video.reformatter import ColorRange, Colorspace
from PIL import Image, ImageSequence
from PIL.PngImagePlugin import PngInfo

from kinetograph.errors import InputError, KinetographError, OutputError

MP4_CRF = 18  # visually lossless for x264; SVD's 576x1024 clips stay a few MB
MP4_PRESET = "medium"  # files
SHARD_PRESET = "fast"  # in-memory clips for data shards: many of them, encoding time adds up
# x264 with its lookahead/macroblock-tree (and threads) gave different bytes from run to run on
# the same frames; without them the output is reproducible. For short clips the lost speed and
# the small loss in quality do not matter.
DETERMINISTIC_X264 = "threads=1:sliced-threads=0:rc-lookahead=0:mbtree=0"
WEBP_QUALITY = 90
GIF_MAX_FPS = 50.0
FRAME_NAME = re.compile(r"frame_\d{4,}\.png")
SUPPORTED = ".mp4 (H.264), .gif, .webp, or a folder path ending in '/' (PNG frames)"


def save_video(frames: np.ndarray, path: str | Path, fps: float, *, crf: int = MP4_CRF) -> Path:
    """Write `frames` (t, h, w, 3) uint8 RGB to `path`; the format follows the path (module docstring).

    crf: H.264 quality of an .mp4 (lower is closer to the frames and larger); other formats ignore it.
    Returns the path written (for a frame folder, the folder).
    """
    kind = output_kind(path)
    path = Path(path)
    _check_frames(frames)
    if not (isinstance(fps, numbers.Real) and math.isfinite(fps) and fps > 0):
        raise InputError(f"fps must be a positive number, got {fps!r}")
    if kind == "mp4":
        _require_h264()
    if kind == "gif" and fps > GIF_MAX_FPS:
        raise OutputError(
            f"GIF cannot play {fps:g} fps (browsers slow frames under 20 ms); "
            f"use at most {GIF_MAX_FPS:g} fps or save as .mp4/.webp"
        )

    created = _make_parents(path.parent)
    try:
        if kind == "png":
            _write_png_folder(frames, path, fps)
        else:
            with _atomic_file(path) as tmp:
                if kind == "mp4":
                    _write_mp4(frames, tmp, fps, crf)
                else:
                    {"gif": _write_gif, "webp": _write_webp}[kind](frames, tmp, fps)
    except BaseException as e:
        for d in reversed(created):  # leave no trace of a failed write, not even new folders
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        if isinstance(e, KinetographError) or not isinstance(e, Exception):
            raise
        raise OutputError(f"could not write {path}: {e}") from e
    return path


def read_video(path: str | Path, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """Decode a video into (t, h, w, 3) uint8 RGB frames and its frame rate.

    Reads what `save_video` writes: containers via PyAV (FFmpeg), GIF/WebP via Pillow (FFmpeg
    cannot decode animated WebP), PNG folders via Pillow. fps is 0.0 when the file does not say.
    A file that decodes fewer frames than its header lists (cut off) is an error, not a short clip.
    """
    path = _existing_input(path)
    if max_frames is not None and max_frames < 1:
        raise InputError(f"max_frames must be >= 1, got {max_frames}")
    if path.is_dir():
        frames, fps = _read_png_folder(path, max_frames)
    elif path.suffix.lower() in (".gif", ".webp"):
        frames, fps = _read_animated_image(path, max_frames)
    else:
        frames, fps = _read_container(path, max_frames)
    if not frames:
        raise InputError(f"{path} holds no video frames; check that it is the right file")
    return np.stack(frames), fps


def video_info(path: str | Path) -> dict[str, str | int | float]:
    """codec, pix_fmt, width, height, frames and fps of a video file or PNG frame folder, without decoding frames."""
    path = _existing_input(path)
    if path.is_dir():
        names = _frame_files(path)
        if not names:
            raise InputError(f"{path} holds no frame_NNNN.png files; pass a video file or a frame folder")
        with _open_image(names[0]) as im:
            return dict(codec="png", pix_fmt=im.mode, width=im.width, height=im.height,
                        frames=len(names), fps=_png_fps(im))
    if path.suffix.lower() in (".gif", ".webp"):
        with _open_image(path) as im:
            codec, mode, width, height = im.format.lower(), im.mode, im.width, im.height  # of frame 0
            durations = _durations_ms(im)
            return dict(codec=codec, pix_fmt=mode, width=width, height=height,
                        frames=len(durations), fps=_fps_from_durations(durations))
    with _open_container(path) as container:
        stream = container.streams.video[0]
        frames = stream.frames or sum(1 for p in container.demux(stream) if p.size)  # 0 = not in header
        cc = stream.codec_context
        return dict(codec=cc.name, pix_fmt=cc.format.name if cc.format else "", width=cc.width,
                    height=cc.height, frames=frames, fps=_stream_fps(stream))


# ---------------------------------------------------------------------------------------- writing


def output_kind(path: str | Path) -> str:
    text = os.fspath(path)
    p = Path(text)
    if text.endswith(("/", os.sep)) or p.suffix == "":
        return "png"
    suffix = p.suffix.lower()
    if suffix in (".mp4", ".gif", ".webp"):
        return suffix[1:]
    if suffix == ".png":
        raise OutputError(f"{text}: a .png file holds one image; for PNG frames pass a folder path ending in '/'")
    raise OutputError(f"unsupported output extension '{p.suffix}' in {text}; use {SUPPORTED}")


def _check_frames(frames: np.ndarray) -> None:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
        kind = type(frames).__name__ if not isinstance(frames, np.ndarray) else f"{frames.dtype} array"
        raise InputError(f"frames must be a uint8 numpy array (t, h, w, 3), got {kind}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise InputError(f"frames must have shape (t, h, w, 3) with t, h, w >= 1, got {tuple(frames.shape)}")


def _require_h264() -> None:
    try:
        av.codec.Codec("libx264", "w")
    except Exception as e:
        raise OutputError(
            "this PyAV build has no H.264 encoder (libx264); reinstall the PyPI wheel "
            "(`pip install --force-reinstall av`) or save as .gif/.webp/a PNG folder"
        ) from e


def _make_parents(folder: Path) -> list[Path]:
    """Create `folder` and missing ancestors; return those created, outermost first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    if missing and not folder.is_dir():
        raise OutputError(f"cannot create folder {missing[-1]}: {folder} is a file")
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
    return list(reversed(missing))


def _temp_name(path: Path, suffix: str) -> Path:
    """A fresh hidden name beside `path`: same folder, so the final rename is atomic."""
    while (tmp := path.with_name(f".{path.name}.{secrets.token_hex(4)}{suffix}")).exists():
        pass
    return tmp


@contextmanager
def _atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` if the body succeeds, else delete it."""
    if path.is_dir():
        raise OutputError(f"{path} is a folder; pass a file name or delete the folder")
    tmp = _temp_name(path, ".part")  # the writer creates it, with the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_mp4(frames: np.ndarray, tmp: Path, fps: float, crf: int) -> None:
    t, h, w, _ = frames.shape
    # yuv420p stores colour at half resolution and needs even sizes: repeat the last row/column.
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    _encode_h264(str(tmp), frames, fps, crf=crf, preset=MP4_PRESET, deterministic=False, faststart=True)


def encode_mp4_bytes(
    frames: np.ndarray, fps: float, *, crf: int = MP4_CRF, deterministic: bool = True
) -> bytes:
    """H.264 MP4 bytes of `frames` (t, h, w, 3) uint8 with even h and w, e.g. for a tar shard.

    Same encoder settings as `save_video`; with `deterministic` the same frames give the same bytes.
    """
    t, h, w, _ = frames.shape
    assert frames.dtype == np.uint8 and h % 2 == 0 and w % 2 == 0, (frames.dtype, h, w)
    buf = io.BytesIO()
    _encode_h264(buf, frames, fps, crf=crf, preset=SHARD_PRESET, deterministic=deterministic, faststart=False)
    return buf.getvalue()


def _encode_h264(
    target: str | IO[bytes],
    frames: np.ndarray,  # (t, h, w, 3) uint8, even h and w
    fps: float,
    *,
    crf: int,
    preset: str,
    deterministic: bool,  # same frames -> same bytes (x264 single-threaded, no lookahead)
    faststart: bool,  # `moov` atom first, for files browsers play while downloading
) -> None:
    """The one H.264 encoder: yuv420p, BT.709 limited range (tagged and converted), constant quality."""
    rate = Fraction(fps).limit_denominator(1001)  # 29.97 -> 2997/100; 7 -> 7
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(target, "w", format="mp4", options=options) as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"  # 4:2:0 8-bit: the only H.264 flavour every browser plays
        x264 = {"x264-params": DETERMINISTIC_X264} if deterministic else {}
        stream.options = {"crf": str(crf), "preset": preset, **x264}
        cc = stream.codec_context
        # Tag BT.709 limited range and convert with the same matrix, so players do not guess.
        cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range = 1, 1, 1, 1
        for i, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            vf = vf.reformat(format="yuv420p", dst_colorspace=Colorspace.ITU709, dst_color_range=ColorRange.MPEG)
            vf.pts = i
            container.mux(stream.encode(vf))
        container.mux(stream.encode(None))  # flush delayed (B-)frames


def _frame_times(n: int, fps: float, tick_ms: int) -> list[int]:
    """Per-frame durations in ms on a `tick_ms` grid whose running sum tracks i * 1000 / fps."""
    ends = [round((i + 1) * 1000 / fps / tick_ms) * tick_ms for i in range(n)]
    return [max(e - s, tick_ms) for s, e in zip([0, *ends[:-1]], ends)]


def _write_gif(frames: np.ndarray, tmp: Path, fps: float) -> None:
    images = [Image.fromarray(f) for f in frames]
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                   duration=_frame_times(len(images), fps, 10), loop=0)


def _write_webp(frames: np.ndarray, tmp: Path, fps: float) -> None:
    images = [Image.fromarray(f) for f in frames]
    images[0].save(tmp, format="WEBP", save_all=True, append_images=images[1:],
                   duration=_frame_times(len(images), fps, 1), loop=0, quality=WEBP_QUALITY)


def _write_png_folder(frames: np.ndarray, folder: Path, fps: float) -> None:
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder} is a file; pass a new folder path for PNG frames")
    if folder.is_dir():
        others = [p.name for p in folder.iterdir() if not FRAME_NAME.fullmatch(p.name)]
        if others:
            raise OutputError(f"{folder} holds other files ({others[0]}, ...); pass a new or empty folder")
    tmp = _temp_name(folder, ".part")
    tmp.mkdir()
    old = None
    try:
        digits = max(4, len(str(len(frames) - 1)))
        meta = PngInfo()
        meta.add_text("fps", repr(float(fps)))
        for i, frame in enumerate(frames):
            Image.fromarray(frame).save(tmp / f"frame_{i:0{digits}d}.png", format="PNG", pnginfo=meta)
        if folder.is_dir():  # swap out the previous frames only once the new set is complete
            old = _temp_name(folder, ".old")
            os.replace(folder, old)
        os.replace(tmp, folder)
    except BaseException:
        if old is not None and not folder.exists():
            os.replace(old, folder)
            old = None
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------- reading


def _existing_input(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(f"video not found: {path}; check the path")
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(f"{path} is empty (0 bytes); it was not written completely, make it again")
    return path


def iter_av_frames(path: str | Path) -> Iterator[av.VideoFrame]:
    """Yield PyAV frames of a (possibly hour-long) file in display order, one at a time.

    Convert each with `.to_ndarray(format="rgb24", width=..., height=...)`: libswscale resizes far
    cheaper than numpy. A file that breaks halfway raises InputError after the good frames were
    yielded, so the caller decides whether a partial decode is acceptable.
    """
    path = Path(path)
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            yield from container.decode(stream)
    except (av.FFmpegError, UnicodeDecodeError, ValueError, IndexError) as e:
        raise InputError(f"{path}: cannot decode ({ffmpeg_reason(e)}); re-encode it with ffmpeg or remove it") from e


def iter_frames(path: str | Path, width: int | None = None, height: int | None = None) -> Iterator[np.ndarray]:
    """Yield RGB uint8 frames (h, w, 3) in display order, resized to (width, height) if given."""
    for frame in iter_av_frames(path):
        yield frame.to_ndarray(format="rgb24", width=width, height=height)


def decode_mp4_bytes(data: bytes) -> tuple[np.ndarray, float]:
    """Decode MP4 bytes (e.g. from a tar shard) into (t, h, w, 3) uint8 RGB frames and the frame rate."""
    frames, fps = _read_container(io.BytesIO(data), None, name="MP4 data")
    if not frames:
        raise InputError("MP4 data holds no video frames; rebuild the shard")
    return np.stack(frames), fps


def ffmpeg_reason(e: Exception) -> str:
    """The first line of a PyAV/FFmpeg error (at most 160 characters), for one-line messages."""
    return str(e).splitlines()[0][:160] if str(e) else type(e).__name__


@contextmanager
def _open_container(source: Path | IO[bytes], name: str | None = None) -> Iterator[av.container.InputContainer]:
    name = name or str(source)
    try:
        container = av.open(source if isinstance(source, io.IOBase) else str(source))
    except av.error.FFmpegError as e:
        raise InputError(f"cannot read {name} as a video ({e.strerror}); check the file or re-encode it") from e
    try:
        if not container.streams.video:
            raise InputError(f"{name} has no video stream; pass a video file")
        yield container
    finally:
        container.close()


def _read_container(
    source: Path | IO[bytes], max_frames: int | None, name: str | None = None
) -> tuple[list[np.ndarray], float]:
    name = name or str(source)
    frames: list[np.ndarray] = []
    with _open_container(source, name) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))  # converts with the stream's tagged matrix
                if max_frames is not None and len(frames) >= max_frames:
                    break
        except av.error.FFmpegError as e:
            raise InputError(f"{name} is corrupt after {len(frames)} frames ({e.strerror}); re-encode it") from e
        expected = stream.frames if max_frames is None else min(stream.frames, max_frames)
        if len(frames) < expected:  # FFmpeg stops quietly where a cut-off file ends
            raise InputError(f"{name} is truncated: its header lists {stream.frames} frames, {len(frames)} decode")
        return frames, _stream_fps(stream)


def _stream_fps(stream: av.video.stream.VideoStream) -> float:
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else 0.0


@contextmanager
def _open_image(path: Path) -> Iterator[Image.Image]:
    try:
        im = Image.open(path)
    except (OSError, Image.DecompressionBombError) as e:
        raise InputError(f"cannot read {path} as an image ({e}); check the file") from e
    try:
        yield im
    finally:
        im.close()


def _durations_ms(im: Image.Image) -> list[float]:
    durations = []
    try:
        for frame in ImageSequence.Iterator(im):
            frame.load()  # WebP reports a frame's duration only once it is decoded
            durations.append(float(frame.info.get("duration") or 0))
    except OSError as e:
        raise InputError(f"{im.filename} is truncated or corrupt ({e}); make it again") from e
    return durations


def _fps_from_durations(durations: list[float]) -> float:
    total = sum(durations)
    return 1000 * len(durations) / total if total > 0 else 0.0


def _read_animated_image(path: Path, max_frames: int | None) -> tuple[list[np.ndarray], float]:
    frames, durations = [], []
    with _open_image(path) as im:
        try:
            for frame in ImageSequence.Iterator(im):
                frames.append(np.asarray(frame.convert("RGB")))  # GIF frames come composited by Pillow
                durations.append(float(frame.info.get("duration") or 0))
                if max_frames is not None and len(frames) >= max_frames:
                    break
        except OSError as e:
            raise InputError(f"{path} is truncated or corrupt ({e}); make it again") from e
    return frames, _fps_from_durations(durations)


def _frame_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if FRAME_NAME.fullmatch(p.name)), key=lambda p: int(p.stem[6:]))


def _png_fps(im: Image.Image) -> float:
    try:
        return float(im.info.get("fps", 0.0))
    except ValueError:
        return 0.0


def _read_png_folder(folder: Path, max_frames: int | None) -> tuple[list[np.ndarray], float]:
    names = _frame_files(folder)[:max_frames]
    frames, fps = [], 0.0
    for i, name in enumerate(names):
        with _open_image(name) as im:
            if i == 0:
                fps = _png_fps(im)
            try:
                frames.append(np.asarray(im.convert("RGB")))
            except OSError as e:
                raise InputError(f"{name} is truncated or corrupt ({e}); make it again") from e
    if frames and any(f.shape != frames[0].shape for f in frames):
        raise InputError(f"frames in {folder} differ in size; all frame_NNNN.png must match")
    return frames, fps
