"""Video UNet: key layout vs the official lists, diffusers key map and config, numerics vs diffusers."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize_, read_tsv
from diffusers import UNetSpatioTemporalConditionModel
from einops import repeat
from reference.unet_twins import diffusers_twin, forward_with_indicator

from kinetograph.errors import CheckpointError
from kinetograph.io.diffusers_unet import (
    unet_config_from_diffusers,
    unet_diffusers_config,
    unet_from_diffusers,
    unet_to_diffusers,
)
from kinetograph.models.layers import AlphaBlender, timestep_embedding
from kinetograph.models.unet import UNetConfig, VideoUNet

PREFIX = "model.diffusion_model."

# Three levels: attention at levels 0 and 2 but not 1, so the up path has an upsampler at `.1`
# (no attention before it) and one at `.2`; depth 2 transformers; one res block per level.
TINY = UNetConfig(
    model_channels=32,
    channel_mult=(1, 2, 2),
    num_res_blocks=1,
    attention_resolutions=(1, 4),
    num_head_channels=16,
    transformer_depth=2,
    context_dim=32,
    adm_in_channels=3 * 16,
)


def tiny_unet(cfg: UNetConfig = TINY, seed: int = 0) -> VideoUNet:
    """Every parameter random, the blend factors widely spread so alpha vs 1 - alpha matters."""
    unet = randomize_(VideoUNet(cfg), seed=seed, std=0.1).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in unet.modules():
            if isinstance(m, AlphaBlender):
                m.mix_factor.copy_(2.0 * torch.randn(m.mix_factor.shape, generator=g))
    return unet


def inputs(cfg: UNetConfig, b: int, t: int, h: int, w: int, n: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return dict(
        sample=torch.randn(b, t, cfg.in_channels, h, w, generator=g),
        timestep=torch.randn(b, generator=g),  # c_noise = 0.25 ln sigma
        context=torch.randn(b * t, n, cfg.context_dim, generator=g),  # per frame
        added_time_ids=torch.tensor([[6.0, 127.0, 0.02], [11.0, 40.0, 0.3]])[:b],
    )


def ours(unet: VideoUNet, sample, timestep, context, added_time_ids, image_only_indicator=None) -> torch.Tensor:
    """Our forward on the diffusers-style inputs; (b, t, c, h, w)."""
    b, t = sample.shape[:2]
    d = unet.cfg.adm_in_channels // 3
    y = timestep_embedding(added_time_ids.flatten(), d).reshape(b, 3 * d).to(sample.dtype)
    with torch.no_grad():
        out = unet(
            sample.flatten(0, 1),
            repeat(timestep, "b -> (b t)", t=t),
            context,
            repeat(y, "b k -> (b t) k", t=t),
            num_video_frames=t,
            image_only_indicator=image_only_indicator,
        )
    return out.reshape(b, t, *out.shape[1:])


# ---------------------------------------------------------------------------------------------
# Full size, on the meta device.


@pytest.fixture(scope="module")
def full_state_dict() -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return VideoUNet(UNetConfig()).state_dict()


def test_full_size_keys_match_official_checkpoint(full_state_dict):
    official = {k: v for k, v in read_tsv("sgm_svd.tsv").items() if k.startswith(PREFIX)}
    assert len(official) == 1428
    got = [(PREFIX + k, tuple(v.shape)) for k, v in full_state_dict.items()]
    assert got == list(official.items())  # same keys, shapes and registration order
    assert sum(v.numel() for v in full_state_dict.values()) == 1_524_623_082


def test_full_size_diffusers_keys_and_round_trip(full_state_dict):
    converted = unet_to_diffusers(full_state_dict)
    assert {k: tuple(v.shape) for k, v in converted.items()} == read_tsv("diffusers_unet.tsv")
    back = unet_from_diffusers(converted)
    assert list(back) == list(full_state_dict)
    assert all(back[k] is full_state_dict[k] for k in back)  # identity: nothing copied or reshaped


def test_full_size_diffusers_config():
    config = unet_diffusers_config(UNetConfig())
    assert config["_class_name"] == "UNetSpatioTemporalConditionModel"
    assert config["num_attention_heads"] == [5, 10, 20, 20]
    assert config["addition_time_embed_dim"] == 256
    assert config["down_block_types"][-1] == "DownBlockSpatioTemporal"
    assert config["up_block_types"][0] == "UpBlockSpatioTemporal"
    with torch.device("meta"):
        model = UNetSpatioTemporalConditionModel(**{k: v for k, v in config.items() if k != "_class_name"})
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == read_tsv("diffusers_unet.tsv")
    assert unet_config_from_diffusers(config) == UNetConfig()
    # diffusers' defaults are SVD's: an empty config means the released network.
    assert unet_config_from_diffusers({}) == UNetConfig()


# ---------------------------------------------------------------------------------------------
# Tiny, random weights: numerics vs diffusers on the converted weights.


@pytest.fixture(scope="module")
def tiny_unet_and_twins():
    """Our tiny UNet, stock diffusers on its weights, and diffusers with sgm's GroupNorm eps."""
    unet = tiny_unet()
    return unet, diffusers_twin(unet), diffusers_twin(unet, sgm_eps=True)


