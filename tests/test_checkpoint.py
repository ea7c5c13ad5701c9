"""Checkpoint layouts: full-size key/shape contracts, strict loading, conversion round trips, pickle refusal."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import randomize_
from kinetograph.errors import CheckpointError, InputError
from kinetograph.io import layout_sgm as sgm
from kinetograph.io.checkpoint import (
    convert,
    load_checkpoint,
    save_diffusers,
    save_original,
    sgm_expected_shapes,
)
from kinetograph.io.diffusers_unet import unet_to_diffusers
from kinetograph.io.diffusers_vae import vae_to_diffusers
from kinetograph.io.transformers_clip import clip_to_transformers
from kinetograph.models.svd import SVD
from kinetograph.presets import PRESETS


def meta_model(preset: str) -> SVD:
    with torch.device("meta"):
        return SVD(PRESETS[preset].model)


@pytest.mark.parametrize(
    "preset,tsv_name", [("svd", "sgm_svd.tsv"), ("svd_image_decoder", "sgm_svd_image_decoder.tsv")]
)
def test_full_size_original_layout_matches_reference(preset, tsv_name, tsv):
    expected = tsv(tsv_name)
    ours = sgm_expected_shapes(PRESETS[preset].model, meta_model(preset))
    assert set(ours) == set(expected), (sorted(set(expected) - set(ours))[:5], sorted(set(ours) - set(expected))[:5])
    assert ours == expected


def test_full_size_diffusers_layout_matches_reference(tsv):
    model = meta_model("svd")
    sd = model.state_dict()

    def part(prefix):
        return {k[len(prefix) + 1 :]: v for k, v in sd.items() if k.startswith(prefix + ".")}

    for converted, name in [
        (unet_to_diffusers(part("unet")), "diffusers_unet.tsv"),
        (vae_to_diffusers(part("vae")), "diffusers_vae.tsv"),
        (clip_to_transformers(part("image_encoder")), "transformers_clip_vision.tsv"),
    ]:
        assert {k: tuple(v.shape) for k, v in converted.items()} == tsv(name), name


def test_full_size_parameter_count_matches_fact_sheet():
    model = meta_model("svd")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model.unet) == 1_524_623_082
    assert count(model.image_encoder) == 632_076_800


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return randomize_(SVD(PRESETS["tiny"].model), seed=1).eval()


def state(model: SVD) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_original_file_round_trip_is_exact(tiny_model, tmp_path):
    path = save_original(tiny_model, tmp_path / "tiny.safetensors", "tiny")
    raw = load_file(path)
    # The encoder is written twice, like the released files.
    enc = [k for k in raw if k.startswith(sgm.FIRST_STAGE + "encoder.")]
    assert enc and all(torch.equal(raw[k], raw[sgm.COND_VAE + k[len(sgm.FIRST_STAGE) :]]) for k in enc)
    loaded = load_checkpoint(path)
    assert loaded.layout == "original" and loaded.preset.name == "tiny"
    got, want = state(loaded.model), state(tiny_model)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_convert_both_ways_is_bit_exact(tiny_model, tmp_path):
    original = save_original(tiny_model, tmp_path / "a.safetensors", "tiny")
    folder = convert(original, tmp_path / "diffusers", to="diffusers")
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "StableVideoDiffusionPipeline"
    back = convert(folder, tmp_path / "b.safetensors", to="original")
    a, b = load_file(original), load_file(back)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # And diffusers -> original -> diffusers gives the same files.
    folder2 = convert(back, tmp_path / "diffusers2", to="diffusers")
    for sub in ("unet/diffusion_pytorch_model", "vae/diffusion_pytorch_model", "image_encoder/model"):
        x, y = load_file(folder / f"{sub}.safetensors"), load_file(folder2 / f"{sub}.safetensors")
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_convert_to_float16_halves_the_file_and_keeps_the_values(tiny_model, tmp_path):
    extras = {sgm.OPEN_CLIP + "ln_final.bias": torch.randn(32)}
    original = save_original(tiny_model, tmp_path / "a.safetensors", "tiny", extras=extras)
    half = convert(original, tmp_path / "h.safetensors", to="original", dtype="float16")
    a, h = load_file(original), load_file(half)
    assert a.keys() == h.keys()
    assert all(h[k].dtype == torch.float16 for k in h if a[k].is_floating_point())
    assert all(torch.equal(h[k], a[k].half()) for k in a)  # exactly the rounded values
    assert half.stat().st_size < 0.55 * original.stat().st_size
    loaded = load_checkpoint(half, dtype=torch.float32)  # loads like any checkpoint, cast on load
    assert loaded.preset.name == "tiny"
    with pytest.raises(InputError, match="--dtype"):
        convert(original, tmp_path / "x.safetensors", to="original", dtype="float8")


def test_convert_keeps_extras_without_counterpart(tiny_model, tmp_path):
    extras = {sgm.OPEN_CLIP + "logit_scale": torch.tensor(4.6), sgm.OPEN_CLIP + "ln_final.bias": torch.randn(32)}
    original = save_original(tiny_model, tmp_path / "a.safetensors", "tiny", extras=extras)
    folder = convert(original, tmp_path / "d", to="diffusers")
    back = load_file(convert(folder, tmp_path / "b.safetensors", to="original"))
    assert all(torch.equal(back[k], v) for k, v in extras.items())


def test_diffusers_folder_loads_in_diffusers(tiny_model, tmp_path):
    from diffusers import StableVideoDiffusionPipeline

    folder = save_diffusers(tiny_model, tmp_path / "d", "tiny")
    pipe = StableVideoDiffusionPipeline.from_pretrained(folder)
    ours = tiny_model.unet.state_dict()
    theirs = pipe.unet.state_dict()
    assert torch.equal(theirs["conv_in.weight"], ours["input_blocks.0.0.weight"])
    assert pipe.vae_scale_factor == tiny_model.cfg.vae.downsample_factor


def test_strict_loading_names_layout_and_offenders(tiny_model, tmp_path):
    raw = load_file(save_original(tiny_model, tmp_path / "a.safetensors", "tiny"))
    meta = {"kinetograph.config": json.dumps(tiny_model.cfg.to_dict()), "kinetograph.preset": "tiny"}
    dropped = dict(raw)
    victim = sgm.UNET + "out.2.weight"
    del dropped[victim]
    dropped["model.diffusion_model.bogus.weight"] = torch.zeros(1)
    save_file(dropped, tmp_path / "bad.safetensors", metadata=meta)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "bad.safetensors")
    msg = str(e.value)
    assert "original SVD layout" in msg and victim in msg and "bogus" in msg and "\n" not in msg

    reshaped = dict(raw)
    reshaped[victim] = torch.zeros(1, 2, 3)
    save_file(reshaped, tmp_path / "shape.safetensors", metadata=meta)
    with pytest.raises(CheckpointError, match="mis-shaped"):
        load_checkpoint(tmp_path / "shape.safetensors")


def test_component_file_and_missing_path_are_clear_errors(tiny_model, tmp_path):
    unet_only = {k: v.contiguous() for k, v in unet_to_diffusers(tiny_model.unet.state_dict()).items()}
    save_file(unet_only, tmp_path / "unet.safetensors")
    with pytest.raises(CheckpointError, match="diffusers folder"):
        load_checkpoint(tmp_path / "unet.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(InputError, match="unknown preset"):
        load_checkpoint(tmp_path / "unet.safetensors", preset="svd_xxl")


def test_pickle_refused_unless_allowed(tiny_model, tmp_path):
    sd = sgm.to_sgm(state(tiny_model))
    torch.save({"state_dict": sd}, tmp_path / "tiny_svd.ckpt")
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(tmp_path / "tiny_svd.ckpt", preset="tiny")
    # A pickle carries no config: the tiny preset supplies it.
    loaded = load_checkpoint(tmp_path / "tiny_svd.ckpt", preset="tiny", allow_pickle=True)
    assert torch.equal(loaded.model.unet.out[2].weight, tiny_model.unet.out[2].weight)


def test_dtype_cast_on_load(tiny_model, tmp_path):
    path = save_original(tiny_model, tmp_path / "a.safetensors", "tiny")
    loaded = load_checkpoint(path, dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    assert torch.equal(loaded.model.unet.out[2].weight, tiny_model.unet.out[2].weight.bfloat16())


def test_diffusers_folder_with_fp16_variant_and_sharded_unet(tiny_model, tmp_path):
    """The released diffusers repos ship `*.fp16.safetensors`; big components come sharded with an index."""
    folder = save_diffusers(tiny_model, tmp_path / "d", "tiny")
    for sub, stem in [("vae", "diffusion_pytorch_model"), ("image_encoder", "model")]:
        f = folder / sub / f"{stem}.safetensors"
        save_file({k: v.half() for k, v in load_file(f).items()}, folder / sub / f"{stem}.fp16.safetensors")
        f.unlink()
    unet = folder / "unet" / "diffusion_pytorch_model.safetensors"
    sd = load_file(unet)
    keys = sorted(sd)
    half = len(keys) // 2
    shards = {"part-1.safetensors": keys[:half], "part-2.safetensors": keys[half:]}
    for name, ks in shards.items():
        save_file({k: sd[k] for k in ks}, folder / "unet" / name)
    index = {"weight_map": {k: name for name, ks in shards.items() for k in ks}}
    (folder / "unet" / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    unet.unlink()
    loaded = load_checkpoint(folder)
    assert loaded.layout == "diffusers"
    assert torch.equal(loaded.model.unet.out[2].weight, tiny_model.unet.out[2].weight)
    w = tiny_model.vae.decoder.conv_out.weight
    assert torch.equal(loaded.model.vae.decoder.conv_out.weight, w.half().float())


def test_text_model_refuses_diffusers_export_clearly(tmp_path):
    with torch.device("meta"):
        model = SVD(PRESETS["tiny_text"].model)
    with pytest.raises(CheckpointError, match="no diffusers equivalent"):
        save_diffusers(model, tmp_path / "d", "tiny_text")
    assert not (tmp_path / "d").exists()


def test_image_anchor_survives_the_original_file_and_refuses_diffusers(tiny_model, tmp_path):
    from dataclasses import replace

    model = copy.deepcopy(tiny_model)
    model.cfg = replace(model.cfg, image_anchor=True)
    assert load_checkpoint(save_original(model, tmp_path / "a.safetensors", "tiny")).model.cfg.image_anchor
    assert not load_checkpoint(save_original(tiny_model, tmp_path / "p.safetensors", "tiny")).model.cfg.image_anchor
    with pytest.raises(CheckpointError, match="anchored .* no diffusers equivalent"):
        save_diffusers(model, tmp_path / "d", "tiny")
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    "preset,option,refusal",
    [("tiny", "scale_shift_norm", "scale-shift .* no diffusers equivalent"),
     ("tiny_text", "temporal_text", "text-conditioned .* no diffusers equivalent")],
)
def test_unet_options_round_trip_in_the_original_file_and_refuse_diffusers(tmp_path, preset, option, refusal):
    from dataclasses import replace

    base = PRESETS[preset].model
    model = randomize_(SVD(replace(base, unet=replace(base.unet, **{option: True}))), seed=1)
    loaded = load_checkpoint(save_original(model, tmp_path / "s.safetensors", preset)).model
    assert getattr(loaded.cfg.unet, option)
    got, want = state(loaded), state(model)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    with pytest.raises(CheckpointError, match=refusal):
        save_diffusers(model, tmp_path / "d", preset)
