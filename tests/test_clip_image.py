"""CLIP image encoder: key layout vs the official lists, numerics vs transformers, preprocessing vs diffusers."""

from __future__ import annotations

import ast
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import transformers
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import _resize_with_antialiasing
from transformers import CLIPImageProcessorPil, CLIPVisionModelWithProjection

from kinetograph.errors import CheckpointError, InputError
from kinetograph.io.transformers_clip import (
    clip_config_from_transformers,
    clip_from_transformers,
    clip_to_transformers,
    clip_transformers_config,
)
from kinetograph.models.clip_image import CLIPImageEncoder, CLIPVisionConfig, clip_preprocess

REF = Path("/work/shared/reference/checkpoints")
SGM_PREFIX = "conditioner.embedders.0.open_clip.model.visual."
TINY = CLIPVisionConfig(width=64, layers=2, heads=4, mlp_ratio=4.0, patch_size=8, image_size=32, embed_dim=32)


def read_tsv(name: str) -> list[tuple[str, list[int], str]]:
    lines = (REF / name).read_text().splitlines()[1:]
    return [(k, ast.literal_eval(s), d) for k, s, d in (line.split("\t") for line in lines)]


def rows(sd: dict[str, torch.Tensor], prefix: str = "") -> list[tuple[str, list[int], str]]:
    return [(prefix + k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in sd.items()]


def randomized(cfg: CLIPVisionConfig, seed: int = 0) -> CLIPImageEncoder:
    """A model with every parameter drawn afresh (LayerNorm weights around 1 so signals keep their scale)."""
    torch.manual_seed(seed)
    model = CLIPImageEncoder(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_ln_weight = ".ln_" in "." + name and name.endswith("weight")
            p.copy_(torch.randn_like(p) * (0.3 if is_ln_weight else 0.2) + (1.0 if is_ln_weight else 0.0))
    return model


def transformers_twin(cfg: CLIPVisionConfig, sd: dict[str, torch.Tensor]) -> CLIPVisionModelWithProjection:
    config = transformers.CLIPVisionConfig(**clip_transformers_config(cfg))
    config._attn_implementation = "eager"  # reference math independent of our SDPA call
    twin = CLIPVisionModelWithProjection(config).eval()
    twin.load_state_dict(sd, strict=True)
    return twin


# ---------------------------------------------------------------------------------------------
# Layout


def test_full_size_keys_match_sgm_visual_rows():
    with torch.device("meta"):
        model = CLIPImageEncoder(CLIPVisionConfig())
    expected = [r for r in read_tsv("sgm_svd.tsv") if r[0].startswith(SGM_PREFIX)]
    assert len(expected) == 392
    assert rows(model.state_dict(), SGM_PREFIX) == expected
    assert sum(p.numel() for p in model.parameters()) == 632_076_800


def test_full_size_converted_keys_match_transformers_rows():
    with torch.device("meta"):
        sd = CLIPImageEncoder(CLIPVisionConfig()).state_dict()
    expected = read_tsv("transformers_clip_vision.tsv")
    assert len(expected) == 520
    assert rows(clip_to_transformers(sd)) == expected
    # ...and back to exactly our layout
    assert rows(clip_from_transformers(clip_to_transformers(sd))) == rows(sd)


def test_full_size_transformers_config_builds_the_listed_model():
    config = transformers.CLIPVisionConfig(**clip_transformers_config(CLIPVisionConfig()))
    with torch.device("meta"):
        twin = CLIPVisionModelWithProjection(config)
    assert rows(twin.state_dict()) == read_tsv("transformers_clip_vision.tsv")
    assert config.hidden_act == "gelu" and config.model_type == "clip_vision_model"


# ---------------------------------------------------------------------------------------------
# Numerics vs transformers


def test_forward_matches_transformers():
    model = randomized(TINY)
    twin = transformers_twin(TINY, clip_to_transformers(model.state_dict()))
    torch.manual_seed(1)
    pixels = torch.randn(3, 3, TINY.image_size, TINY.image_size)
    with torch.no_grad():
        ours = model(pixels)
        ref = twin(pixel_values=pixels)
        tokens = model.forward_tokens(pixels)
    assert ours.shape == (3, TINY.embed_dim)
    assert ref.image_embeds.abs().max() > 0.1  # a non-degenerate signal
    assert (ours - ref.image_embeds).abs().max() <= 1e-4
    assert (tokens - ref.last_hidden_state).abs().max() <= 1e-4
    # not L2-normalised: SVD feeds the raw projection to the UNet
    assert not torch.allclose(ours.norm(dim=-1), torch.ones(3), atol=1e-2)


def test_swapped_qk_is_detected():
    """The parity check above is sensitive to the q/k/v order inside in_proj."""
    model = randomized(TINY)
    sd = clip_to_transformers(model.state_dict())
    for i in range(TINY.layers):
        p = f"vision_model.encoder.layers.{i}.self_attn."
        for w in ("weight", "bias"):
            sd[p + f"q_proj.{w}"], sd[p + f"k_proj.{w}"] = sd[p + f"k_proj.{w}"], sd[p + f"q_proj.{w}"]
    twin = transformers_twin(TINY, sd)
    pixels = torch.randn(2, 3, TINY.image_size, TINY.image_size)
    with torch.no_grad():
        assert (model(pixels) - twin(pixel_values=pixels).image_embeds).abs().max() > 1e-3


def test_wrong_pixel_shape_is_a_user_error():
    model = CLIPImageEncoder(TINY)
    with pytest.raises(InputError, match="clip_preprocess"):
        model(torch.zeros(1, 3, TINY.image_size + 8, TINY.image_size))


# ---------------------------------------------------------------------------------------------
# Converter


def test_round_trips_are_bit_exact():
    sd = randomized(TINY).state_dict()
    back = clip_from_transformers(clip_to_transformers(sd))
    assert list(back) == list(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)

    torch.manual_seed(2)
    twin = transformers_twin(TINY, clip_to_transformers(sd))
    twin_sd = {k: torch.randn_like(v) for k, v in twin.state_dict().items()}
    again = clip_to_transformers(clip_from_transformers(twin_sd))
    assert sorted(again) == sorted(twin_sd)
    assert all(torch.equal(again[k], twin_sd[k]) for k in twin_sd)


def test_converter_is_strict():
    sd = CLIPImageEncoder(TINY).state_dict()
    with pytest.raises(CheckpointError, match="missing"):
        clip_to_transformers({k: v for k, v in sd.items() if k != "ln_post.bias"})
    with pytest.raises(CheckpointError, match="unexpected"):
        clip_to_transformers({**sd, "logit_scale": torch.zeros(())})
    hf = clip_to_transformers(sd)
    # transformers' non-persistent position_ids, saved by older exports, is dropped
    hf_old = {**hf, "vision_model.embeddings.position_ids": torch.arange(17)[None]}
    assert list(clip_from_transformers(hf_old)) == list(sd)
    with pytest.raises(CheckpointError, match="missing"):
        clip_from_transformers({k: v for k, v in hf.items() if "layers.1.self_attn.v_proj" not in k})


def test_config_round_trip():
    for cfg in (CLIPVisionConfig(), TINY):
        d = clip_transformers_config(cfg)
        assert clip_config_from_transformers(d) == cfg
        # what transformers itself makes of the dict reads back the same
        assert clip_config_from_transformers(transformers.CLIPVisionConfig(**d).to_dict()) == cfg
        assert CLIPVisionConfig(**asdict(cfg)) == cfg
    full = clip_transformers_config(CLIPVisionConfig())
    assert full["architectures"] == ["CLIPVisionModelWithProjection"]
    assert (full["hidden_size"], full["intermediate_size"], full["projection_dim"]) == (1280, 5120, 1024)
    # a full CLIP config carries the vision tower under vision_config
    clip = transformers.CLIPConfig(vision_config=full, projection_dim=1024).to_dict()
    assert clip_config_from_transformers(clip) == CLIPVisionConfig()
    # OpenAI CLIP's quick_gelu (the transformers default) is not our activation
    with pytest.raises(CheckpointError, match="quick_gelu"):
        clip_config_from_transformers(transformers.CLIPVisionConfig().to_dict())


# ---------------------------------------------------------------------------------------------
# Preprocessing vs diffusers' SVD pipeline


def diffusers_clip_input(image: torch.Tensor, size: int) -> torch.Tensor:
    """`StableVideoDiffusionPipeline._encode_image`'s image path on a [-1, 1] tensor."""
    x = _resize_with_antialiasing(image, (size, size))
    x = (x + 1.0) / 2.0
    processor = CLIPImageProcessorPil()  # default mean/std are OpenAI CLIP's, as in the SVD repos
    return processor(
        images=x, do_normalize=True, do_center_crop=False, do_resize=False, do_rescale=False, return_tensors="pt"
    ).pixel_values


@pytest.mark.parametrize(
    "shape",
    [
        (1, 3, 576, 1024),  # SVD's training resolution, downscaled and squashed
        (2, 3, 301, 450),  # odd, non-square downscale
        (1, 3, 100, 160),  # upscale in both axes
        (1, 3, 224, 224),  # identity size
    ],
)
def test_preprocess_matches_diffusers(shape):
    torch.manual_seed(3)
    image = torch.rand(shape) * 2 - 1
    ours = clip_preprocess(image)
    ref = diffusers_clip_input(image, 224)
    assert ours.shape == (shape[0], 3, 224, 224) and ours.dtype == torch.float32
    assert (ours - ref).abs().max() <= 1e-5


def test_preprocess_blurs_when_downscaling():
    """Antialiasing matters: a plain bicubic resize of high-frequency content differs a lot."""
    image = torch.ones(1, 3, 448, 448)
    image[..., ::2, :] = -1.0  # stripes at the Nyquist rate
    ours = clip_preprocess(image)
    plain = torch.nn.functional.interpolate(image, size=(224, 224), mode="bicubic", align_corners=True)
    plain = clip_preprocess(plain)  # 224 -> 224 leaves it untouched
    assert (ours - plain).abs().max() > 0.5


def test_preprocess_rejects_bad_input():
    with pytest.raises(InputError):
        clip_preprocess(torch.zeros(3, 64, 64))
    with pytest.raises(InputError):
        clip_preprocess(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
