"""Video probing for curation: what a file holds before decoding it, and frame ranges of it.

Curation must cope with hour-long inputs, so nothing here loads a whole file: frames stream out
of `kinetograph.io.video.iter_frames` one by one, already downscaled by libswscale.
Failures become `InputError`s whose message is the reason written into the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from kinetograph.errors import InputError
from kinetograph.io.video import ffmpeg_reason, iter_frames

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
        raise InputError(f"{path}: cannot decode ({ffmpeg_reason(e)}); re-encode it with ffmpeg or remove it") from e
    if fps <= 0 or width <= 0 or height <= 0:
        raise InputError(f"{path}: stream has no frame rate or size; re-encode it with ffmpeg")
    return VideoInfo(fps=fps, width=width, height=height, num_frames=num_frames, duration_s=duration)


def analysis_size(width: int, height: int, target_width: int) -> tuple[int, int]:
    """(w, h) with w = target_width (never upscaled) and the aspect ratio kept, both even."""
    w = min(target_width, width)
    h = max(2, int(round(height * w / width / 2)) * 2)
    return w - w % 2, h


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
