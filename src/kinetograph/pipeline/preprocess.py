"""Turn whatever image a user hands us into the RGB tensor SVD conditions on.

Flow: `load_image` (any file/array/tensor -> upright 8-bit RGB) -> `check_size` (the UNet
halves the latent three times and the VAE downsamples 8x, so sizes must be multiples of 64)
-> `resize_and_crop` (cover, then center crop) -> `image_to_tensor` ((1, 3, h, w) in [-1, 1]).

Decisions:
- Transparent pixels are flattened onto white (what an image viewer shows), not black.
- 16-bit and 32-bit integer images ("I;16*", "I") are read as 0..65535 and mapped with
  round(v / 257), so 65535 -> 255 and v * 257 -> v exactly.
- Float images ("F") are read as [0, 1] when their maximum is <= 1, else as 0..255.
- Arrays are channels-last: (h, w), (h, w, 1|3|4); uint8, uint16 (0..65535), bool, or float in [0, 1].
- Tensors are channels-first, as torch and `ToTensor` produce: (c, h, w) or (1, c, h, w) with
  c in 1, 3, 4; uint8, or float in [0, 1] (not [-1, 1]: pass `(x + 1) / 2`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from kinetograph.errors import InputError

ImageLike = str | Path | Image.Image | np.ndarray | torch.Tensor

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
FLOAT_SLACK = 1e-3  # float inputs a rounding error outside [0, 1] are clipped, not refused


def load_image(src: ImageLike) -> Image.Image:
    """Return `src` as an upright 8-bit RGB image; the input is never modified."""
    if isinstance(src, (str, Path)):
        return _load_file(Path(src))
    if isinstance(src, Image.Image):
        return _to_rgb(src, name="image")
    if isinstance(src, torch.Tensor):
        return _from_array(_tensor_to_hwc(src), name="tensor")
    if isinstance(src, np.ndarray):
        return _from_array(src, name="array")
    raise InputError(f"cannot read an image from a {type(src).__name__}; pass a path, PIL image, array or tensor")


def check_size(height: int, width: int, multiple: int = 64) -> None:
    """Refuse sizes the model cannot take, naming the nearest valid ones."""
    problems = []
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or value < multiple:
            problems.append(f"{name} {value} must be a whole number >= {multiple}")
        elif value % multiple:
            down, up = value // multiple * multiple, (value // multiple + 1) * multiple
            problems.append(f"{name} {value} is not a multiple of {multiple} (nearest: {down} or {up})")
    if problems:
        raise InputError("; ".join(problems))


def resize_and_crop(img: Image.Image, height: int, width: int) -> Image.Image:
    """Scale `img` to cover (height, width) keeping its aspect, then center-crop to exactly that size.

    Done as one Lanczos resample of the centered source box (like `ImageOps.fit`), so the crop is
    centered to a fraction of a pixel; Lanczos widens its kernel when shrinking, which antialiases,
    and reducing_gap pre-shrinks huge photos by whole factors first for speed at no visible cost.
    """
    assert height > 0 and width > 0, (height, width)
    w, h = img.size
    if (w, h) == (width, height):
        return img.copy()
    scale = max(width / w, height / h)  # cover: the tighter side fills, the other overflows
    box_w, box_h = width / scale, height / scale  # the source region that lands in the output
    left, top = (w - box_w) / 2, (h - box_h) / 2
    return img.resize(
        (width, height), Image.Resampling.LANCZOS, box=(left, top, left + box_w, top + box_h), reducing_gap=3.0
    )


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """(1, 3, h, w) float32 in [-1, 1]: ToTensor() * 2 - 1, as sgm and diffusers feed the VAE and CLIP."""
    if img.mode != "RGB":
        img = load_image(img)
    x = torch.from_numpy(np.array(img))  # (h, w, 3) uint8
    x = x.permute(2, 0, 1).unsqueeze(0).float() / 255.0  # (1, 3, h, w) in [0, 1]
    return x * 2.0 - 1.0


# ----------------------------------------------------------------------------------------- files


def _load_file(path: Path) -> Image.Image:
    if not path.exists():
        raise InputError(f"image not found: {path}; check the path")
    if path.is_dir():
        raise InputError(f"{path} is a folder; pass an image file")
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty (0 bytes); pass a complete image file")
    try:
        with Image.open(path) as im:
            im.load()  # decode now: a truncated file fails here, not later inside resize
            return _to_rgb(im, name=str(path))
    except UnidentifiedImageError as e:
        raise InputError(f"{path} is not an image Pillow can read; pass a PNG, JPEG, WebP, BMP, GIF or TIFF") from e
    except Image.DecompressionBombError as e:
        raise InputError(f"{path} is too large to decode safely ({e}); downscale it first") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{path} is truncated or corrupt ({e}); re-export or re-download it") from e


# ---------------------------------------------------------------------------------------- images


def _to_rgb(img: Image.Image, name: str) -> Image.Image:
    if img.width == 0 or img.height == 0:
        raise InputError(f"{name} has zero size ({img.width}x{img.height}); pass a non-empty image")
    try:
        img = ImageOps.exif_transpose(img)  # cameras store pixels sideways and a tag saying so
    except Exception:  # a broken EXIF block must not stop us: the pixels are still good
        img = img.copy()
    if img.mode in SIXTEEN_BIT_MODES or img.mode == "F":
        img = _deep_to_8bit(img)
    if img.mode in ALPHA_MODES or "transparency" in img.info:
        return _flatten_on_white(img.convert("RGBA"))
    try:
        return img.convert("RGB")  # L, 1, P, CMYK, YCbCr: Pillow's conversions are exact here
    except ValueError as e:
        raise InputError(f"{name} has image mode {img.mode!r}, which cannot become RGB; save it as 8-bit RGB") from e


def _deep_to_8bit(img: Image.Image) -> Image.Image:
    """16/32-bit integer or float single-channel image -> "L" (or "LA" to keep a tRNS colour), scaled not clipped."""
    v = np.asarray(img)
    if img.mode == "F":
        v = np.nan_to_num(v.astype(np.float64))
        v = v * 255.0 if v.max(initial=0.0) <= 1.0 else v
    else:
        v = np.clip(v.astype(np.float64), 0, 65535) / 257.0
    out = np.round(np.clip(v, 0, 255)).astype(np.uint8)
    transparent = img.info.get("transparency")
    if isinstance(transparent, int):  # a 16-bit grayscale PNG's tRNS colour
        alpha = np.where(np.asarray(img) == transparent, 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([out, alpha], axis=-1))  # (h, w, 2) -> "LA"
    return Image.fromarray(out)


def _flatten_on_white(rgba: Image.Image) -> Image.Image:
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


# -------------------------------------------------------------------------------- arrays, tensors


def _tensor_to_hwc(x: torch.Tensor) -> np.ndarray:
    x = x.detach().cpu()
    if x.ndim == 4:
        if x.shape[0] != 1:
            raise InputError(f"tensor holds a batch of {x.shape[0]} images; pass one, e.g. x[0]")
        x = x[0]
    if x.ndim == 3:
        if x.shape[0] not in (1, 3, 4):
            raise InputError(f"tensor shape {tuple(x.shape)} is not (c, h, w) with c in 1, 3, 4; use x.permute(2, 0, 1)")
        x = x.permute(1, 2, 0)  # (h, w, c)
    if x.is_floating_point():
        x = x.float()
    return x.numpy()


def _from_array(a: np.ndarray, name: str) -> Image.Image:
    if a.size == 0:
        raise InputError(f"{name} has zero size {tuple(a.shape)}; pass a non-empty image")
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (1, 3, 4))):
        raise InputError(f"{name} shape {tuple(a.shape)} is not (h, w) or (h, w, c) with c in 1, 3, 4")
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.dtype == np.uint8:
        u8 = a
    elif a.dtype == np.bool_:
        u8 = a.astype(np.uint8) * 255
    elif a.dtype == np.uint16:
        u8 = np.round(a / 257.0).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        lo, hi = float(np.min(a)), float(np.max(a))
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo < -FLOAT_SLACK or hi > 1 + FLOAT_SLACK:
            raise InputError(
                f"float {name} values span [{lo:g}, {hi:g}], expected [0, 1]; "
                "divide 0..255 data by 255, map [-1, 1] data with (x + 1) / 2"
            )
        u8 = np.round(np.clip(a.astype(np.float64), 0, 1) * 255).astype(np.uint8)
    else:
        raise InputError(f"{name} dtype {a.dtype} is not supported; convert to uint8, or to float in [0, 1]")
    return _to_rgb(Image.fromarray(np.ascontiguousarray(u8)), name=name)  # uint8 (h, w[, 3|4]) -> L, RGB, RGBA
