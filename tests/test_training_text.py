"""Text in training: captions reach the UNet, the three drop events, text-to-image stage 1,
adding a text branch (or attention at more levels) to a checkpoint, and a text model trained end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import randomize_

from kinetograph.data.build import build
from kinetograph.io.checkpoint import load_checkpoint, save_original
from kinetograph.models.svd import SVD
from kinetograph.models.text import minilm_text_encoder
from kinetograph.pipeline.image_to_video import ImageToVideo
from kinetograph.presets import PRESETS
from kinetograph.training.config import from_dict, with_overrides
from kinetograph.training.loop import build_model, train
from kinetograph.training.rng import SampleRNG
from kinetograph.training.stages import CaptionEncoder, add_attention, add_text_branch, make_stage, unet_network


@pytest.fixture(scope="module")
def minilm():
    return minilm_text_encoder()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny_text_data")
    build(out, "tiny", seed=0, workers=1, progress=False)
    return out


def text_cfg(root: Path, out: Path, stage: str, **sections):
    base = from_dict({
        "stage": stage,
        "model": {"preset": "tiny_text"},
        "data": {"root": str(root), "num_frames": 2, "height": 32, "width": 32, "batch_size": 4,
                 "kinds": ["camera"] if stage != "image" else ["image", "camera"]},
        "run": {"out_dir": str(out), "max_steps": 2, "ckpt_every": 2, "val_count": 0, "progress": False,
                "tensorboard": False, "threads": 2},
    })
    return with_overrides(base, **sections)


def _batch(captions: list[str], size: int = 32, t: int = 2) -> dict:
    g = torch.Generator().manual_seed(0)
    b = len(captions)
    return {
        "video": torch.rand(b, t, 3, size, size, generator=g) * 2 - 1,
        "caption": captions,
        "fps": torch.full((b,), 8.0),
        "motion_bucket": torch.full((b,), 100),
    }


def test_caption_encoder_matches_the_encoder_pads_and_treats_empty_as_no_text(minilm):
    enc = CaptionEncoder(minilm)
    captions = ["The camera pans slowly to the left across a cat.", "", "zoom in", "zoom in"]
    tokens, mask, pooled = enc(captions, torch.device("cpu"))
    ref = minilm.encode(["The camera pans slowly to the left across a cat.", "zoom in"])
    n0, n2 = int(ref.mask[0].sum()), int(ref.mask[1].sum())
    assert tokens.shape == (4, n0, 384) and mask.shape == (4, n0)
    torch.testing.assert_close(tokens[0], ref.tokens[0, :n0])
    torch.testing.assert_close(tokens[2, :n2], ref.tokens[1, :n2], atol=1e-5, rtol=1e-5)  # alone vs batched
    torch.testing.assert_close(pooled[3], ref.pooled[1], atol=1e-5, rtol=1e-5)
    assert mask[0].all() and not mask[1].any() and mask[2].sum() == n2 and not mask[2, n2:].any()
    assert not tokens[1].any() and not pooled[1].any()
    assert set(enc.cache) == {captions[0], "zoom in"}  # cached: the next batch encodes nothing
    tokens2, _, _ = enc(["zoom in"], torch.device("cpu"))
    torch.testing.assert_close(tokens2[0], tokens[2, :n2])


@pytest.mark.parametrize(
    "rates, image_kept, text_kept",
    [((0.0, 0.0, 0.0), True, True), ((1.0, 0.0, 0.0), False, True), ((0.0, 1.0, 0.0), True, False),
     ((0.0, 0.0, 1.0), False, False)],
)
def test_drop_rates_decide_what_each_sample_loses(tmp_path, rates, image_kept, text_kept):
    cfg = text_cfg(tmp_path, tmp_path / "r", "finetune",
                   loss={"cond_drop_prob": rates[0], "text_drop_prob": rates[1], "both_drop_prob": rates[2]})
    stage = make_stage(cfg)
    model, _ = build_model(cfg, stage)
    batch = _batch(["pan left", "zoom out", "tilt up"])
    inputs = stage.encode(model, batch, SampleRNG(0, [0, 1, 2]))
    c = inputs.cond
    assert c.has_text and c.text_tokens.shape[0] == 3 * 2
    assert bool(c.crossattn.abs().sum(dim=(1, 2)).gt(0).all()) == image_kept
    assert bool(c.concat.abs().flatten(1).sum(1).gt(0).all()) == image_kept
    assert bool(c.text_mask.any(dim=1).all()) == text_kept and bool(c.text_pooled.abs().sum(1).gt(0).all()) == text_kept
    # Validation (train=False) never drops.
    val = stage.encode(model, batch, SampleRNG(0, [0, 1, 2]), train=False).cond
    assert val.text_mask.any(dim=1).all() and val.crossattn.abs().sum(dim=(1, 2)).gt(0).all()


def test_drop_decisions_are_per_sample_and_follow_positions(tmp_path):
    cfg = text_cfg(tmp_path, tmp_path / "r", "finetune",
                   loss={"cond_drop_prob": 0.3, "text_drop_prob": 0.3, "both_drop_prob": 0.2})
    stage = make_stage(cfg)
    model, _ = build_model(cfg, stage)
    captions = [f"caption {i}" for i in range(16)]
    batch = _batch(captions, size=16, t=1)
    positions = list(range(100, 116))
    c = stage.encode(model, batch, SampleRNG(0, positions)).cond
    u = SampleRNG(0, positions)
    u.randn(1, 4, 8, 8)  # the same draws in the same order: latent eps, cond aug sigma and noise, then u
    u.randn()
    u.randn(3, 16, 16)
    u = u.rand()
    image_dropped = (u < 0.3) | ((u >= 0.6) & (u < 0.8))
    text_dropped = (u >= 0.3) & (u < 0.8)
    assert torch.equal(c.crossattn.abs().sum(dim=(1, 2)) == 0, image_dropped)
    assert torch.equal(~c.text_mask.any(dim=1), text_dropped)
    assert 0 < int(image_dropped.sum()) < 16 and 0 < int(text_dropped.sum()) < 16


def test_image_stage_of_a_text_model_is_text_to_image(tmp_path):
    cfg = text_cfg(tmp_path, tmp_path / "i", "image", loss={"cond_drop_prob": 0.0, "text_drop_prob": 0.0,
                                                           "both_drop_prob": 0.0})
    stage = make_stage(cfg)
    model, _ = build_model(cfg, stage)
    c = stage.encode(model, _batch(["a cat", "a cup"], t=1), SampleRNG(0, [0, 1])).cond
    assert not c.crossattn.any()  # no image embedding: the caption is the only context
    assert c.text_mask.any(dim=1).all()
    # A text-blind model keeps SVD's image embedding in stage image.
    blind = with_overrides(cfg, model={"preset": "tiny"})
    stage_b = make_stage(blind)
    model_b, _ = build_model(blind, stage_b)
    cb = stage_b.encode(model_b, _batch(["a cat", "a cup"], t=1), SampleRNG(0, [0, 1])).cond
    assert cb.crossattn.abs().sum() > 0 and not cb.has_text


def test_text_changes_the_training_loss_once_the_branch_is_trained(tmp_path):
    cfg = text_cfg(tmp_path, tmp_path / "l", "finetune", loss={"cond_drop_prob": 0.0, "text_drop_prob": 0.0,
                                                              "both_drop_prob": 0.0})
    stage = make_stage(cfg)
    model, _ = build_model(cfg, stage)
    randomize_(model.unet, seed=4, std=0.05)  # non-zero text projections
    batch = _batch(["the camera pans left", "the camera zooms in"])
    inputs = stage.encode(model, batch, SampleRNG(0, [0, 1]))
    net = unet_network(model.unet)
    x = torch.randn_like(inputs.x0)
    c_noise = torch.zeros(x.shape[0])
    with torch.no_grad():
        with_text = net(x, c_noise, inputs.cond)
        without = net(x, c_noise, inputs.cond.without_text())
    assert (with_text - without).abs().max() > 1e-3


def test_add_text_branch_keeps_the_image_only_model_exactly(tmp_path):
    blind = randomize_(SVD(PRESETS["tiny"].model), seed=1, std=0.05)
    texted = add_text_branch(blind, "minilm-l6-v2")
    assert texted.cfg.text_encoder == "minilm-l6-v2" and texted.cfg.unet.text_dim == 384
    assert blind.cfg.text_encoder == ""
    g = torch.Generator().manual_seed(0)
    b, t = 1, 2
    x = torch.randn(b * t, 8, 8, 8, generator=g)
    ctx = torch.randn(b * t, 1, 32, generator=g)
    y = torch.randn(b * t, 48, generator=g)
    tokens = torch.randn(b * t, 5, 384, generator=g)
    with torch.no_grad():
        ref = blind.unet(x, torch.ones(b * t), ctx, y, t, torch.zeros(b, t))
        out = texted.unet(x, torch.ones(b * t), ctx, y, t, torch.zeros(b, t), text_tokens=tokens,
                          text_mask=torch.ones(b * t, 5, dtype=torch.bool), text_pooled=tokens[:, 0])
    assert torch.equal(ref, out)
    # Through the config: an image-only init checkpoint gets the branch; the export records the encoder.
    init = save_original(blind, tmp_path / "blind.safetensors", "tiny")
    cfg = text_cfg(tmp_path, tmp_path / "a", "finetune",
                   model={"preset": "tiny", "init": str(init), "text_encoder": "minilm-l6-v2"})
    model, preset = build_model(cfg, make_stage(cfg))
    assert preset == "tiny" and model.cfg.text_encoder == "minilm-l6-v2"


@pytest.mark.parametrize(("base", "grow"), [((1,), (2,)), ((2,), (1,))])
def test_add_attention_keeps_the_model_exactly_and_saves_in_the_official_layout(tmp_path, base, grow):
    """Growing attention at a level changes no output; where the level's output block has an
    upsampler (factor 2 here), that moves from entry 1 to entry 2, as in an official file."""
    from dataclasses import replace

    cfg = PRESETS["tiny"].model
    small = randomize_(SVD(replace(cfg, unet=replace(cfg.unet, attention_resolutions=base))), seed=1, std=0.05)
    grown = add_attention(small, grow)
    assert grown.cfg.unet.attention_resolutions == (2, 1)
    g = torch.Generator().manual_seed(0)
    b, t = 1, 2
    x = torch.randn(b * t, 8, 8, 8, generator=g)
    ctx = torch.randn(b * t, 1, 32, generator=g)
    y = torch.randn(b * t, 48, generator=g)
    with torch.no_grad():
        ref = small.unet(x, torch.ones(b * t), ctx, y, t, torch.zeros(b, t))
        out = grown.unet(x, torch.ones(b * t), ctx, y, t, torch.zeros(b, t))
    assert torch.equal(ref, out)
    # The grown model has every key of a model built with that attention, and trains: its new
    # blocks get gradients (through the zero projection, into the projection itself).
    assert set(grown.state_dict()) == set(SVD(cfg).state_dict())
    grown.unet(x, torch.ones(b * t), ctx, y, t, torch.zeros(b, t)).square().mean().backward()
    new_out = [p for n, p in grown.unet.named_parameters() if n.endswith("proj_out.weight")]
    assert all(p.grad is not None for p in new_out) and any(p.grad.abs().sum() > 0 for p in new_out)
    # Through the config: the init checkpoint gets the attention, and the export loads back as is.
    init = save_original(small, tmp_path / "small.safetensors", "tiny")
    run_cfg = text_cfg(tmp_path, tmp_path / "a", "finetune",
                       model={"preset": "tiny", "init": str(init), "attention_resolutions": list(grow)})
    model, preset = build_model(run_cfg, make_stage(run_cfg))
    assert preset == "tiny" and model.cfg.unet.attention_resolutions == (2, 1)
    back = load_checkpoint(save_original(model, tmp_path / "grown.safetensors", "tiny")).model
    with torch.no_grad():
        assert torch.equal(back.unet(x, torch.ones(b * t), ctx, y, t, torch.zeros(b, t)), ref)
    # A level the model does not have: an input error naming the key, and no run folder left behind.
    from kinetograph.errors import InputError

    bad = text_cfg(tmp_path, tmp_path / "bad", "finetune",
                   model={"preset": "tiny", "init": str(init), "attention_resolutions": [4]})
    with pytest.raises(InputError, match="model.attention_resolutions"):
        train(bad)
    assert not (tmp_path / "bad").exists()


def test_text_model_trains_through_the_stages_and_generates_with_a_prompt(data: Path, tmp_path: Path):
    image = text_cfg(data, tmp_path / "image", "image",
                     data={"kinds": ["image", "camera"], "batch_size": 2},
                     run={"max_steps": 2, "ckpt_every": 2, "out_dir": str(tmp_path / "image"), "val_count": 1,
                          "val_steps": 2, "progress": False, "tensorboard": False})
    r1 = train(image)
    ft = text_cfg(data, tmp_path / "ft", "finetune",
                  model={"init": str(r1.exports[0])},
                  data={"height": 64, "width": 64},  # the pipeline (validation) takes multiples of 64
                  run={"max_steps": 2, "ckpt_every": 2, "out_dir": str(tmp_path / "ft"), "val_count": 1,
                       "val_steps": 2, "progress": False, "tensorboard": False})
    r3 = train(ft)
    assert r1.validation and r3.validation and r3.validation[0].is_file()
    loaded = load_checkpoint(r3.exports[0])
    assert loaded.model.cfg.text_encoder == "minilm-l6-v2" and loaded.preset.name == "tiny_text"
    pipe = ImageToVideo(loaded.model, loaded.preset)
    photo = (torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8).numpy()
    a = pipe(photo, "the camera pans left", height=64, width=64, num_frames=2, num_inference_steps=2, seed=0)
    b = pipe(photo, "the camera pans left", height=64, width=64, num_frames=2, num_inference_steps=2, seed=0)
    assert a.frames.shape == (2, 64, 64, 3) and (a.frames == b.frames).all()


def test_drop_rates_are_validated(tmp_path):
    from kinetograph.errors import InputError

    with pytest.raises(InputError, match="sum to <= 1"):
        text_cfg(tmp_path, tmp_path / "x", "finetune", loss={"cond_drop_prob": 0.5, "text_drop_prob": 0.4,
                                                            "both_drop_prob": 0.2})


def test_text_motion_recipe_holds_out_the_eval_photos_and_names_only_the_move():
    import json

    from kinetograph.data.build import HELD_OUT_PHOTOS, RECIPES
    from kinetograph.eval.suite import load_suite

    recipe = RECIPES["text_motion"]
    suite = load_suite(None)  # the shipped default suite
    assert set(HELD_OUT_PHOTOS) == {im.id for im in suite.images}
    assert not set(recipe.photos) & set(HELD_OUT_PHOTOS) and len(recipe.photos) == 10
    assert json.dumps(recipe.moves) == json.dumps(["pan_left", "pan_right", "zoom_in", "zoom_out"])
    from kinetograph.data import camera_motion
    from kinetograph.data.sources import PHOTOS

    small = camera_motion.CameraMotionConfig(height=32, width=32, num_frames=2)
    clips = list(camera_motion.generate(small, 0, PHOTOS[1:2], 1, ("pan_left",), "the scene"))
    assert clips and all("the scene" in c.caption for c in clips)
