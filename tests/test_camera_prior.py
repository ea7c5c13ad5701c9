"""The camera prior: the image moved by a camera move, measured by the evaluation's own motion
classifier and curation's motion score, and sampling that starts from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomize_
from PIL import Image
from skimage import data as skdata

from kinetograph.data.camera_motion import MOTIONS
from kinetograph.data.curation.motion import MotionBucketMap, clip_motion_score
from kinetograph.errors import InputError
from kinetograph.eval.motion import camera_motion
from kinetograph.eval.prompts import MOVE_CLASS
from kinetograph.io.checkpoint import save_original
from kinetograph.models.svd import SVD
from kinetograph.pipeline.camera_prior import bucket_speed, render_move
from kinetograph.pipeline.image_to_video import CAMERA_PRIOR_STRENGTH, ImageToVideo
from kinetograph.pipeline.preprocess import image_to_tensor, load_image, resize_and_crop
from kinetograph.presets import PRESETS


def _photo(size: int = 128) -> torch.Tensor:
    return image_to_tensor(resize_and_crop(load_image(skdata.astronaut()), size, size))


def _uint8(frames: torch.Tensor) -> np.ndarray:
    return ((frames.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()


@pytest.mark.parametrize("move", MOTIONS)
def test_rendered_move_is_measured_as_that_move_at_the_asked_speed(move):
    """On a real photo, the evaluation's classifier names each rendered move, at the speed asked
    (pans/tilts: translation, zooms: mean zoom flow); frame 0 is the image itself."""
    image = _photo()
    frames = render_move(image, move, 10, speed=2.0)
    assert frames.shape == (10, 3, 128, 128) and torch.equal(frames[0], image[0])
    measured = camera_motion(_uint8(frames))
    assert measured.label.value == MOVE_CLASS.get(move, move)
    speed = measured.zoom_speed if move.startswith("zoom") else measured.translation_speed
    assert speed == pytest.approx(0.0 if move == "static" else 2.0, abs=0.15)


def test_bucket_speed_round_trips_through_curations_motion_score():
    """A pan rendered at the speed a bucket stands for is scored by curation into that bucket,
    within a knot and a half (knots are 8 buckets, a factor 2**0.25 in speed, apart; Farneback
    reads fast motion ~10% slow)."""
    fps = 8.0
    for bucket in (64, 127, 180):
        frames = render_move(_photo(256), "pan_right", 14, bucket_speed(bucket, 256, fps))
        score = clip_motion_score(_uint8(frames), fps)
        assert abs(MotionBucketMap().bucket(score) - bucket) <= 12, (bucket, score)


@pytest.fixture(scope="module")
def tiny_pipe():
    model = randomize_(SVD(PRESETS["tiny"].model), seed=3, std=0.05).eval()
    return ImageToVideo(model, PRESETS["tiny"])


def _latents(pipe, **kw) -> torch.Tensor:
    return pipe(skdata.chelsea(), height=64, width=64, num_frames=4, num_inference_steps=4, seed=1,
                output_type="latent", **kw)


def test_full_strength_returns_the_rendered_moves_latents(tiny_pipe):
    """Strength 1: nothing is left to sample, so the video is the render's latents; 0 is the
    usual sampling exactly, and a move without a strength gets CAMERA_PRIOR_STRENGTH."""
    pixels = image_to_tensor(resize_and_crop(load_image(skdata.chelsea()), 64, 64))
    moved = render_move(pixels, "zoom_in", 4, bucket_speed(PRESETS["tiny"].sampling.motion_bucket_id, 64, 7))
    want = tiny_pipe.encode_frames(moved, 4)
    got = _latents(tiny_pipe, camera_move="zoom_in", camera_prior=1.0)[0]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert torch.equal(_latents(tiny_pipe, camera_prior=0.0), _latents(tiny_pipe))
    default = _latents(tiny_pipe, camera_move="pan_left")
    assert torch.equal(default, _latents(tiny_pipe, camera_move="pan_left", camera_prior=CAMERA_PRIOR_STRENGTH))
    assert torch.equal(default, _latents(tiny_pipe, camera_move="pan_left"))  # deterministic
    assert not torch.allclose(default, _latents(tiny_pipe))
    assert not torch.allclose(default, _latents(tiny_pipe, camera_move="pan_right"))


def test_bad_camera_prior_arguments_say_what_to_pass(tiny_pipe):
    with pytest.raises(InputError, match="unknown camera move 'sideways'; choose one of static, pan_left"):
        _latents(tiny_pipe, camera_move="sideways")
    with pytest.raises(InputError, match=r"camera prior must be in 0\.\.1"):
        _latents(tiny_pipe, camera_move="zoom_in", camera_prior=1.5)
    with pytest.raises(InputError, match="name one \\(--camera-move"):  # no camera head to read a move
        _latents(tiny_pipe, camera_prior=0.5)


def test_generate_camera_move_on_a_text_blind_model(tmp_path: Path, capsys):
    """`kinetograph generate --camera-move` works on a model with no text and no camera head (as
    official SVD weights), says what it does, and a bad move fails in one line with no output."""
    from kinetograph.cli import main

    path = save_original(randomize_(SVD(PRESETS["tiny"].model), seed=3, std=0.05), tmp_path / "t.safetensors", "tiny")
    photo = tmp_path / "photo.jpg"
    Image.fromarray(skdata.coffee()).save(photo)
    args = ["--checkpoint", str(path), "--height", "64", "--width", "64", "--frames", "3", "--steps", "2"]
    capsys.readouterr()
    assert main(["generate", str(photo), "--camera-move", "tilt_up", "-o", str(tmp_path / "a.mp4"), *args]) == 0
    assert "camera prior: the image moved by tilt up, sampled from 50% of the way" in capsys.readouterr().err
    assert (tmp_path / "a.mp4").stat().st_size > 0
    assert main(["generate", str(photo), "--prompt", "the camera zooms out", "--camera-prior", "0.5",
                 "-o", str(tmp_path / "c.mp4"), *args]) == 0
    assert ("camera prior: the image moved by zoom out (read in the prompt by the default model's camera head)"
            in capsys.readouterr().err)
    assert main(["generate", str(photo), "--camera-move", "up", "-o", str(tmp_path / "b.mp4"), *args]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown camera move 'up'" in err[0] and not (tmp_path / "b.mp4").exists()


def test_a_model_without_a_head_takes_the_move_from_the_default_models_reader(tiny_pipe):
    """With a strength given, a model with no camera head (as official SVD weights) renders the
    move the shipped model's head and gate read in the prompt: the same video as naming the move;
    a prompt that names no move still asks for one."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the text-blind model's "prompt ignored" warning
        got = _latents(tiny_pipe, prompt="the camera slowly pans to the left", camera_prior=0.5)
    assert torch.equal(got, _latents(tiny_pipe, camera_move="pan_left", camera_prior=0.5))
    reading = tiny_pipe.borrowed_camera_reading("the view tilts up toward the sky")
    assert reading.asked == "tilt_up" and reading.named > 0.5
    assert tiny_pipe.borrowed_camera_reading("a cat on a sofa").asked is None
    with pytest.raises(InputError, match="or give a prompt that asks for one"):
        tiny_pipe.camera_prior_plan("a cat on a sofa", None, 0.5)
    assert tiny_pipe.camera_prior_plan("a cat on a sofa", None, None) == (0.0, None)  # no strength: no prior


def test_a_presets_prior_is_off_for_a_prompt_that_names_no_move(tiny_pipe):
    """A preset's camera prior needs a move read in the prompt; with none (here: no camera head)
    that prompt samples as usual instead of failing, while an explicit strength still asks for one."""
    from kinetograph.presets import with_sampling

    pipe = ImageToVideo(tiny_pipe.model, with_sampling(PRESETS["tiny"], camera_prior=0.8))
    assert pipe.camera_prior_plan("a cat on a sofa", None, None) == (0.0, None)
    assert torch.equal(_latents(pipe), _latents(tiny_pipe))
    assert pipe.camera_prior_plan("", "zoom_out", None) == (0.8, "zoom_out")  # the preset's strength
    assert tiny_pipe.camera_prior_plan("", "zoom_out", None) == (CAMERA_PRIOR_STRENGTH, "zoom_out")
    with pytest.raises(InputError, match="name one"):
        pipe.camera_prior_plan("a cat on a sofa", None, 0.3)
