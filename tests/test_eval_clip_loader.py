"""CLIP towers for the CLIP scores, loaded from random weights in the open_clip file layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from skimage import data

from conftest import randomize_
from kinetograph.cli import main
from kinetograph.errors import CheckpointError
from kinetograph.eval.clip_loader import load_clip_embedders, vision_config
from kinetograph.models.clip_image import CLIP_MEAN, CLIP_STD, CLIPImageEncoder, CLIPVisionConfig
from kinetograph.models.text import OpenCLIPTextConfig, OpenCLIPTextEncoder

VISION = CLIPVisionConfig(width=64, layers=2, heads=4, patch_size=16, image_size=64, embed_dim=32)
TEXT = OpenCLIPTextConfig(width=64, layers=2, heads=1, context_length=77, vocab_size=49408, embed_dim=32)


@pytest.fixture(scope="module")
def towers():
    return randomize_(CLIPImageEncoder(VISION), seed=1).eval(), randomize_(OpenCLIPTextEncoder(TEXT), seed=2).eval()


@pytest.fixture(scope="module")
def clip_file(towers, tmp_path_factory):
    image, text = towers
    sd = {f"visual.{k}": v for k, v in image.state_dict().items()} | dict(text.state_dict())
    sd["logit_scale"] = torch.tensor(4.6)
    path = tmp_path_factory.mktemp("clip") / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, path)
    return path


def test_vision_config_from_shapes_matches_the_released_vit_h():
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in CLIPImageEncoder(CLIPVisionConfig()).state_dict().items()}
    assert vision_config(shapes) == CLIPVisionConfig()


def test_embeddings_equal_the_towers_on_clip_preprocessed_frames(towers, clip_file):
    image, text = towers
    emb = load_clip_embedders(clip_file, heads=VISION.heads)
    frames = np.stack([data.astronaut()[:256, :384], data.coffee()[:256, :384]])  # landscape: crop, not squash
    got = emb.image(frames)
    crops = [np.asarray(Image.fromarray(f).resize((96, 64), Image.LANCZOS))[:, 16:80] for f in frames]
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = image(x).numpy()
    assert got.shape == (2, 32) and np.abs(got - ref).max() < 0.05 * np.abs(ref).max()
    with torch.no_grad():
        ref_text = text.encode(["the camera pans left"]).pooled.numpy()
    assert np.allclose(emb.text(["the camera pans left"]), ref_text, atol=1e-5)


def test_vision_only_file_gives_consistency_without_text(towers, tmp_path):
    image, _ = towers
    path = tmp_path / "svd_like.safetensors"
    prefix = "conditioner.embedders.0.open_clip.model.visual."
    save_file({prefix + k: v.contiguous() for k, v in image.state_dict().items()}, path)
    emb = load_clip_embedders(path, heads=VISION.heads)
    assert emb.text is None and emb.image(data.astronaut()[None]).shape == (1, 32)
    save_file({"foo": torch.zeros(1)}, tmp_path / "junk.safetensors")
    with pytest.raises(CheckpointError, match="vision tower"):
        load_clip_embedders(tmp_path / "junk.safetensors")


def test_eval_cli_reports_clip_scores_for_existing_videos(clip_file, tmp_path, capsys):
    from kinetograph.io.video import save_video

    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps({
        "name": "mini", "images": [{"id": "astro", "source": "skimage:astronaut"}],
        "prompts": [{"id": "left", "text": "the camera pans left", "expected": "left"}],
        "motion_buckets": [127], "seeds": [0],
    }))
    videos = tmp_path / "videos"
    frames = np.stack([np.roll(data.astronaut()[:128, :128], 2 * i, axis=1) for i in range(4)])
    save_video(frames, videos / "astro-left-m127-s0.mp4", fps=7)
    code = main(["eval", "--videos", str(videos), "--suite", str(suite), "--clip", str(clip_file), "-o", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 0, err
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["clip"]["status"] == "ok", report["clip"]
    case = report["cases"][0]
    assert case["status"] == "ok", case
    assert 0.0 <= case["clip_score"] <= 100.0 and -1.0 <= case["clip_consistency"] <= 1.0
