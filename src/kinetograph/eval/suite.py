"""Evaluation suites: which (image, prompt, motion bucket, seed) cases to generate and score.

A suite is a JSON (or TOML) file:

    {
      "name": "default",
      "description": "...",
      "images":  [{"id": "astronaut", "source": "skimage:astronaut"},
                  {"id": "street", "source": "photos/street.jpg"}],   # relative to the suite file
      "prompts": [{"id": "pan_left", "text": "the camera pans to the left", "expected": "left"},
                  {"id": "free", "text": "a cat yawns"}],               # expected parsed from text
      "motion_buckets": [40, 127, 220],
      "seeds": [0],
      "cases": [{"image": "street", "prompt": "free", "motion_bucket_id": 90, "seed": 3}]
    }

Cases are the grid images x prompts x motion_buckets x seeds (when buckets and seeds are
given) followed by the explicit `cases`. `expected` is a motion class name or null (no
expectation); when the key is absent it is parsed from the text (`prompts.expected_motion`).
Ids are [A-Za-z0-9_.-] so case ids are safe file names: `<image>-<prompt>-m<bucket>-s<seed>`.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from kinetograph.errors import InputError
from kinetograph.eval.clips import to_rgb
from kinetograph.eval.motion import MotionClass
from kinetograph.eval.prompts import expected_motion
from kinetograph.pipeline.preprocess import load_image

_ID = re.compile(r"^[A-Za-z0-9_.-]+$")
_SUITE_KEYS = {"name", "description", "images", "prompts", "motion_buckets", "seeds", "cases"}


@dataclass(frozen=True)
class SuiteImage:
    id: str
    source: str  # "skimage:<name>" or a path, relative paths against the suite's folder


@dataclass(frozen=True)
class SuitePrompt:
    id: str
    text: str
    expected: MotionClass | None


@dataclass(frozen=True)
class Case:
    id: str
    image: SuiteImage
    prompt: SuitePrompt
    motion_bucket_id: int
    seed: int

    @property
    def group(self) -> str:
        """Cases that differ only in the motion bucket share a group."""
        return f"{self.image.id}-{self.prompt.id}-s{self.seed}"


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    images: tuple[SuiteImage, ...]
    prompts: tuple[SuitePrompt, ...]
    cases: tuple[Case, ...]
    base: Path | None  # folder that relative image paths are resolved against


def default_suite_path() -> Path:
    """The shipped default suite (scikit-image photos x camera-motion prompts x buckets)."""
    return Path(str(resources.files("kinetograph.eval") / "suites" / "default.json"))


def _fail(path: Path, message: str) -> InputError:
    return InputError(f"suite {path}: {message}")


def _check_id(value: Any, where: str, path: Path) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise _fail(
            path, f"{where} id {value!r} must be a non-empty string of letters, digits, _ . -"
        )
    return value


def _int_list(raw: dict, key: str, path: Path, lo: int, hi: int) -> list[int]:
    values = raw.get(key, [])
    if not isinstance(values, list) or not all(
        isinstance(v, int) and lo <= v <= hi for v in values
    ):
        raise _fail(path, f"'{key}' must be a list of integers in [{lo}, {hi}]")
    return values


def _parse_prompt(entry: Any, index: int, path: Path) -> SuitePrompt:
    if isinstance(entry, str):
        entry = {"id": f"p{index}", "text": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("text"), str):
        raise _fail(path, f"prompt {index} must be a string or an object with 'text'")
    unknown = set(entry) - {"id", "text", "expected"}
    if unknown:
        raise _fail(
            path, f"prompt {index} has unknown keys {sorted(unknown)}; allowed: id, text, expected"
        )
    if "expected" in entry:
        raw = entry["expected"]
        names = [c.value for c in MotionClass]
        if raw is not None and raw not in names:
            raise _fail(path, f"prompt {index} expected {raw!r} is not one of {names} or null")
        expected = MotionClass(raw) if raw is not None else None
    else:
        expected = expected_motion(entry["text"])
    return SuitePrompt(
        _check_id(entry.get("id", f"p{index}"), "prompt", path), entry["text"], expected
    )


def parse_suite(raw: Any, path: Path, base: Path | None) -> Suite:
    """Validate a decoded suite document; `path` only names it in error messages."""
    if not isinstance(raw, dict):
        raise _fail(path, "must be an object with 'images' and 'prompts'")
    unknown = set(raw) - _SUITE_KEYS
    if unknown:
        raise _fail(path, f"unknown keys {sorted(unknown)}; allowed: {sorted(_SUITE_KEYS)}")
    images_raw, prompts_raw = raw.get("images"), raw.get("prompts")
    if not isinstance(images_raw, list) or not images_raw:
        raise _fail(path, "'images' must be a non-empty list of {id, source}")
    if not isinstance(prompts_raw, list) or not prompts_raw:
        raise _fail(path, "'prompts' must be a non-empty list")
    images = []
    for i, entry in enumerate(images_raw):
        if (
            not isinstance(entry, dict)
            or set(entry) != {"id", "source"}
            or not isinstance(entry["source"], str)
        ):
            raise _fail(path, f"image {i} must be an object with exactly 'id' and 'source'")
        images.append(SuiteImage(_check_id(entry["id"], "image", path), entry["source"]))
    prompts = [_parse_prompt(p, i, path) for i, p in enumerate(prompts_raw)]
    for kind, items in (("image", images), ("prompt", prompts)):
        ids = [x.id for x in items]
        if len(set(ids)) != len(ids):
            raise _fail(
                path, f"duplicate {kind} ids: {sorted({i for i in ids if ids.count(i) > 1})}"
            )

    buckets = _int_list(raw, "motion_buckets", path, 0, 1023)
    seeds = _int_list(raw, "seeds", path, 0, 2**63 - 1)
    grid = [(im, pr, b, s) for im in images for pr in prompts for b in buckets for s in seeds]
    by_image, by_prompt = {x.id: x for x in images}, {x.id: x for x in prompts}
    explicit = raw.get("cases", [])
    if not isinstance(explicit, list):
        raise _fail(path, "'cases' must be a list of {image, prompt, motion_bucket_id, seed}")
    for i, c in enumerate(explicit):
        keys = {"image", "prompt", "motion_bucket_id", "seed"}
        if not isinstance(c, dict) or set(c) != keys:
            raise _fail(path, f"case {i} must have exactly the keys {sorted(keys)}")
        if c["image"] not in by_image or c["prompt"] not in by_prompt:
            raise _fail(
                path, f"case {i} names unknown image {c['image']!r} or prompt {c['prompt']!r}"
            )
        if not isinstance(c["motion_bucket_id"], int) or not isinstance(c["seed"], int):
            raise _fail(path, f"case {i}: motion_bucket_id and seed must be integers")
        grid.append(
            (by_image[c["image"]], by_prompt[c["prompt"]], c["motion_bucket_id"], c["seed"])
        )
    if not grid:
        raise _fail(path, "no cases: give 'motion_buckets' and 'seeds' for the grid, or 'cases'")

    cases = []
    for im, pr, b, s in grid:
        cases.append(Case(f"{im.id}-{pr.id}-m{b}-s{s}", im, pr, b, s))
    ids = [c.id for c in cases]
    if len(set(ids)) != len(ids):
        raise _fail(path, "the same case appears twice (grid and 'cases' overlap?)")
    name = raw.get("name", path.stem)
    return Suite(
        str(name),
        str(raw.get("description", "")),
        tuple(images),
        tuple(prompts),
        tuple(cases),
        base,
    )


def load_suite(path: Path | None = None) -> Suite:
    """Read and validate a suite file (.json or .toml); None loads the default suite."""
    path = Path(path) if path is not None else default_suite_path()
    if not path.is_file():
        raise InputError(f"suite file not found: {path}")
    try:
        if path.suffix.lower() == ".toml":
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        else:
            raw = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
        raise InputError(f"suite {path} is not valid {kind}: {e}") from e
    return parse_suite(raw, path, path.parent)


def load_suite_image(image: SuiteImage, base: Path | None) -> np.ndarray:
    """The image as uint8 RGB (h, w, 3): a scikit-image sample or a file."""
    if image.source.startswith("skimage:"):
        import skimage.data

        name = image.source.removeprefix("skimage:")
        loader = getattr(skimage.data, name, None)
        if loader is None or not callable(loader) or name.startswith("_"):
            raise InputError(f"image {image.id}: skimage.data has no sample image {name!r}")
        try:
            return to_rgb(np.asarray(loader()))
        except Exception as e:  # noqa: BLE001 - some samples need optional downloads (pooch)
            raise InputError(f"image {image.id}: cannot load skimage sample {name!r}: {e}") from e
    path = Path(image.source)
    if not path.is_absolute() and base is not None:
        path = base / path
    return np.asarray(load_image(path))  # as the pipeline reads it: EXIF-upright, alpha on white