# Stock diffusers differs from sgm (and us) only in a GroupNorm eps: 1e-4 as the spec allows.
# With that eps pinned the two agree to float32 rounding, so anything else would show here.
STOCK_ATOL, EXACT_ATOL = 1e-4, 5e-6


@pytest.mark.parametrize("size", [(8, 8), (6, 10)])  # (6, 10): odd sizes on the way down
def test_forward_matches_diffusers(tiny_unet_and_twins, size):
    unet, stock, exact = tiny_unet_and_twins
    x = inputs(TINY, b=2, t=3, h=size[0], w=size[1])
    # diffusers' forward takes one context per video: give every frame its video's.
    per_video = torch.randn(2, 2, TINY.context_dim, generator=torch.Generator().manual_seed(5))
    x["context"] = repeat(per_video, "b n d -> (b t) n d", t=3)
    got = ours(unet, **x, image_only_indicator=torch.zeros(2, 3))
    assert (ours(unet, **x) == got).all()  # None = all frames are video
    for twin, atol in ((stock, STOCK_ATOL), (exact, EXACT_ATOL)):
        with torch.no_grad():
            ref = twin(x["sample"], x["timestep"], per_video, x["added_time_ids"]).sample
        assert got.shape == ref.shape == (2, 3, TINY.out_channels, *size)
        assert ref.abs().mean() > 0.05  # a real signal, not a vanishing one
        assert (got - ref).abs().max() <= atol


def test_single_token_context_shortcut_matches_diffusers_and_full_attention(tiny_unet_and_twins):
    """SVD's context is one CLIP token: inference skips q, k and softmax (exact), training does not."""
    unet, stock, exact = tiny_unet_and_twins
    x = inputs(TINY, b=2, t=3, h=8, w=8, n=1)
    per_video = x["context"][::3]
    x["context"] = repeat(per_video, "b n d -> (b t) n d", t=3)
    fast = ours(unet, **x)  # no_grad: the shortcut
    b, t = 2, 3
    d = TINY.adm_in_channels // 3
    y = timestep_embedding(x["added_time_ids"].flatten(), d).reshape(b, 3 * d)
    full = unet(  # grad enabled: the full attention graph
        x["sample"].flatten(0, 1), repeat(x["timestep"], "b -> (b t)", t=t), x["context"],
        repeat(y, "b k -> (b t) k", t=t), num_video_frames=t,
    ).detach().reshape(fast.shape)
    assert (fast - full).abs().max() <= 1e-5
    with torch.no_grad():
        ref = exact(x["sample"], x["timestep"], per_video, x["added_time_ids"]).sample
    assert (fast - ref).abs().max() <= EXACT_ATOL


