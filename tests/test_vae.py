"""VAE: official key layout, diffusers key map, and numerics against diffusers on identical weights."""

from __future__ import annotations

import pytest
import torch
import diffusers
from diffusers.models.resnet import AlphaBlender

from kinetograph.errors import CheckpointError, InputError
from kinetograph.io.diffusers_vae import (
    vae_config_from_diffusers,
    vae_diffusers_config,
    vae_from_diffusers,
    vae_to_diffusers,
)
from kinetograph.models.vae import VAE, VAEConfig
from conftest import randomize_

COND = "conditioner.embedders.3.encoder."
FIRST = "first_stage_model."
TINY = VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=2, z_channels=4)  # f = 2
ATOL = 1e-4


def _rows(sd: dict[str, torch.Tensor], prefix: str = "") -> list[tuple[str, tuple[int, ...]]]:
    return [(prefix + k, tuple(v.shape)) for k, v in sd.items()]


def _part(rows: dict[str, tuple[int, ...]], prefix: str) -> list[tuple[str, tuple[int, ...]]]:
    """TSV rows under `prefix`, in file (state_dict) order."""
    return [(k, s) for k, s in rows.items() if k.startswith(prefix)]


def _meta_vae(cfg: VAEConfig) -> VAE:
    with torch.device("meta"):
        return VAE(cfg)


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Random values for every parameter, at scales that keep every branch of the net alive.

    mix_factor is drawn wide so alpha is far from 1/2: a swapped blend convention then shows.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            for name, p in m.named_parameters(recurse=False):
                if isinstance(m, torch.nn.GroupNorm):
                    p.copy_((1.0 if name == "weight" else 0.0) + 0.3 * torch.randn(p.shape, generator=g))
                elif name == "mix_factor":
                    p.copy_(2.0 * torch.randn(p.shape, generator=g))
                elif p.ndim >= 2:
                    p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
                else:
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))


def _pair(cfg: VAEConfig, seed: int = 0) -> tuple[VAE, torch.nn.Module]:
    """Our VAE with random weights and its diffusers twin loaded through our converter."""
    ours = VAE(cfg).eval()
    _randomize(ours, seed)
    config = vae_diffusers_config(cfg)
    theirs = getattr(diffusers, config["_class_name"]).from_config(config).eval()
    theirs.load_state_dict(vae_to_diffusers(ours.state_dict()), strict=True)
    return ours, theirs


# ---- full size: official layouts (meta device) ---------------------------------------------


@pytest.mark.parametrize("temporal, tsv_name", [(True, "sgm_svd.tsv"), (False, "sgm_svd_image_decoder.tsv")])
def test_full_size_keys_match_sgm(temporal, tsv_name, tsv):
    rows = tsv(tsv_name)
    sd = _meta_vae(VAEConfig(temporal_decoder=temporal)).state_dict()
    enc = {k: v for k, v in sd.items() if k.startswith("encoder.")}
    dec = {k: v for k, v in sd.items() if k.startswith("decoder.")}
    assert len(enc) == 106 and len(dec) == (266 if temporal else 138)

    # encoder: both official copies; quant_conv from the conditioner; decoder from the first stage
    assert _rows(enc, COND) == _part(rows, COND + "encoder.")
    assert _rows(enc, FIRST) == _part(rows, FIRST + "encoder.")
    assert _rows({k: v for k, v in sd.items() if k.startswith("quant_conv.")}, COND) == _part(
        rows, COND + "quant_conv."
    )
    assert _rows(dec, FIRST) == _part(rows, FIRST + "decoder.")
    coders = (FIRST + "encoder.", FIRST + "decoder.")
    first_rest = {k: s for k, s in rows.items() if k.startswith(FIRST) and not k.startswith(coders)}
    if temporal:
        assert "post_quant_conv.weight" not in sd
        assert first_rest == {}  # the temporal first stage has no quant_conv / post_quant_conv
    else:
        rest = {k: v for k, v in sd.items() if k.startswith(("quant_conv.", "post_quant_conv."))}
        assert dict(_rows(rest, FIRST)) == first_rest

    # the conditioner's unused 2-D decoder has exactly our 2-D decoder's keys
    sd2 = _meta_vae(VAEConfig(temporal_decoder=False)).state_dict()
    dec2 = {k: v for k, v in sd2.items() if k.startswith(("decoder.", "post_quant_conv."))}
    assert dict(_rows(dec2, COND)) == dict(_part(rows, COND + "decoder.") + _part(rows, COND + "post_quant_conv."))


