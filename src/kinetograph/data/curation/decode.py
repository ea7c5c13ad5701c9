"""Streaming video decoding for curation: probe a file, then yield small frames one at a time.

Curation must cope with hour-long inputs, so nothing here loads a whole file: frames come out of
PyAV one by one, already downscaled by libswscale (much cheaper than resizing in numpy).
Failures become `InputError`s whose message is the reason written into the manifest.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from kinetograph.errors import InputError

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".gif")


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video stream, before any frame is decoded."""

    fps: float  # average frame rate of the stream
    width: int
    height: int
    num_frames: int  # from the container; 0 when it does not say (then counted while decoding)
    duration_s: float


def probe(path: str | Path) -> VideoInfo:
    """Read stream metadata; raise InputError with a one-line reason for empty or broken files."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file; check the path")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file (0 bytes); re-download or remove it")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(f"{path}: no video stream; pass a video file")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else 0.0
            width, height = stream.codec_context.width, stream.codec_context.height
            num_frames = int(stream.frames or 0)
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / av.time_base
            else:
                duration = num_frames / fps if fps else 0.0
    except InputError:
        raise
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"{path}: cannot decode ({_short(e)}); re-encode it with ffmpeg or remove it") from e
    if fps <= 0 or width <= 0 or height <= 0:
        raise InputError(f"{path}: stream has no frame rate or size; re-encode it with ffmpeg")
    return VideoInfo(fps=fps, width=width, height=height, num_frames=num_frames, duration_s=duration)


def analysis_size(width: int, height: int, target_width: int) -> tuple[int, int]:
    """(w, h) with w = target_width (never upscaled) and the aspect ratio kept, both even."""
    w = min(target_width, width)
    h = max(2, int(round(height * w / width / 2)) * 2)
    return w - w % 2, h


def iter_av_frames(path: str | Path) -> Iterator[av.VideoFrame]:
    """Yield PyAV frames in display order (convert each with `.to_ndarray(format="rgb24", ...)`).

    A file that breaks halfway raises InputError after the good frames were yielded, so the
    caller decides whether a partial decode is acceptable.
    """
    path = Path(path)
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            yield from container.decode(stream)
    except (av.FFmpegError, UnicodeDecodeError, ValueError, IndexError) as e:
        raise InputError(f"{path}: cannot decode ({_short(e)}); re-encode it with ffmpeg or remove it") from e


def iter_frames(
    path: str | Path, width: int | None = None, height: int | None = None
) -> Iterator[np.ndarray]:
    """Yield RGB uint8 frames (h, w, 3) in display order, resized to (width, height) if given."""
    for frame in iter_av_frames(path):
        yield frame.to_ndarray(format="rgb24", width=width, height=height)


def read_range(
    path: str | Path, start: int, end: int, width: int | None = None, height: int | None = None
) -> np.ndarray:
    """Frames [start, end) of a file as (t, h, w, 3) uint8; decodes sequentially, stops at `end`."""
    frames = []
    for i, frame in enumerate(iter_frames(path, width, height)):
        if i >= end:
            break
        if i >= start:
            frames.append(frame)
    if not frames:
        raise InputError(f"{path}: no frames in [{start}, {end}); the manifest is stale, re-run curate")
    return np.stack(frames)


def encode_mp4(frames: np.ndarray, fps: float, crf: int = 18) -> bytes:
    """H.264 (yuv420p) mp4 bytes of frames (t, h, w, 3) uint8; h and w must be even."""
    t, h, w, _ = frames.shape
    assert frames.dtype == np.uint8 and h % 2 == 0 and w % 2 == 0, (frames.dtype, h, w)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=_rate(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        # x264 with its lookahead/macroblock-tree (and threads) gave different bytes from run to run
        # on the same frames; without them the shards are reproducible. Clips are short and
        # parallelism is per clip, so the lost speed and the small loss in quality do not matter.
        x264 = "threads=1:sliced-threads=0:rc-lookahead=0:mbtree=0"
        stream.options = {"crf": str(crf), "preset": "fast", "x264-params": x264}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buf.getvalue()


def decode_mp4(data: bytes) -> tuple[np.ndarray, float]:
    """Decode mp4 bytes (from a shard) to ((t, h, w, 3) uint8, fps)."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    return np.stack(frames), fps


def _rate(fps: float):
    from fractions import Fraction

    return Fraction(fps).limit_denominator(1001)


def _short(e: Exception) -> str:
    return str(e).splitlines()[0][:160] if str(e) else type(e).__name__
