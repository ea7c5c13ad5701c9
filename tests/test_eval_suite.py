"""Suite files: the shipped default suite, user suites (JSON/TOML), and their validation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from kinetograph.errors import InputError
from kinetograph.eval.motion import MotionClass
from kinetograph.eval.prompts import expected_motion
from kinetograph.eval.suite import default_suite_path, load_suite, load_suite_image


def test_default_suite_is_shipped_and_consistent():
    assert default_suite_path().is_file()
    suite = load_suite()
    assert suite.name == "default"
    assert len(suite.cases) == 4 * 7 * 3 and len({c.id for c in suite.cases}) == 84
    assert {p.expected for p in suite.prompts} == set(MotionClass)  # every class is asked for
    for prompt in suite.prompts:  # explicit expectations agree with the parser
        assert expected_motion(prompt.text) == prompt.expected, prompt.text
    for image in suite.images:
        pixels = load_suite_image(image, suite.base)
        assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
    case = suite.cases[0]
    assert case.id == "astronaut-pan_left-m40-s0" and case.group == "astronaut-pan_left-s0"


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_user_suite_json_with_files_string_prompts_and_explicit_cases(tmp_path):
    (tmp_path / "photos").mkdir()
    Image.fromarray(np.full((20, 30, 3), 7, np.uint8)).save(tmp_path / "photos" / "flat.png")
    suite = load_suite(
        write(
            tmp_path / "s.json",
            json.dumps(
                {
                    "name": "mine",
                    "images": [
                        {"id": "flat", "source": "photos/flat.png"},
                        {"id": "cam", "source": "skimage:camera"},
                    ],
                    "prompts": [
                        "zoom out slowly",
                        {"id": "free", "text": "a cat yawns", "expected": None},
                        {"id": "forced", "text": "anything", "expected": "up"},
                    ],
                    "motion_buckets": [10],
                    "seeds": [1, 2],
                    "cases": [
                        {"image": "cam", "prompt": "free", "motion_bucket_id": 99, "seed": 5}
                    ],
                }
            ),
        )
    )
    assert len(suite.cases) == 2 * 3 * 1 * 2 + 1
    prompts = {p.id: p for p in suite.prompts}
    assert prompts["p0"].expected == MotionClass.ZOOM_OUT  # parsed from the text
    assert prompts["free"].expected is None and prompts["forced"].expected == MotionClass.UP
    assert suite.cases[-1].id == "cam-free-m99-s5"
    flat = load_suite_image(suite.images[0], suite.base)
    assert flat.shape == (20, 30, 3) and (flat == 7).all()
    assert load_suite_image(suite.images[1], suite.base).shape == (512, 512, 3)  # gray -> RGB


def test_user_suite_toml(tmp_path):
    suite = load_suite(
        write(
            tmp_path / "s.toml",
            """
name = "t"
motion_buckets = [1, 2, 3]
seeds = [0]
[[images]]
id = "a"
source = "skimage:astronaut"
[[prompts]]
id = "l"
text = "pan left"
""",
        )
    )
    assert [c.id for c in suite.cases] == ["a-l-m1-s0", "a-l-m2-s0", "a-l-m3-s0"]
    assert suite.prompts[0].expected == MotionClass.LEFT


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"images": [], "prompts": ["x"]}, "'images' must be a non-empty"),
        (
            {
                "images": [{"id": "a", "source": "skimage:astronaut"}],
                "prompts": ["x"],
                "seeds": [0],
                "motion_buckets": [1],
                "bucket": 3,
            },
            "unknown keys \\['bucket'\\]",
        ),
        ({"images": [{"id": "a b", "source": "x.png"}], "prompts": ["x"]}, "image id 'a b'"),
        (
            {"images": [{"id": "a", "source": "x"}, {"id": "a", "source": "y"}], "prompts": ["x"]},
            "duplicate image ids",
        ),
        (
            {
                "images": [{"id": "a", "source": "x"}],
                "prompts": [{"text": "x", "expected": "sideways"}],
            },
            "not one of",
        ),
        ({"images": [{"id": "a", "source": "x"}], "prompts": ["x"]}, "no cases"),
        (
            {
                "images": [{"id": "a", "source": "x"}],
                "prompts": ["x"],
                "motion_buckets": [2000],
                "seeds": [0],
            },
            "0, 1023",
        ),
        (
            {
                "images": [{"id": "a", "source": "x"}],
                "prompts": ["x"],
                "cases": [{"image": "b", "prompt": "p0", "motion_bucket_id": 1, "seed": 0}],
            },
            "unknown image 'b'",
        ),
    ],
)
def test_invalid_suites_name_the_problem(tmp_path, doc, message):
    with pytest.raises(InputError, match=message):
        load_suite(write(tmp_path / "bad.json", json.dumps(doc)))


def test_unreadable_suites(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_suite(tmp_path / "missing.json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_suite(write(tmp_path / "bad.json", "{"))
    suite = load_suite(
        write(
            tmp_path / "s.json",
            json.dumps(
                {
                    "images": [{"id": "a", "source": "skimage:nonexistent"}],
                    "prompts": ["x"],
                    "motion_buckets": [1],
                    "seeds": [0],
                }
            ),
        )
    )
    with pytest.raises(InputError, match="no sample image 'nonexistent'"):
        load_suite_image(suite.images[0], suite.base)