def test_full_size_diffusers_keys_match_reference(tsv):
    converted = vae_to_diffusers(_meta_vae(VAEConfig()).state_dict())
    assert dict(_rows(converted)) == tsv("diffusers_vae.tsv")


@pytest.mark.parametrize("temporal", [True, False])
def test_full_size_diffusers_config_builds_matching_model(temporal):
    cfg = VAEConfig(temporal_decoder=temporal)
    config = vae_diffusers_config(cfg)
    assert config["_class_name"] == ("AutoencoderKLTemporalDecoder" if temporal else "AutoencoderKL")
    with torch.device("meta"):
        theirs = getattr(diffusers, config["_class_name"]).from_config(config)
    converted = vae_to_diffusers(_meta_vae(cfg).state_dict())
    assert dict(_rows(converted)) == dict(_rows(theirs.state_dict()))
    assert vae_config_from_diffusers(dict(theirs.config)) == cfg
    assert cfg.downsample_factor == 8


# ---- tiny, random weights: numerics vs diffusers --------------------------------------------


def test_temporal_vae_matches_diffusers():
    ours, theirs = _pair(TINY, seed=1)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 16, 16, generator=g) * 2 - 1  # b=2 videos of t=3 frames
    with torch.no_grad():
        post = theirs.encode(x).latent_dist
        mean, logvar = ours.encode_moments(x)
        z = ours.encode(x)
        assert z.shape == (6, 4, 8, 8)
        assert (z - post.mode()).abs().max() <= ATOL
        assert (logvar - post.logvar).abs().max() <= ATOL
        zs = ours.encode(x, sample=True, generator=torch.Generator().manual_seed(5))
        ref_s = post.sample(generator=torch.Generator().manual_seed(5))
        assert (zs - ref_s).abs().max() <= ATOL and (zs - z).abs().max() > 1e-3

        z = torch.randn(6, 4, 8, 8, generator=g)
        out = ours.decode(z, num_frames=3)
        ref = theirs.decode(z, num_frames=3).sample
        assert out.shape == (6, 3, 16, 16)
        assert (out - ref).abs().max() <= ATOL

        # chunks of 2 within each 3-frame video: windows [0:2], [2:3] per video
        out = ours.decode(z, num_frames=3, chunk_size=2)
        windows = ((0, 2), (2, 3), (3, 5), (5, 6))
        ref = torch.cat([theirs.decode(z[s:e], num_frames=e - s).sample for s, e in windows])
        assert (out - ref).abs().max() <= ATOL


def test_blend_convention_is_checked():
    """The parity above fails if the decoder blended spatial/temporal the UNet's way round."""
    ours, theirs = _pair(TINY, seed=2)
    for m in theirs.modules():
        if isinstance(m, AlphaBlender):
            m.switch_spatial_to_temporal_mix = False
    z = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (ours.decode(z, num_frames=3) - theirs.decode(z, num_frames=3).sample).abs().max() > 1e-2


@pytest.mark.parametrize("groups", [32, 8])
def test_image_decoder_vae_matches_diffusers(groups):
    cfg = VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, temporal_decoder=False, norm_groups=groups)
    ours, theirs = _pair(cfg, seed=3)
    assert theirs.config.norm_num_groups == groups  # norm_groups maps to diffusers' norm_num_groups
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1
    z = torch.randn(5, 4, 8, 8, generator=g)
    with torch.no_grad():
        assert (ours.encode(x) - theirs.encode(x).latent_dist.mode()).abs().max() <= ATOL
        ref = theirs.decode(z).sample
        for num_frames, chunk in ((5, None), (1, None), (5, 2)):  # frames are independent here
            assert (ours.decode(z, num_frames=num_frames, chunk_size=chunk) - ref).abs().max() <= ATOL