def test_image_only_indicator_and_per_frame_context_match_diffusers(tiny_unet_and_twins):
    """Frames flagged as images skip the temporal layers; the temporal context is the first frame's."""
    unet, stock, exact = tiny_unet_and_twins
    x = inputs(TINY, b=2, t=3, h=8, w=8)  # a different context on every frame
    indicator = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    got = ours(unet, **x, image_only_indicator=indicator)
    for twin, atol in ((stock, STOCK_ATOL), (exact, EXACT_ATOL)):
        ref = forward_with_indicator(twin, **x, image_only_indicator=indicator)
        assert (got - ref).abs().max() <= atol
    # The indicator does change the output, so the comparison above tests something ...
    zeros = torch.zeros(2, 3)
    assert (got - ours(unet, **x, image_only_indicator=zeros)).abs().max() > 1e-2
    # ... and the twin forward is diffusers' own when the indicator is zero.
    per_video = x["context"][::3]
    with torch.no_grad():
        own_forward = exact(x["sample"], x["timestep"], per_video, x["added_time_ids"]).sample
    x["context"] = repeat(per_video, "b n d -> (b t) n d", t=3)
    assert (forward_with_indicator(exact, **x, image_only_indicator=zeros) - own_forward).abs().max() <= 1e-6


def test_tiny_conversion_round_trip_and_config(tiny_unet_and_twins):
    unet, twin, _ = tiny_unet_and_twins
    sd = unet.state_dict()
    converted = unet_to_diffusers(sd)
    assert set(converted) == set(twin.state_dict())
    back = unet_from_diffusers(twin.state_dict())
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    assert unet_config_from_diffusers(unet_diffusers_config(TINY)) == TINY


def test_diffusers_config_reading():
    config = unet_diffusers_config(TINY)
    assert config["down_block_types"] == [
        "CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal",
    ]  # fmt: skip
    assert config["num_attention_heads"] == [2, 4, 4]
    # Per-level lists holding one value are accepted.
    lists = {**config, "layers_per_block": [1, 1, 1], "cross_attention_dim": [32, 32, 32]}
    assert unet_config_from_diffusers(lists) == TINY
    with pytest.raises(CheckpointError, match="head width"):
        unet_config_from_diffusers({**config, "num_attention_heads": [2, 4, 2]})
    with pytest.raises(CheckpointError, match="mirror"):
        unet_config_from_diffusers({**config, "up_block_types": ["UpBlockSpatioTemporal"] * 3})
    with pytest.raises(CheckpointError, match="one value for all levels"):
        unet_config_from_diffusers({**config, "transformer_layers_per_block": [1, 2, 2]})
    with pytest.raises(CheckpointError, match="addition_time_embed_dim"):
        unet_config_from_diffusers({**config, "addition_time_embed_dim": 8})
    with pytest.raises(CheckpointError, match="not an SVD"):
        unet_config_from_diffusers({**config, "_class_name": "UNet2DConditionModel"})


