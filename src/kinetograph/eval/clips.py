"""Videos and images as the metrics see them, and finding them on disk.

A video is a uint8 numpy array (t, h, w, 3), RGB; an image is uint8 (h, w, 3). Every metric
checks its input with `check_video` / `check_image`, so a float or channels-first array fails
with a message instead of a silently wrong number. Files are decoded by the project's readers
(`kinetograph.io.video.read_video`, `kinetograph.pipeline.preprocess.load_image`); here are only
what evaluation adds: `.npy` arrays and folders of frames with any names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from kinetograph.errors import InputError
from kinetograph.io import video as video_io
from kinetograph.pipeline.preprocess import load_image

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


def fit_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The conditioning image exactly as the pipeline feeds it to the model at output size (h, w).

    Frame 0 is compared with this, so PSNR/SSIM measure the model, not a resampling mismatch:
    it is `pipeline.preprocess.resize_and_crop` (cover, then center-crop, Lanczos).
    """
    from kinetograph.pipeline.preprocess import resize_and_crop

    check_image(image, "conditioning image")
    return np.asarray(resize_and_crop(Image.fromarray(image), *size))


def luminance(frames: np.ndarray) -> np.ndarray:
    """Luma Y' (ITU-R BT.601 weights) in [0, 255], float32, shape (..., h, w)."""
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return frames.astype(np.float32) @ weights


def read_video(path: Path) -> np.ndarray:
    """Read a video file (mp4/webm/mov/mkv/avi/gif/webp via `kinetograph.io.video`, .npy) or a
    folder of frame images (sorted by name) as uint8 (t, h, w, 3)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
        if not files:
            raise InputError(f"no frame images ({', '.join(FRAME_SUFFIXES)}) in {path}")
        frames = [np.asarray(load_image(p)) for p in files]
        if len({f.shape for f in frames}) != 1:
            raise InputError(f"frames in {path} have different sizes; export them at one size")
        return np.stack(frames)
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise InputError(f"cannot read {path}: {e}") from e
        return check_video(array, str(path))
    try:
        frames, _fps = video_io.read_video(path)
    except InputError as e:
        raise InputError(f"cannot decode {path}: {e}") from e
    return check_video(frames, str(path))


def find_video(directory: Path, name: str) -> Path | None:
    """The video for `name` in `directory`: `name.<video suffix>` or a frame folder `name/`."""
    for suffix in VIDEO_SUFFIXES:
        candidate = directory / f"{name}{suffix}"
        if candidate.is_file():
            return candidate
    folder = directory / name
    return folder if folder.is_dir() else None