@pytest.mark.parametrize("temporal", [True, False])
def test_diffusers_round_trips_are_bit_exact(temporal):
    cfg = VAEConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=2, temporal_decoder=temporal)
    ours, theirs = _pair(cfg, seed=4)
    sd = ours.state_dict()
    back = vae_from_diffusers(vae_to_diffusers(sd))
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    # and from diffusers' side, starting from its own (independently randomized) tensors
    _randomize(theirs, seed=5)
    dsd = theirs.state_dict()
    again = vae_to_diffusers(vae_from_diffusers(dsd))
    assert set(again) == set(dsd) and all(torch.equal(again[k], dsd[k]) for k in dsd)
    VAE(cfg).load_state_dict(vae_from_diffusers(dsd), strict=True)


def test_converter_rejects_unknown_and_missing_keys():
    sd = VAE(TINY).state_dict()
    with pytest.raises(CheckpointError, match="not part of"):
        vae_to_diffusers({**sd, "decoder.extra.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="missing"):
        vae_to_diffusers({k: v for k, v in sd.items() if k != "decoder.mid.block_1.mix_factor"})
    d = vae_to_diffusers(sd)
    with pytest.raises(CheckpointError, match="not part of"):
        vae_from_diffusers({**d, "decoder.up_blocks.0.attentions.0.to_q.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="not a VAE"):
        vae_from_diffusers({"conv_in.weight": torch.zeros(1)})


def test_config_maps_refuse_what_diffusers_cannot_express():
    with pytest.raises(CheckpointError, match="num_res_blocks"):
        vae_diffusers_config(VAEConfig(num_res_blocks=1))
    assert vae_diffusers_config(VAEConfig(num_res_blocks=1, temporal_decoder=False))["layers_per_block"] == 1
    config = vae_diffusers_config(VAEConfig(temporal_decoder=False))
    with pytest.raises(CheckpointError, match="shift_factor"):
        vae_config_from_diffusers({**config, "shift_factor": 0.1})
    with pytest.raises(CheckpointError, match="_class_name"):
        vae_config_from_diffusers({**config, "_class_name": "AutoencoderTiny"})
    with pytest.raises(CheckpointError, match="GroupNorm groups"):
        vae_diffusers_config(VAEConfig(norm_groups=8))  # its temporal decoder hard-codes 32
    assert vae_config_from_diffusers({**config, "norm_num_groups": 8}).norm_groups == 8
    with pytest.raises(ValueError, match="norm_groups"):
        VAEConfig(norm_groups=5)
    for temporal in (True, False):
        with pytest.raises(CheckpointError, match="patch shortcuts"):
            vae_diffusers_config(VAEConfig(num_res_blocks=2, temporal_decoder=temporal, patch_shortcut=True))


# ---- behaviour of our own API ---------------------------------------------------------------


def test_chunks_are_separate_temporal_windows():
    vae = VAE(TINY).eval()
    _randomize(vae, seed=6)
    z = torch.randn(8, 4, 8, 8, generator=torch.Generator().manual_seed(0))  # b=2, t=4
    with torch.no_grad():
        full = vae.decode(z, num_frames=4)
        assert torch.allclose(vae.decode(z, num_frames=4, chunk_size=4), full, atol=1e-5, rtol=0)
        assert torch.allclose(vae.decode(z, num_frames=4, chunk_size=9), full, atol=1e-5, rtol=0)
        chunked = vae.decode(z, num_frames=4, chunk_size=2)
        assert (chunked - full).abs().max() > 1e-3
        # a chunk of 2 frames is exactly a 2-frame video
        assert torch.allclose(chunked[2:4], vae.decode(z[2:4], num_frames=2), atol=1e-5, rtol=0)
        # videos do not see each other: the second video alone decodes the same
        assert torch.allclose(full[4:], vae.decode(z[4:], num_frames=4), atol=1e-5, rtol=0)


def test_gradient_checkpointing_gives_same_gradients():
    vae = VAE(TINY)
    _randomize(vae, seed=7)
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def grads() -> dict[str, torch.Tensor]:
        vae.zero_grad()
        vae.decode(vae.encode(x), num_frames=3).square().mean().backward()
        return {k: p.grad.clone() for k, p in vae.named_parameters()}

    plain = grads()
    vae.gradient_checkpointing = True
    assert vae.encoder.gradient_checkpointing and vae.decoder.gradient_checkpointing
    ckpt = grads()
    assert all(torch.allclose(plain[k], ckpt[k], atol=1e-6, rtol=1e-5) for k in plain)


def test_input_errors():
    vae = VAE(TINY)
    with pytest.raises(InputError):
        vae.encode(torch.zeros(1, 4, 8, 8))
    with pytest.raises(InputError):
        vae.decode(torch.zeros(5, 4, 4, 4), num_frames=3)
    with pytest.raises(InputError):
        vae.decode(torch.zeros(3, 4, 4, 4), num_frames=3, chunk_size=0)
    with pytest.raises(InputError):
        vae.decode(torch.zeros(3, 8, 4, 4), num_frames=3)


# ---- patch shortcuts (our small models; not in the official layout) ----------------------------


def test_patch_basis_is_orthonormal_dct_times_colour_lowest_frequencies_first():
    from kinetograph.models.vae import patch_basis

    basis = patch_basis(8, 16).double()  # (z, 3, f, f)
    flat = basis.flatten(1)
    assert torch.allclose(flat @ flat.T, torch.eye(16, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(basis[0], torch.full((3, 8, 8), 1 / (3 * 64) ** 0.5, dtype=torch.float64))  # grey mean
    # every vector is one colour direction times one 2-D frequency: grey ones have equal RGB
    grey = [bool(torch.allclose(v[0], v[1]) and torch.allclose(v[1], v[2])) for v in basis]
    assert sum(grey) == 14
    # the two colour vectors are the opponent pair's means (constant over the patch)
    colour = [v for v, g in zip(basis, grey) if not g]
    assert all(torch.allclose(v, v[:, :1, :1].expand_as(v)) for v in colour)
    # a horizontal ramp is mostly the first horizontal frequency: low frequencies come first
    ramp = torch.linspace(-1, 1, 8, dtype=torch.float64).expand(3, 8, 8)
    assert (flat @ ramp.flatten()).abs().argmax() in (1, 2)


def test_a_fresh_vae_with_patch_shortcuts_is_the_linear_patch_autoencoder_on_a_real_photo():
    import numpy as np
    from skimage import data as skdata

    from kinetograph.eval.fidelity import psnr
    from kinetograph.models.vae import patch_basis
    from kinetograph.pipeline.preprocess import image_to_tensor, load_image, resize_and_crop

    cfg = VAEConfig(ch=32, ch_mult=(1, 2, 2, 4), num_res_blocks=1, z_channels=16, norm_groups=8, patch_shortcut=True)
    torch.manual_seed(0)
    vae = VAE(cfg).eval()
    photo = resize_and_crop(load_image(skdata.chelsea()), 128, 128)
    x = image_to_tensor(photo)
    with torch.no_grad():
        z = vae.encode(x)
        y = vae.decode(z, num_frames=1)
    # hand computation: project each 8x8 patch on the basis, and back
    basis = patch_basis(8, 16).flatten(1)  # (z, 3*8*8)
    patches = x.unfold(2, 8, 8).unfold(3, 8, 8)  # (1, 3, 16, 16, 8, 8)
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(16, 16, -1)  # (h, w, 3*8*8)
    assert torch.allclose(z[0].permute(1, 2, 0), patches @ basis.T, atol=1e-4)
    back = (patches @ basis.T @ basis).reshape(16, 16, 3, 8, 8).permute(2, 0, 3, 1, 4).reshape(1, 3, 128, 128)
    assert torch.allclose(y, back, atol=1e-4)
    recon = ((y[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    assert psnr(np.asarray(photo), recon) > 25.0  # the cat, never seen, from the first step
    # the deep paths start at zero but are trained: their last layers get gradients
    vae.train()
    vae.decode(vae.encode(x), num_frames=1).square().mean().backward()
    assert vae.decoder.conv_out.weight.grad.abs().sum() > 0 and vae.encoder.conv_out.weight.grad.abs().sum() > 0


def test_a_silent_deep_encoder_path_is_skipped_with_the_same_numbers():
    """Decoder-only training leaves the encoder's deep path at zero: encoding then skips it and
    adds conv_out's bias, bit for bit what running it gives; it runs again once it is not zero,
    or when its weights need gradients."""
    import torch.nn.functional as F
    from skimage import data as skdata

    from kinetograph.pipeline.preprocess import image_to_tensor, load_image, resize_and_crop

    cfg = VAEConfig(ch=32, ch_mult=(1, 2, 2, 4), num_res_blocks=1, z_channels=6, norm_groups=8,
                    patch_shortcut=True, patch_shortcut_basis="smooth")
    torch.manual_seed(0)
    vae = VAE(cfg).eval()
    enc = vae.encoder
    with torch.no_grad():
        enc.conv_out.bias.copy_(torch.randn(enc.conv_out.bias.shape))  # a posterior variance, say
    x = image_to_tensor(resize_and_crop(load_image(skdata.coffee()), 64, 96))
    calls = []
    enc.conv_in.register_forward_hook(lambda *_: calls.append(1))

    def full(x):  # the deep path run, as without the skip
        moments = enc._deep(x)
        return moments + F.pad(enc.patch_shortcut(x), (0, 0, 0, 0, 0, moments.shape[1] // 2))

    with torch.no_grad():
        fast = enc(x)
        assert calls == []
        assert torch.equal(fast, full(x)) and fast.shape == (1, 12, 8, 12)
        enc.conv_out.weight[0, 0, 1, 1] = 1e-3
        assert not torch.equal(enc(x), fast) and len(calls) == 2
        enc.conv_out.weight.zero_()
    enc(x).sum().backward()  # grad enabled, weights trainable: the deep path runs and learns
    assert len(calls) == 3 and enc.conv_out.weight.grad.abs().sum() > 0
    vae.requires_grad_(False)
    enc(x)  # frozen (a UNet stage): skipped even with grad enabled
    assert len(calls) == 3


@pytest.mark.parametrize("basis", ["dct", "smooth"])
def test_patch_shortcuts_travel_through_the_original_layout(tmp_path, basis):
    from dataclasses import replace

    from kinetograph.io.checkpoint import load_checkpoint, save_original
    from kinetograph.models.svd import SVD
    from kinetograph.presets import PRESETS

    cfg = PRESETS["tiny"].model
    z = 6 if basis == "smooth" else cfg.vae.z_channels
    cfg = replace(
        cfg,
        vae=replace(cfg.vae, patch_shortcut=True, patch_shortcut_basis=basis, z_channels=z,
                    ch_mult=(1, 2, 2) if basis == "smooth" else cfg.vae.ch_mult),  # smooth: f >= 4
        unet=replace(cfg.unet, in_channels=2 * z, out_channels=z),
    )
    torch.manual_seed(0)
    model = SVD(cfg).eval()
    with torch.no_grad():
        model.vae.encoder.patch_shortcut.weight.mul_(1.5)  # not the init: the file must carry it
    path = save_original(model, tmp_path / "m.safetensors", "tiny")
    loaded = load_checkpoint(path).model.eval()
    assert loaded.cfg.vae.patch_shortcut and loaded.cfg.vae.patch_shortcut_basis == basis
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.vae.decode(loaded.vae.encode(x), 2), model.vae.decode(model.vae.encode(x), 2))


@pytest.mark.parametrize("temporal", [True, False])
def test_rescaling_latent_channels_is_exact(temporal):
    cfg = VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=2, z_channels=4, temporal_decoder=temporal, patch_shortcut=True)
    torch.manual_seed(0)
    vae = VAE(cfg).eval()
    randomize_(vae)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        mean, logvar = vae.encode_moments(x)
        y = vae.decode(mean, num_frames=2)
        scale = torch.tensor([0.5, 2.0, 3.0, 0.25])
        vae.rescale_latent_channels(scale)
        mean2, logvar2 = vae.encode_moments(x)
        assert torch.allclose(mean2, mean / scale[:, None, None], atol=1e-5)
        assert torch.allclose(logvar2, logvar - 2 * scale.log()[:, None, None], atol=1e-4)  # same std / scale
        assert torch.allclose(vae.decode(mean2, num_frames=2), y, atol=1e-4)


def test_smooth_filters_sample_and_interpolate():
    """Hand-derived: the encoder's filters are normalised tents (a constant colour gives its
    colour coordinates), the decoder's are bilinear interpolation (constants and linear ramps come
    back exactly away from the borders), and the grey samples sit every f/2 pixels."""
    from kinetograph.models.vae import smooth_filters

    enc, dec = smooth_filters(8)
    assert enc.shape == dec.shape == (6, 3, 16, 16)
    cfg = VAEConfig(ch=32, ch_mult=(1, 2, 2, 4), num_res_blocks=1, z_channels=6, norm_groups=8,
                    patch_shortcut=True, patch_shortcut_basis="smooth")
    vae = VAE(cfg).eval()
    g = 1 / 3**0.5
    rgb = torch.tensor([0.3, -0.2, 0.5])
    const = rgb[None, :, None, None].expand(1, 3, 64, 64)
    ramp = torch.linspace(-0.9, 0.9, 64).expand(1, 3, 64, 64)  # grey, horizontal
    with torch.no_grad():
        z = vae.encode(const)
        opp = torch.tensor([[1.0, -1.0, 0.0], [1.0, 1.0, -2.0]]) / torch.tensor([[2**0.5], [6**0.5]])
        expected = torch.cat([torch.full((4,), float(g * rgb.sum())), opp @ rgb])
        assert torch.allclose(z[0, :, 3, 3], expected, atol=1e-5)
        inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))
        assert torch.allclose(vae.decode(z, num_frames=1)[inner], const[inner], atol=1e-5)
        zr = vae.encode(ramp)
        assert torch.allclose(vae.decode(zr, num_frames=1)[inner], ramp[inner], atol=1e-5)
        # grey channels 0 and 1 sample the same row 4 pixels apart: on the ramp they differ by 4 steps
        assert torch.allclose(zr[0, 1, 3, 3] - zr[0, 0, 3, 3], torch.tensor(4 * 1.8 / 63 * 3 * g), atol=1e-5)


def test_smooth_latents_follow_a_camera_move_where_dct_latents_do_not():
    """Why the default model uses the smooth basis, on a real photo: shifting the image one pixel
    changes each smooth channel by ~1% of its variance; several DCT channels change by more than
    their whole variance. A fresh smooth VAE still keeps the photo at > 24 dB."""
    import numpy as np
    from PIL import Image
    from skimage import data as skdata

    from kinetograph.eval.fidelity import psnr
    from kinetograph.pipeline.preprocess import image_to_tensor, load_image, resize_and_crop

    big = np.asarray(resize_and_crop(load_image(skdata.chelsea()), 264, 264))
    x0, x1 = (image_to_tensor(Image.fromarray(big[:256, d : 256 + d])) for d in (0, 1))
    change = {}
    for basis, z in (("smooth", 6), ("dct", 16)):
        cfg = VAEConfig(ch=32, ch_mult=(1, 2, 2, 4), num_res_blocks=1, z_channels=z, norm_groups=8,
                        patch_shortcut=True, patch_shortcut_basis=basis)
        torch.manual_seed(0)
        vae = VAE(cfg).eval()
        with torch.no_grad():
            z0, z1 = vae.encode(x0), vae.encode(x1)
            change[basis] = (z1 - z0).square().mean(dim=(0, 2, 3)) / z0.var(dim=(0, 2, 3))
            if basis == "smooth":
                y = vae.decode(z0, num_frames=1).clamp(-1, 1)
                recon = ((y[0] + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
                assert psnr(big[:256, :256], recon) > 24.0
    assert change["smooth"].max() < 0.05
    assert change["dct"].max() > 1.0


def test_smooth_shortcut_config_is_checked():
    with pytest.raises(ValueError, match="z_channels = 6"):
        VAEConfig(ch=32, ch_mult=(1, 2, 2, 4), z_channels=16, patch_shortcut=True, patch_shortcut_basis="smooth")
    with pytest.raises(ValueError, match="dct or smooth"):
        VAEConfig(ch=32, patch_shortcut=True, patch_shortcut_basis="wavelet")