def test_unknown_keys_raise():
    sd = tiny_unet().state_dict()
    with pytest.raises(CheckpointError, match="unknown UNet key"):
        unet_to_diffusers({**sd, "input_blocks.1.0.bogus.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="unknown UNet key"):
        unet_to_diffusers({**sd, "input_blocks.1.1.transformer_blocks.0.attn3.to_q.weight": torch.zeros(1)})
    converted = unet_to_diffusers(sd)
    with pytest.raises(CheckpointError, match="unknown UNet key"):
        unet_from_diffusers({**converted, "mid_block.resnets.0.spatial_res_block.nonsense.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="no down_blocks"):
        unet_from_diffusers({"conv_in.weight": torch.zeros(1)})


def test_config_validation():
    with pytest.raises(ValueError, match="multiples of 32"):
        UNetConfig(model_channels=48)
    with pytest.raises(ValueError, match="downsample factors"):
        UNetConfig(attention_resolutions=(16,))
    with pytest.raises(ValueError, match="num_head_channels"):
        UNetConfig(model_channels=32, channel_mult=(1, 3), num_head_channels=64, attention_resolutions=(1,))
    assert UNetConfig(channel_mult=[1, 2, 4, 4], attention_resolutions=[1, 2, 4]) == UNetConfig()


# ---------------------------------------------------------------------------------------------
# Training.


def test_gradient_checkpointing_same_output_and_grads():
    cfg = UNetConfig(
        model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
        num_head_channels=16, context_dim=32, adm_in_channels=48,
    )  # fmt: skip
    unet = tiny_unet(cfg, seed=3).train()
    g = torch.Generator().manual_seed(4)
    b, t = 1, 2
    args = (
        torch.randn(b * t, cfg.in_channels, 8, 8, generator=g),
        torch.randn(b * t, generator=g),
        torch.randn(b * t, 1, cfg.context_dim, generator=g),
        torch.randn(b * t, cfg.adm_in_channels, generator=g),
    )

    calls = []
    unet.middle_block.register_forward_pre_hook(lambda *_: calls.append(1))

    def run(checkpointing: bool):
        unet.zero_grad()
        calls.clear()
        unet.gradient_checkpointing = checkpointing
        out = unet(*args, num_video_frames=t, image_only_indicator=torch.zeros(b, t))
        (out**2).mean().backward()
        return out.detach(), {k: p.grad.clone() for k, p in unet.named_parameters()}

    out_plain, grads_plain = run(False)
    assert len(calls) == 1
    out_ckpt, grads_ckpt = run(True)
    assert len(calls) == 2  # the block was recomputed in backward
    assert torch.allclose(out_plain, out_ckpt, atol=1e-6)
    assert grads_plain.keys() == grads_ckpt.keys()
    for k in grads_plain:
        assert torch.allclose(grads_plain[k], grads_ckpt[k], atol=1e-6, rtol=1e-5), k
    assert any(g.abs().max() > 0 for g in grads_plain.values())


def test_temporal_conv3d_matches_conv3d_values_and_gradients():
    import torch.nn.functional as F

    from kinetograph.models.layers import TemporalConv3d

    g = torch.Generator().manual_seed(0)
    for kernel, padding in (((3, 1, 1), (1, 0, 0)), ((1, 1, 1), 0), ((3, 3, 3), 1)):
        conv = TemporalConv3d(6, 5, kernel, padding=padding)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
            conv.bias.copy_(torch.randn(5, generator=g))
        x = torch.randn(2, 6, 7, 4, 3, generator=g, requires_grad=True)
        out = conv(x)
        ref = F.conv3d(x, conv.weight, conv.bias, padding=conv.padding)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        (gx,) = torch.autograd.grad(out.square().sum(), x)
        (rx,) = torch.autograd.grad(ref.square().sum(), x)
        torch.testing.assert_close(gx, rx, atol=1e-4, rtol=1e-4)
    assert set(TemporalConv3d(2, 2, (3, 1, 1)).state_dict()) == {"weight", "bias"}  # the official layout


def test_scale_shift_res_block_scales_and_shifts_the_second_norm():
    """h = GN(h) * (1 + scale) + shift: scale -1 removes the features, scale 0 is a plain shift."""
    from kinetograph.models.layers import ResBlock

    torch.manual_seed(0)
    block = ResBlock(32, 16, 32, scale_shift=True).eval()
    plain = ResBlock(32, 16, 32).eval()
    for b in (block, plain):
        torch.nn.init.normal_(b.out_layers[-1].weight, std=0.1)
    plain.in_layers.load_state_dict(block.in_layers.state_dict())
    plain.out_layers.load_state_dict(block.out_layers.state_dict())
    assert block.emb_layers[1].out_features == 64  # scale and shift
    x1, x2, emb = torch.randn(2, 32, 6, 6), torch.randn(2, 32, 6, 6), torch.randn(2, 16)
    lin = block.emb_layers[1]
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.copy_(torch.cat([-torch.ones(32), torch.zeros(32)]))  # scale -1, shift 0
        gone1, gone2 = block(x1, emb) - x1, block(x2, emb) - x2
        torch.testing.assert_close(gone1, gone2)  # the features no longer reach the output
        lin.bias.zero_()  # scale 0, shift 0: GN(h) as it is, as the plain block with a zero bias
        plain.emb_layers[1].weight.zero_(), plain.emb_layers[1].bias.zero_()
        torch.testing.assert_close(block(x1, emb), plain(x1, emb))
