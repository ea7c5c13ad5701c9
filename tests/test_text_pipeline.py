"""Prompts end to end: text-conditioned checkpoints (MiniLM tokens), CLIP-space steering of the
official text-blind weights with an OpenCLIP text tower, checkpoint records, and the CLI options."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image
from skimage import data

from conftest import randomize_
from kinetograph.cli import main
from kinetograph.errors import CheckpointError, InputError
from kinetograph.io.checkpoint import load_checkpoint, save_original
from kinetograph.io.safetensors import save_state_dict
from kinetograph.models.svd import SVD
from kinetograph.models.text import OpenCLIPTextConfig, OpenCLIPTextEncoder
from kinetograph.pipeline.image_to_video import ImageToVideo
from kinetograph.presets import PRESETS

SIZE = 64
SETTINGS = dict(height=SIZE, width=SIZE, num_frames=4, num_inference_steps=2, output_type="latent", seed=5)
TINY_CLIP_TEXT = OpenCLIPTextConfig(width=32, layers=1, heads=1, embed_dim=32)  # heads = width // 64, at least 1


@pytest.fixture(scope="module")
def photo():
    return Image.fromarray(data.chelsea()).resize((SIZE, SIZE), Image.LANCZOS)


@pytest.fixture(scope="module")
def text_ckpt(tmp_path_factory):
    """A tiny text-conditioned model with every parameter random (text branch included)."""
    model = randomize_(SVD(PRESETS["tiny_text"].model), seed=11).eval()
    return save_original(model, tmp_path_factory.mktemp("ckpt") / "tiny_text.safetensors", "tiny_text")


@pytest.fixture(scope="module")
def text_pipe(text_ckpt):
    return ImageToVideo.from_checkpoint(text_ckpt)


@pytest.fixture(scope="module")
def blind_ckpt(tmp_path_factory):
    model = randomize_(SVD(PRESETS["tiny"].model), seed=12).eval()
    return save_original(model, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", "tiny")


@pytest.fixture(scope="module")
def clip_text_file(tmp_path_factory):
    torch.manual_seed(0)
    tower = randomize_(OpenCLIPTextEncoder(TINY_CLIP_TEXT), seed=13, std=0.2)
    path = tmp_path_factory.mktemp("text") / "open_clip_text.safetensors"
    return save_state_dict({k: v.contiguous() for k, v in tower.state_dict().items()}, path)


def test_checkpoint_records_text_encoder(text_ckpt):
    loaded = load_checkpoint(text_ckpt)
    assert loaded.model.cfg.text_encoder == "minilm-l6-v2" and loaded.model.cfg.unet.text_dim == 384
    assert any(".attn_text." in k for k in loaded.model.state_dict())
    with pytest.raises(CheckpointError, match="trained with text encoder 'minilm-l6-v2' \\(width 384\\)"):
        ImageToVideo(loaded.model, loaded.preset, text_encoder=OpenCLIPTextEncoder(TINY_CLIP_TEXT))


def test_text_model_prompt_guidance_and_negative(text_pipe, photo):
    base = text_pipe(photo, **SETTINGS)
    left = text_pipe(photo, "the camera pans left", **SETTINGS)
    right = text_pipe(photo, "the camera pans right", **SETTINGS)
    assert text_pipe.text_encoder.name == "minilm-l6-v2"  # loaded by the name the checkpoint records
    assert (left - base).abs().max() > 1e-3 and (left - right).abs().max() > 1e-4
    # text guidance 0 == the image-only result, exactly
    assert torch.equal(text_pipe(photo, "the camera pans left", text_guidance_scale=0.0, **SETTINGS), base)
    negative = text_pipe(photo, "the camera pans left", negative_prompt="the camera pans right", **SETTINGS)
    assert (negative - left).abs().max() > 1e-4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a text model never warns about ignoring the prompt
        text_pipe(photo, "zoom in", **{**SETTINGS, "num_inference_steps": 1})


def test_zero_init_text_branch_keeps_the_image_only_pipeline(photo):
    """Adding the text branch to an image-only model: with a prompt, the same video until trained."""
    image_only = randomize_(SVD(PRESETS["tiny"].model), seed=12).eval()
    torch.manual_seed(0)
    grown = SVD(PRESETS["tiny_text"].model).eval()
    missing, unexpected = grown.load_state_dict(image_only.state_dict(), strict=False)
    assert not unexpected and all("text" in k for k in missing)
    ref = ImageToVideo(image_only, PRESETS["tiny"])(photo, **SETTINGS)
    out = ImageToVideo(grown, PRESETS["tiny_text"])(photo, "the camera pans left", **SETTINGS)
    assert ref.abs().max() > 0.05
    # Equal up to float32 rounding: the text model batches three guidance branches where the
    # image-only one batches two, and some CPUs round a batch of 3 differently (1.2e-4 on an Intel
    # Xeon; bit for bit on an AMD EPYC). With text guidance 0 it is the image-only pipeline exactly.
    torch.testing.assert_close(out, ref, atol=1e-3, rtol=0)
    assert torch.equal(ImageToVideo(grown, PRESETS["tiny_text"])(photo, "the camera pans left", text_guidance_scale=0.0,
                                                                 **SETTINGS), ref)


def test_official_weights_steer_with_open_clip_text_tower(blind_ckpt, clip_text_file, photo):
    pipe = ImageToVideo.from_checkpoint(blind_ckpt, text_encoder=clip_text_file)
    assert isinstance(pipe.text_encoder, OpenCLIPTextEncoder) and pipe.text_encoder.cfg == TINY_CLIP_TEXT
    base = pipe(photo, **SETTINGS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the prompt is used: no warning
        steered = pipe(photo, "the camera pans left", **SETTINGS)
    assert (steered - base).abs().max() > 1e-4
    assert torch.equal(pipe(photo, "the camera pans left", text_guidance_scale=0.0, **SETTINGS), base)
    stronger = pipe(photo, "the camera pans left", text_guidance_scale=1.0, **SETTINGS)
    assert (stronger - base).abs().max() > (steered - base).abs().max()


def test_official_weights_without_text_tower_warn(blind_ckpt, photo):
    pipe = ImageToVideo.from_checkpoint(blind_ckpt)
    with pytest.warns(UserWarning, match="prompt is ignored.*--text-encoder"):
        pipe(photo, "the camera pans left", **{**SETTINGS, "num_inference_steps": 1})


def test_text_encoder_mismatches(blind_ckpt, tmp_path):
    loaded = load_checkpoint(blind_ckpt)
    with pytest.raises(CheckpointError, match="projects to width 48"):
        ImageToVideo(loaded.model, loaded.preset, text_encoder=OpenCLIPTextEncoder(OpenCLIPTextConfig(32, 1, 2, embed_dim=48)))
    from kinetograph.models.text import minilm_text_encoder

    with pytest.raises(InputError, match="image only"):
        ImageToVideo(loaded.model, loaded.preset, text_encoder=minilm_text_encoder())


def test_cli_text_options(text_ckpt, blind_ckpt, clip_text_file, tmp_path, capsys):
    image = Path(__file__).resolve().parents[1] / "assets" / "chelsea.jpg"
    common = ["--frames", "2", "--steps", "1", "--height", "64", "--width", "64", "--device", "cpu"]
    out = tmp_path / "a.gif"
    code = main(["generate", str(image), "-c", str(text_ckpt), "-o", str(out), "-p", "the camera pans left",
                 "--negative-prompt", "static", "--text-guidance", "3", *common])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0 and out.is_file(), err
    assert "prompt is ignored" not in err
    out = tmp_path / "b.gif"
    code = main(["generate", str(image), "-c", str(blind_ckpt), "-o", str(out), "-p", "the camera pans left",
                 "--text-encoder", str(clip_text_file), "--text-guidance", "0.5", *common])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0 and out.is_file() and "prompt is ignored" not in err, err
    code = main(["generate", str(image), "-c", str(blind_ckpt), "-o", str(tmp_path / "c.gif"), "-p", "x",
                 "--text-encoder", str(tmp_path / "missing.safetensors"), *common])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "text encoder not found" in err
