"""Stages: temporal-layer insertion is exact, the image-stage bypass is exact, losses and LoRA behave."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import randomize_

from kinetograph.conditioning import micro_conditioning
from kinetograph.errors import InputError
from kinetograph.diffusion.denoiser import VScalingEDMcNoise
from kinetograph.models.unet import VideoUNet
from kinetograph.presets import PRESETS
from kinetograph.training.loss import EDMLoss
from kinetograph.training.lora import LoRALinear, add_lora, merge_lora
from kinetograph.training.rng import SampleRNG
from kinetograph.training.stages import (
    insert_temporal_layers,
    is_temporal,
    micro_vectors,
    temporal_bypass,
    zero_concat_channels,
)

CFG = PRESETS["tiny"].model.unet


def _inputs(b: int, t: int, seed: int = 0, size: int = 8):
    g = torch.Generator().manual_seed(seed)
    n = b * t
    return (
        torch.randn(n, CFG.in_channels, size, size, generator=g),
        torch.randn(n, generator=g),
        torch.randn(n, 1, CFG.context_dim, generator=g),
        torch.randn(n, CFG.adm_in_channels, generator=g),
    )


def test_inserted_video_network_equals_per_frame_image_network():
    torch.manual_seed(0)
    unet = randomize_(VideoUNet(CFG), seed=3, std=0.1)
    b, t = 2, 3
    x, ts, ctx, y = _inputs(b, t)
    with torch.no_grad():
        # The image network: each frame on its own, temporal layers off (alpha = 1).
        image_out = unet(x, ts, ctx, y, 1, torch.ones(b * t, 1))
        before = {n: p.clone() for n, p in unet.named_parameters() if is_temporal(n)}
        video_before = unet(x, ts, ctx, y, t, torch.zeros(b, t))
    assert (video_before - image_out).abs().max() > 1e-3  # randomized temporal layers do mix frames

    insert_temporal_layers(unet, seed=0)
    with torch.no_grad():
        video_out = unet(x, ts, ctx, y, t, torch.zeros(b, t))
    torch.testing.assert_close(video_out, image_out, atol=1e-5, rtol=1e-5)
    # Every temporal tensor was re-initialised (mix factors back to 0.5), nothing else touched.
    changed = [n for n, p in unet.named_parameters() if is_temporal(n) and not torch.equal(p, before[n])]
    assert set(changed) == set(before)
    assert all(float(p.detach()) == 0.5 for n, p in unet.named_parameters() if n.endswith("mix_factor"))

    # The zeroed projections get gradients, so the temporal layers can learn.
    unet(x, ts, ctx, y, t, torch.zeros(b, t)).square().mean().backward()
    zeroed = unet.input_blocks[1][0].time_stack.out_layers[-1].weight
    assert zeroed.grad is not None and zeroed.grad.abs().sum() > 0


def test_inserted_video_network_with_temporal_text_equals_image_network():
    """The temporal blocks' text cross-attention is zeroed too: with a caption, the inserted video
    network is still the per-frame image network."""
    cfg = replace(CFG, text_dim=16, temporal_text=True)
    unet = randomize_(VideoUNet(cfg), seed=3, std=0.1)
    b, t, n = 2, 3, 4
    x, ts, ctx, y = _inputs(b, t)
    g = torch.Generator().manual_seed(1)
    text = dict(
        text_tokens=torch.randn(b, n, 16, generator=g).repeat_interleave(t, 0),
        text_mask=torch.ones(b * t, n, dtype=torch.bool),
        text_pooled=torch.randn(b, 16, generator=g).repeat_interleave(t, 0),
    )
    with torch.no_grad():
        image_out = unet(x, ts, ctx, y, 1, torch.ones(b * t, 1), **text)
        assert (unet(x, ts, ctx, y, t, torch.zeros(b, t), **text) - image_out).abs().max() > 1e-3
    insert_temporal_layers(unet, seed=0)
    with torch.no_grad():
        video_out = unet(x, ts, ctx, y, t, torch.zeros(b, t), **text)
    torch.testing.assert_close(video_out, image_out, atol=1e-5, rtol=1e-5)
    assert not unet.input_blocks[1][1].time_stack[0].attn_text.to_out[0].weight.any()


def test_insertion_is_seeded_and_leaves_global_rng_alone():
    a, b = VideoUNet(CFG), VideoUNet(CFG)
    b.load_state_dict(a.state_dict())
    state = torch.get_rng_state()
    insert_temporal_layers(a, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    insert_temporal_layers(b, seed=7)
    for (n, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), n


def test_temporal_bypass_is_exact_for_image_batches():
    unet = randomize_(VideoUNet(CFG), seed=5, std=0.1)
    b, t = 2, 2
    x, ts, ctx, y = _inputs(b, t, seed=1)
    ones = torch.ones(b, t)
    ref = unet(x, ts, ctx, y, t, ones)
    ref.square().mean().backward()
    ref_grads = {n: p.grad.clone() for n, p in unet.named_parameters() if p.grad is not None}
    unet.zero_grad(set_to_none=True)
    with temporal_bypass(unet):
        out = unet(x, ts, ctx, y, t, ones)
        out.square().mean().backward()
    assert torch.equal(out, ref)
    for n, p in unet.named_parameters():
        if "time_stack" in n:  # the skipped branches: no backward at all
            assert p.grad is None, n
        elif is_temporal(n):  # alpha forced to 1, frame embedding into a skipped branch: zero or no gradient
            assert p.grad is None or not p.grad.any(), n
        elif not is_temporal(n):
            torch.testing.assert_close(p.grad, ref_grads[n], atol=1e-7, rtol=1e-6)
    # Outside the block the temporal layers run again.
    assert not torch.equal(unet(x, ts, ctx, y, t, torch.zeros(b, t)), ref)


def test_zero_concat_channels_makes_the_image_latent_irrelevant():
    unet = randomize_(VideoUNet(CFG), seed=2)
    zero_concat_channels(unet)
    x, ts, ctx, y = _inputs(1, 2)
    x2 = x.clone()
    x2[:, CFG.out_channels :] = torch.randn_like(x2[:, CFG.out_channels :])
    with torch.no_grad():
        assert torch.equal(unet(x, ts, ctx, y, 2), unet(x2, ts, ctx, y, 2))


def test_micro_vectors_match_micro_conditioning():
    got = micro_vectors(torch.tensor([6.0, 3.0]), torch.tensor([127.0, 40.0]), torch.tensor([0.02, 0.5]), 16)
    want = torch.cat([micro_conditioning(6, 127, 0.02, 16), micro_conditioning(3, 40, 0.5, 16)])
    torch.testing.assert_close(got, want, atol=0, rtol=0)


@pytest.mark.parametrize("anchor_scale", [0.0, 2.0])
def test_edm_loss_matches_hand_computation(anchor_scale):
    """loss = (1/c_out^2) * mean (D - x0)^2 with D from v-scalings; sigma and noise from the sample RNG.
    anchor_scale > 0: D = a + D_0(x - a) with a = anchor_scale * concat; the target stays x0."""
    x0 = torch.randn(2 * 3, 4, 5, 5, generator=torch.Generator().manual_seed(0))
    concat = torch.randn(2 * 3, 4, 5, 5, generator=torch.Generator().manual_seed(1))
    weight = torch.tensor(0.7)

    def network(x_in, c_noise, cond):  # a linear "network" so D is known in closed form
        return weight * x_in + c_noise[:, None, None, None]

    class C:
        num_frames = 3

    C.concat = concat
    loss = EDMLoss(p_mean=0.3, p_std=1.1, anchor_scale=anchor_scale)(network, x0, C(), SampleRNG(5, [10, 11]))
    # Redraw what the loss drew: per video, sigma first, then (t, c, h, w) noise.
    want = []
    for i, pos in enumerate([10, 11]):
        r = SampleRNG(5, [pos])
        sigma = r.log_normal(0.3, 1.1)[0]
        noise = r.randn(3, 4, 5, 5)[0]
        c_skip, c_out, c_in, c_noise = VScalingEDMcNoise()(sigma[None])
        xi, a = x0[3 * i : 3 * i + 3], anchor_scale * concat[3 * i : 3 * i + 3]
        res = xi + sigma * noise - a
        d = a + c_skip * res + c_out * (weight * c_in * res + c_noise)
        want.append(((d - xi) ** 2).mean() / c_out.square()[0])
    torch.testing.assert_close(loss, torch.stack(want), atol=1e-6, rtol=1e-5)


def test_sample_rng_depends_only_on_seed_and_position():
    a = SampleRNG(3, [0, 1, 2]).randn(4)
    b = torch.cat([SampleRNG(3, [0]).randn(4), SampleRNG(3, [1, 2]).randn(4)])
    assert torch.equal(a, b)
    assert not torch.equal(SampleRNG(4, [0]).randn(4), a[:1])


def test_lora_starts_as_identity_trains_only_adapters_and_merges_exactly():
    unet = randomize_(VideoUNet(CFG), seed=1)
    x, ts, ctx, y = _inputs(1, 2)
    with torch.no_grad():
        ref = unet(x, ts, ctx, y, 2)
    names = add_lora(unet, rank=2)
    assert names and all(n.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v") or n.endswith("to_out.0") for n in names)
    trainable = [n for n, p in unet.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    with torch.no_grad():
        torch.testing.assert_close(unet(x, ts, ctx, y, 2), ref, atol=0, rtol=0)
        for m in unet.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_(std=0.05)
        adapted = unet(x, ts, ctx, y, 2)
    assert (adapted - ref).abs().max() > 1e-4
    assert merge_lora(unet) == len(names)
    assert not any(isinstance(m, LoRALinear) for m in unet.modules())
    assert set(unet.state_dict()) == set(VideoUNet(CFG).state_dict())
    with torch.no_grad():
        torch.testing.assert_close(unet(x, ts, ctx, y, 2), adapted, atol=1e-5, rtol=1e-5)


def test_a_fresh_vae_starts_with_a_narrow_posterior_and_a_loaded_one_is_kept(tmp_path):
    from kinetograph.io.checkpoint import save_original
    from kinetograph.models.svd import SVD
    from kinetograph.training.config import TrainConfig, with_overrides
    from kinetograph.training.loop import build_model
    from kinetograph.training.stages import VAE_LOGVAR_INIT, make_stage

    cfg = with_overrides(TrainConfig(stage="vae"), model={"preset": "tiny"})
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    fresh, _ = build_model(cfg, make_stage(cfg))
    torch.manual_seed(cfg.run.seed)
    plain = SVD(PRESETS["tiny"].model)  # the same seed without the stage's change
    _, logvar = fresh.vae.encode_moments(x)
    _, logvar0 = plain.vae.encode_moments(x)
    assert torch.allclose(logvar, logvar0 + VAE_LOGVAR_INIT, atol=1e-5)  # shifted by exactly the init
    path = save_original(fresh, tmp_path / "vae.safetensors", "tiny")
    from_file = with_overrides(cfg, model={"init": str(path)})
    loaded, _ = build_model(from_file, make_stage(from_file))
    assert torch.equal(loaded.vae.quant_conv.bias, fresh.vae.quant_conv.bias)  # not shifted twice


def test_vae_augment_crops_one_window_per_clip_and_permutes_channels():
    from kinetograph.training.config import TrainConfig, with_overrides
    from kinetograph.training.stages import make_stage

    cfg = with_overrides(TrainConfig(stage="vae"), data={"height": 32, "width": 48, "crop": 16, "color_augment": True})
    stage = make_stage(cfg)
    video = torch.rand(4, 3, 3, 32, 48)  # (b, t, 3, H, W)
    rng = SampleRNG(0, [0, 1, 2, 3])
    out = stage.augment(video, rng)
    assert out.shape == (4, 3, 3, 16, 16)
    for clip, window in zip(video, out):
        # the window is a crop of the clip, the same in every frame, with some channel order
        found = [
            (y, x, order)
            for y in range(32 - 16 + 1) for x in range(48 - 16 + 1)
            for order in ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))
            if torch.equal(clip[:, list(order), y : y + 16, x : x + 16], window)
        ]
        assert len(found) == 1
    assert torch.equal(stage.augment(video, SampleRNG(0, [0, 1, 2, 3])), out)  # a function of (seed, position)
    # validation and the other stages see whole frames
    inputs = stage.encode(None, {"video": video}, rng, train=False)
    assert inputs.x0.shape == (12, 3, 32, 48)
    with pytest.raises(InputError, match="data.crop"):  # every crop a new clip: the cache would only grow
        with_overrides(TrainConfig(stage="finetune"), data={"crop": 16, "cache_latents": True})


def test_a_zoom_clip_is_cropped_about_its_fixed_point_so_the_window_still_zooms():
    """A window cut off the centre of a zoom also pans (on a real photo, the corner window of a
    zoom in reads as a pan right), so its caption would be wrong: data.crop centres a clip's window
    on its "window_centre" and keeps the random window for the others."""
    from kinetograph.data import camera_motion as cm
    from kinetograph.data.sources import load_photo
    from kinetograph.eval.motion import MotionClass, camera_motion
    from kinetograph.training.config import TrainConfig, with_overrides
    from kinetograph.training.stages import make_stage

    clip_cfg = cm.CameraMotionConfig(height=96, width=96, num_frames=8, fps=8.0)
    zoom = cm.render(load_photo("chelsea"), cm.CameraMove("zoom_in", 20.0), clip_cfg, np.random.default_rng(0))
    corner = camera_motion(zoom[:, :48, :48])
    assert corner.label != MotionClass.ZOOM_IN and corner.translation_speed > corner.zoom_speed  # why

    stage = make_stage(with_overrides(TrainConfig(stage="finetune"), data={"height": 96, "width": 96, "crop": 48}))
    video = torch.from_numpy(zoom).permute(0, 3, 1, 2).float().div(127.5).sub(1)[None].repeat(2, 1, 1, 1, 1)
    centres = [cm.fixed_point("zoom_in"), cm.fixed_point("pan_left")]
    assert centres == [(0.5, 0.5), None]
    out = stage.augment(video, SampleRNG(0, [0, 1]), centres)
    assert torch.equal(out[0], video[0, ..., 24:72, 24:72])
    window = ((out[0].permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().astype(np.uint8)
    m = camera_motion(window)
    assert m.label == MotionClass.ZOOM_IN and m.translation_speed < 0.1 * m.zoom_speed
    # the other clip keeps the random window it had without centres (same draws)
    assert torch.equal(out[1], stage.augment(video, SampleRNG(0, [0, 1]))[1])
    assert not torch.equal(out[1], out[0])


def test_a_diffusion_stage_trains_on_the_augmented_window_and_conditions_on_its_first_frame():
    """data.crop / data.color_augment in stage finetune: the latents are the window's, and the
    conditioning frame (concat latent and CLIP context) is the window's first frame, not the clip's."""
    from kinetograph.models.svd import SVD
    from kinetograph.training.config import TrainConfig, with_overrides
    from kinetograph.training.stages import image_embedding, make_stage

    cfg = with_overrides(
        TrainConfig(stage="finetune"),
        data={"height": 32, "width": 48, "crop": 16, "color_augment": True},
        loss={"cond_drop_prob": 0.0, "cond_aug_p_mean": -30.0},
    )
    stage = make_stage(cfg)
    torch.manual_seed(0)
    model = SVD(PRESETS["tiny"].model).eval()
    randomize_(model)
    video = torch.rand(2, 3, 3, 32, 48) * 2 - 1
    batch = {"video": video, "fps": torch.tensor([7.0, 7.0]), "motion_bucket": torch.tensor([100, 120])}
    window = stage.augment(video, SampleRNG(0, [0, 1]))  # the first draws of the same generators
    with torch.no_grad():
        inputs = stage.encode(model, batch, SampleRNG(0, [0, 1]))
        f = model.vae.cfg.downsample_factor
        assert inputs.x0.shape == (6, model.vae.cfg.z_channels, 16 // f, 16 // f)
        first = model.vae.encode(window[:, 0])  # cond aug sigma ~ e^-30: the clean first frame
        assert torch.allclose(inputs.cond.concat[::3], first, atol=1e-5)
        assert torch.allclose(inputs.cond.crossattn[::3], image_embedding(model, window[:, 0]), atol=1e-5)
        assert not torch.allclose(window[:, 0], video[:, 0, :, :16, :16])  # a real crop/permutation happened


def test_still_clips_get_a_random_bucket_in_range_and_moving_clips_keep_theirs():
    from kinetograph.training.config import TrainConfig, with_overrides
    from kinetograph.training.stages import make_stage

    batch = {"motion_bucket": torch.tensor([0, 150, 0, 0, 0, 0, 0, 0])}
    plain = make_stage(TrainConfig(stage="finetune"))
    assert plain.motion_condition(batch, SampleRNG(0, range(8)), torch.device("cpu")).tolist() == batch["motion_bucket"].tolist()

    cfg = with_overrides(TrainConfig(stage="finetune"), loss={"still_bucket_range": [100, 103]})
    stage = make_stage(cfg)
    got = stage.motion_condition(batch, SampleRNG(0, range(8)), torch.device("cpu"))
    assert got[1] == 150  # a moving clip keeps its measured bucket
    still = got[[0, 2, 3, 4, 5, 6, 7]]
    assert set(still.tolist()) <= {100.0, 101.0, 102.0, 103.0} and len(set(still.tolist())) > 1
    # one draw from each sample's own generator: the same positions give the same buckets
    assert torch.equal(stage.motion_condition(batch, SampleRNG(0, range(8)), torch.device("cpu")), got)
    with pytest.raises(InputError, match="still_bucket_range"):
        with_overrides(TrainConfig(stage="finetune"), loss={"still_bucket_range": [200, 100]})

