"""Input images on real photos (skimage.data) in every format and mode a user may hand us."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import tifffile
import torch
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from kinetograph.errors import InputError
from kinetograph.pipeline.preprocess import check_size, image_to_tensor, load_image, resize_and_crop

ASTRONAUT = skimage.data.astronaut()  # (512, 512, 3)
CHELSEA = skimage.data.chelsea()  # (300, 451, 3): not square, so a wrong rotation changes the shape
CAMERA = skimage.data.camera()  # (512, 512) grayscale
COFFEE = skimage.data.coffee()  # (400, 600, 3)


def _rgb(img: Image.Image) -> np.ndarray:
    assert isinstance(img, Image.Image) and img.mode == "RGB"
    return np.asarray(img)


def _gray3(a: np.ndarray) -> np.ndarray:
    return np.repeat(a[..., None], 3, axis=-1)


def _on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None].astype(np.float64) / 255
    return rgb.astype(np.float64) * a + 255 * (1 - a)


# ---------------------------------------------------------------------------------------- files


@pytest.mark.parametrize(
    ("orientation", "upright"),
    [
        (1, lambda a: a),
        (3, lambda a: a[::-1, ::-1]),  # rotated 180
        (5, lambda a: a.transpose(1, 0, 2)),  # transposed
        (6, lambda a: np.rot90(a, k=-1)),  # display = stored rotated 90 degrees clockwise
        (8, lambda a: np.rot90(a, k=1)),
    ],
)
def test_jpeg_exif_orientation(tmp_path: Path, orientation: int, upright) -> None:
    path = tmp_path / f"cat_{orientation}.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(CHELSEA).save(path, quality=95, exif=exif)
    with Image.open(path) as im:
        stored = np.asarray(im.convert("RGB"))  # pixels as stored, tag ignored
    got = _rgb(load_image(path))
    assert np.array_equal(got, upright(stored))
    assert got.shape[:2] == ((300, 451) if orientation in (1, 3) else (451, 300))
    assert np.abs(stored.astype(int) - CHELSEA).mean() < 3  # sanity: it is the photo


def test_png_rgba_flattened_on_white(tmp_path: Path) -> None:
    alpha = np.tile(np.linspace(0, 255, COFFEE.shape[1]).round().astype(np.uint8), (COFFEE.shape[0], 1))
    Image.fromarray(np.dstack([COFFEE, alpha])).save(tmp_path / "a.png")
    got = _rgb(load_image(tmp_path / "a.png")).astype(int)
    assert np.abs(got - _on_white(COFFEE, alpha)).max() <= 1
    assert (got[:, 0] == 255).all()  # fully transparent column: white, not black
    assert np.array_equal(got[:, -1], COFFEE[:, -1])  # opaque column untouched


def test_png_gray_alpha(tmp_path: Path) -> None:
    alpha = np.tile(np.linspace(255, 0, 512).round().astype(np.uint8)[:, None], (1, 512))
    Image.fromarray(np.dstack([CAMERA, alpha])).save(tmp_path / "la.png")
    with Image.open(tmp_path / "la.png") as im:
        assert im.mode == "LA"
    got = _rgb(load_image(tmp_path / "la.png")).astype(int)
    assert np.abs(got - _on_white(_gray3(CAMERA), alpha)).max() <= 1


def test_palette_png_with_transparent_index(tmp_path: Path) -> None:
    pal = Image.fromarray(CHELSEA).quantize(64)
    idx = np.asarray(pal)
    hole = int(np.bincount(idx.ravel()).argmax())  # the most common colour becomes transparent
    pal.save(tmp_path / "p.png", transparency=hole)
    colours = np.asarray(pal.convert("RGB"))
    got = _rgb(load_image(tmp_path / "p.png"))
    assert (got[idx == hole] == 255).all()
    assert np.array_equal(got[idx != hole], colours[idx != hole])


def test_palette_gif(tmp_path: Path) -> None:
    pal = Image.fromarray(CHELSEA).quantize(256)
    pal.save(tmp_path / "p.gif")
    assert np.array_equal(_rgb(load_image(tmp_path / "p.gif")), np.asarray(pal.convert("RGB")))


def test_16bit_gray_png_and_tiff_scale_not_clip(tmp_path: Path) -> None:
    deep = CAMERA.astype(np.uint16) * 257  # 255 -> 65535
    for name in ("c16.png", "c16.tif"):
        Image.fromarray(deep).save(tmp_path / name)
        with Image.open(tmp_path / name) as im:
            assert im.mode.startswith("I;16")
        assert np.array_equal(_rgb(load_image(tmp_path / name)), _gray3(CAMERA)), name
    ramp = np.tile(np.linspace(0, 65535, 256).round().astype(np.uint16), (4, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    got = _rgb(load_image(tmp_path / "ramp.png"))[0, :, 0]
    assert np.array_equal(got, np.round(ramp[0] / 257).astype(np.uint8))
    assert got[128] == 128 and got[-1] == 255  # mid-grey stays mid-grey (clipping would give 255)


def test_16bit_rgb_png_and_tiff(tmp_path: Path) -> None:
    deep = ASTRONAUT.astype(np.uint16) * 257
    cv2.imwrite(str(tmp_path / "a16.png"), deep[..., ::-1])  # OpenCV writes BGR
    tifffile.imwrite(tmp_path / "a16.tif", deep, photometric="rgb")
    for name in ("a16.png", "a16.tif"):
        assert np.array_equal(_rgb(load_image(tmp_path / name)), ASTRONAUT), name


def test_float_and_int32_modes(tmp_path: Path) -> None:
    Image.fromarray(CAMERA.astype(np.float32) / 255).save(tmp_path / "f01.tif")  # mode F in [0, 1]
    Image.fromarray(CAMERA.astype(np.float32)).save(tmp_path / "f255.tif")  # mode F in 0..255
    for name in ("f01.tif", "f255.tif"):
        with Image.open(tmp_path / name) as im:
            assert im.mode == "F"
        assert np.array_equal(_rgb(load_image(tmp_path / name)), _gray3(CAMERA)), name
    as_i = Image.fromarray(CAMERA.astype(np.int32) * 257)
    assert as_i.mode == "I"
    assert np.array_equal(_rgb(load_image(as_i)), _gray3(CAMERA))


@pytest.mark.parametrize("name", ["g.png", "g.jpg", "g.bmp", "g.webp"])
def test_grayscale_files(tmp_path: Path, name: str) -> None:
    Image.fromarray(CAMERA).save(tmp_path / name, **({"lossless": True} if name.endswith("webp") else {}))
    got = _rgb(load_image(tmp_path / name))
    assert (got[..., 0] == got[..., 1]).all() and (got[..., 1] == got[..., 2]).all()
    tol = 0 if name.endswith(("png", "bmp", "webp")) else 4
    assert np.abs(got[..., 0].astype(int) - CAMERA).mean() <= tol


@pytest.mark.parametrize("name", ["c.bmp", "c.webp", "c.tif", "c.png"])
def test_lossless_rgb_files(tmp_path: Path, name: str) -> None:
    Image.fromarray(COFFEE).save(tmp_path / name, **({"lossless": True} if name.endswith("webp") else {}))
    assert np.array_equal(_rgb(load_image(tmp_path / name)), COFFEE)


def test_webp_with_alpha(tmp_path: Path) -> None:
    alpha = np.zeros(COFFEE.shape[:2], np.uint8)
    alpha[:, 300:] = 255
    Image.fromarray(np.dstack([COFFEE, alpha])).save(tmp_path / "a.webp", lossless=True)
    got = _rgb(load_image(tmp_path / "a.webp"))
    assert (got[:, :300] == 255).all() and np.array_equal(got[:, 300:], COFFEE[:, 300:])


def test_cmyk_and_one_bit(tmp_path: Path) -> None:
    Image.fromarray(COFFEE).convert("CMYK").save(tmp_path / "cmyk.tif")
    with Image.open(tmp_path / "cmyk.tif") as im:
        assert im.mode == "CMYK"
    assert np.array_equal(_rgb(load_image(tmp_path / "cmyk.tif")), COFFEE)
    Image.fromarray(CAMERA > 127).save(tmp_path / "bw.png")
    with Image.open(tmp_path / "bw.png") as im:
        assert im.mode == "1"
    assert np.array_equal(_rgb(load_image(tmp_path / "bw.png")), _gray3(np.where(CAMERA > 127, 255, 0)))


def test_pil_input_not_modified() -> None:
    alpha = np.full(ASTRONAUT.shape[:2], 128, np.uint8)
    img = Image.fromarray(np.dstack([ASTRONAUT, alpha]))
    before = np.asarray(img).copy()
    out = load_image(img)
    assert out is not img and img.mode == "RGBA" and np.array_equal(np.asarray(img), before)
    assert np.abs(_rgb(out).astype(int) - _on_white(ASTRONAUT, alpha)).max() <= 1


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"image not found: .*nope\.png; check the path"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.png is empty"):
        load_image(tmp_path / "empty.png")
    (tmp_path / "notes.jpg").write_text("not really a picture\n")
    with pytest.raises(InputError, match=r"notes\.jpg is not an image"):
        load_image(tmp_path / "notes.jpg")
    Image.fromarray(ASTRONAUT).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.jpg is truncated or corrupt"):
        load_image(tmp_path / "cut.jpg")
    Image.fromarray(COFFEE).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.png is truncated or corrupt"):
        load_image(tmp_path / "cut.png")
    with pytest.raises(InputError, match="is a folder"):
        load_image(tmp_path)
    with pytest.raises(InputError, match="cannot read an image from a int"):
        load_image(3)  # type: ignore[arg-type]


# -------------------------------------------------------------------------------- arrays, tensors


def test_arrays() -> None:
    assert np.array_equal(_rgb(load_image(ASTRONAUT)), ASTRONAUT)
    assert np.array_equal(_rgb(load_image(CAMERA)), _gray3(CAMERA))
    assert np.array_equal(_rgb(load_image(CAMERA[..., None])), _gray3(CAMERA))
    assert np.array_equal(_rgb(load_image(ASTRONAUT.astype(np.float32) / 255)), ASTRONAUT)
    assert np.array_equal(_rgb(load_image(ASTRONAUT.astype(np.uint16) * 257)), ASTRONAUT)
    assert np.array_equal(_rgb(load_image(CAMERA > 127)), _gray3(np.where(CAMERA > 127, 255, 0)))
    alpha = np.full(ASTRONAUT.shape[:2], 64, np.uint8)
    got = _rgb(load_image(np.dstack([ASTRONAUT, alpha]))).astype(int)
    assert np.abs(got - _on_white(ASTRONAUT, alpha)).max() <= 1
    view = ASTRONAUT[::2, ::-2]  # non-contiguous
    assert np.array_equal(_rgb(load_image(view)), view)


def test_array_errors() -> None:
    with pytest.raises(InputError, match=r"\(x \+ 1\) / 2"):
        load_image(ASTRONAUT.astype(np.float32) / 127.5 - 1)
    with pytest.raises(InputError, match="divide 0..255 data by 255"):
        load_image(ASTRONAUT.astype(np.float32))
    with pytest.raises(InputError, match="dtype int64"):
        load_image(ASTRONAUT.astype(np.int64))
    with pytest.raises(InputError, match="zero size"):
        load_image(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(InputError, match=r"shape \(3, 512, 512\)"):
        load_image(ASTRONAUT.transpose(2, 0, 1))
    with pytest.raises(InputError, match="values span"):
        load_image(np.full((4, 4), np.nan, np.float32))


def test_tensors() -> None:
    chw = torch.from_numpy(ASTRONAUT).permute(2, 0, 1)  # (3, h, w) uint8
    assert np.array_equal(_rgb(load_image(chw)), ASTRONAUT)
    assert np.array_equal(_rgb(load_image(chw.float() / 255)), ASTRONAUT)
    assert np.array_equal(_rgb(load_image((chw.float() / 255)[None])), ASTRONAUT)  # (1, 3, h, w)
    assert np.array_equal(_rgb(load_image(torch.from_numpy(CAMERA)[None])), _gray3(CAMERA))  # (1, h, w)
    half = _rgb(load_image((chw.float() / 255).half()))
    assert np.abs(half.astype(int) - ASTRONAUT).max() <= 1
    # image_to_tensor's output maps back exactly through (x + 1) / 2.
    x = image_to_tensor(Image.fromarray(CHELSEA))
    assert np.array_equal(_rgb(load_image((x + 1) / 2)), CHELSEA)
    with pytest.raises(InputError, match="batch of 2"):
        load_image(torch.zeros(2, 3, 8, 8))
    with pytest.raises(InputError, match=r"permute\(2, 0, 1\)"):
        load_image(torch.from_numpy(ASTRONAUT))  # (h, w, 3) tensor: channels-last is refused
    with pytest.raises(InputError, match=r"\(x \+ 1\) / 2"):
        load_image(x)  # [-1, 1] is not an image


# ------------------------------------------------------------------------------ resize, size, tensor


@pytest.mark.parametrize("size", [(64, 64), (64, 128), (128, 64), (576, 1024), (37, 53)])
def test_resize_and_crop_exact_size(size: tuple[int, int]) -> None:
    h, w = size
    out = resize_and_crop(Image.fromarray(CHELSEA), h, w)
    assert out.size == (w, h) and out.mode == "RGB"


@pytest.mark.parametrize("wide", [True, False])
def test_resize_and_crop_is_centered(wide: bool) -> None:
    """A 2-px line at the source's centre lands at the output's centre, on either axis."""
    src = np.full((100, 400), 255, np.uint8)
    src[:, 199:201] = 0
    if not wide:
        src = src.T.copy()
    out = np.asarray(resize_and_crop(Image.fromarray(src), 64, 64)).astype(float)
    profile = out.mean(axis=0) if wide else out.mean(axis=1)
    assert int(profile.argmin()) in (31, 32)
    assert abs(profile[31] - profile[32]) < 5  # symmetric about the centre: no half-pixel shift
    assert profile[:20].min() > 250 and profile[-20:].min() > 250


def test_resize_and_crop_matches_two_step_and_plain_resize() -> None:
    img = Image.fromarray(CHELSEA)  # 451 x 300 -> cover 192 x 128, crop the middle 128
    two_step = np.asarray(img.resize((192, 128), Image.Resampling.LANCZOS).crop((32, 0, 160, 128)))
    ours = np.asarray(resize_and_crop(img, 128, 128))
    assert np.abs(ours.astype(int) - two_step).mean() < 2.0  # within a fraction of a pixel of offset
    square = Image.fromarray(ASTRONAUT)  # same aspect: a plain resize, nothing cropped
    plain = np.asarray(square.resize((256, 256), Image.Resampling.LANCZOS))
    assert np.abs(np.asarray(resize_and_crop(square, 256, 256)).astype(int) - plain).mean() < 0.5
    assert np.array_equal(np.asarray(resize_and_crop(square, 512, 512)), ASTRONAUT)


def test_resize_and_crop_antialiases() -> None:
    checker = ((np.indices((512, 512)).sum(0) % 2) * 255).astype(np.uint8)  # 1-px checkerboard
    out = np.asarray(resize_and_crop(Image.fromarray(checker), 64, 64)).astype(float)
    assert abs(out.mean() - 127.5) < 2 and out.std() < 3  # grey, no moire (nearest would give 0/255)


def test_check_size() -> None:
    check_size(576, 1024)
    check_size(64, 64)
    check_size(100, 200, multiple=4)
    with pytest.raises(InputError) as info:
        check_size(500, 1000)
    msg = str(info.value)
    assert "height 500 is not a multiple of 64 (nearest: 448 or 512)" in msg
    assert "width 1000 is not a multiple of 64 (nearest: 960 or 1024)" in msg
    with pytest.raises(InputError, match="width 1000 is not") as info:
        check_size(576, 1000)
    assert "height" not in str(info.value)
    with pytest.raises(InputError, match="height 0 must be a whole number >= 64"):
        check_size(0, 1024)


def test_image_to_tensor_matches_diffusers() -> None:
    img = Image.fromarray(COFFEE)
    ours = image_to_tensor(img)
    ref = VaeImageProcessor(do_resize=False, do_normalize=True).preprocess(img)
    assert ours.shape == (1, 3, 400, 600) and ours.dtype == torch.float32
    assert torch.equal(ours, ref)  # bit-exact: ToTensor() * 2 - 1
    assert ours.min() >= -1 and ours.max() <= 1
    black_white = image_to_tensor(Image.fromarray(np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8)))
    assert black_white[0, :, 0, 0].tolist() == [-1.0] * 3 and black_white[0, :, 0, 1].tolist() == [1.0] * 3
    gray = image_to_tensor(Image.fromarray(CAMERA))  # non-RGB input is converted first
    assert gray.shape == (1, 3, 512, 512) and torch.equal(gray[:, 0], gray[:, 2])
