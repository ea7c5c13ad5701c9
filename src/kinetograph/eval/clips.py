"""Videos and images as the metrics see them, and reading them from disk.

A video is a uint8 numpy array (t, h, w, 3), RGB; an image is uint8 (h, w, 3). Every metric
checks its input with `check_video` / `check_image`, so a float or channels-first array fails
with a message instead of a silently wrong number.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence

from kinetograph.errors import InputError, OutputError

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif", ".webp", ".npy")
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def check_video(frames: np.ndarray, what: str = "video", min_frames: int = 1) -> np.ndarray:
    """Return `frames` if it is a uint8 (t, h, w, 3) array with at least `min_frames` frames."""
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
        kind = getattr(frames, "dtype", type(frames).__name__)
        raise InputError(f"{what} must be a uint8 numpy array (t, h, w, 3), got {kind}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputError(f"{what} must have shape (t, h, w, 3), got {tuple(frames.shape)}")
    if frames.shape[0] < min_frames:
        raise InputError(f"{what} needs at least {min_frames} frames, got {frames.shape[0]}")
    return frames


def check_image(image: np.ndarray, what: str = "image") -> np.ndarray:
    """Return `image` if it is a uint8 (h, w, 3) array."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        kind = getattr(image, "dtype", type(image).__name__)
        raise InputError(f"{what} must be a uint8 numpy array (h, w, 3), got {kind}")
    if image.ndim != 3 or image.shape[-1] != 3:
        raise InputError(f"{what} must have shape (h, w, 3), got {tuple(image.shape)}")
    return image


def to_rgb(array: np.ndarray) -> np.ndarray:
    """Gray (h, w), bool masks and RGBA (h, w, 4) as uint8 RGB (h, w, 3); alpha is dropped."""
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.dtype != np.uint8:
        raise InputError(f"expected a uint8 image, got {array.dtype}")
    if array.ndim == 2:
        return np.repeat(array[..., None], 3, axis=-1)
    if array.ndim == 3 and array.shape[-1] == 4:
        return np.ascontiguousarray(array[..., :3])
    return check_image(array)


def load_image(path: Path) -> np.ndarray:
    """An image file as uint8 RGB (h, w, 3)."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read image {path}: {e}; pass a PNG or JPEG file") from e


def fit_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to cover `size` = (h, w) keeping the aspect ratio, then center-crop (Lanczos).

    This is how the conditioning image is brought to the output size before frame 0 is compared
    with it; when the aspect ratios match it is a plain resize.
    """
    check_image(image, "conditioning image")
    h, w = size
    ih, iw = image.shape[:2]
    scale = max(h / ih, w / iw)
    rh, rw = max(h, round(ih * scale)), max(w, round(iw * scale))
    resized = np.asarray(Image.fromarray(image).resize((rw, rh), Image.Resampling.LANCZOS))
    top, left = (rh - h) // 2, (rw - w) // 2
    return np.ascontiguousarray(resized[top : top + h, left : left + w])


def luminance(frames: np.ndarray) -> np.ndarray:
    """Luma Y' (ITU-R BT.601 weights) in [0, 255], float32, shape (..., h, w)."""
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return frames.astype(np.float32) @ weights


def read_video(path: Path) -> np.ndarray:
    """Read a video file (mp4/webm/mov/mkv/avi via PyAV, gif/webp via Pillow, .npy) or a
    folder of frame images (sorted by name) as uint8 (t, h, w, 3)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
        if not files:
            raise InputError(f"no frame images ({', '.join(FRAME_SUFFIXES)}) in {path}")
        frames = [load_image(p) for p in files]
        if len({f.shape for f in frames}) != 1:
            raise InputError(f"frames in {path} have different sizes; export them at one size")
        return np.stack(frames)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise InputError(f"cannot read {path}: {e}") from e
        return check_video(array, str(path))
    if suffix in (".gif", ".webp"):
        try:
            with Image.open(path) as im:
                frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)]
        except (OSError, ValueError) as e:
            raise InputError(f"cannot read {path}: {e}") from e
        return check_video(np.stack(frames), str(path))
    import av  # only needed for container formats

    try:
        with av.open(str(path)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except (av.FFmpegError, OSError, ValueError) as e:
        raise InputError(f"cannot decode {path}: {e}") from e
    if not frames:
        raise InputError(f"{path} has no video frames")
    return check_video(np.stack(frames), str(path))


def find_video(directory: Path, name: str) -> Path | None:
    """The video for `name` in `directory`: `name.<video suffix>` or a frame folder `name/`."""
    for suffix in VIDEO_SUFFIXES:
        candidate = directory / f"{name}{suffix}"
        if candidate.is_file():
            return candidate
    folder = directory / name
    return folder if folder.is_dir() else None


def write_mp4(path: Path, frames: np.ndarray, fps: int = 7, crf: int = 12) -> None:
    """Write an H.264 mp4 (yuv420p, near-lossless crf) for viewing and for `--videos` reruns.

    Metrics are computed on the raw frames before this lossy step.
    """
    import av

    check_video(frames)
    t, h, w, _ = frames.shape
    # yuv420p needs even sizes; pad by edge repetition rather than failing.
    padded = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    try:
        with av.open(str(path), mode="w") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height = padded.shape[2], padded.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf)}
            for frame in padded:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
    except (av.FFmpegError, OSError) as e:
        raise OutputError(f"cannot write {path}: {e}") from e
