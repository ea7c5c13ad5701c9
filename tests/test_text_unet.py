"""The UNet's optional text branch: absent by default, exact no-op at init, masks and dropped text."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import randomize_

from kinetograph.models.unet import UNetConfig, VideoUNet

BASE = UNetConfig(
    model_channels=32,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(1, 2),
    num_head_channels=16,
    context_dim=32,
    adm_in_channels=3 * 16,
)
TEXT = dataclasses.replace(BASE, text_dim=24)
TEMPORAL_TEXT = dataclasses.replace(TEXT, temporal_text=True)
B, T, H, W, N = 2, 3, 8, 8, 5


def _inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return dict(
        x=torch.randn(B * T, BASE.in_channels, H, W, generator=g),
        timesteps=torch.randn(B * T, generator=g),
        context=torch.randn(B * T, 1, BASE.context_dim, generator=g),
        y=torch.randn(B * T, BASE.adm_in_channels, generator=g),
        num_video_frames=T,
        image_only_indicator=torch.zeros(B, T),
    )


def _text(seed: int = 2, n: int = N):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(B * T, n, TEXT.text_dim, generator=g)
    mask = torch.ones(B * T, n, dtype=torch.bool)
    mask[:, n - 2 :] = False  # the last two tokens are padding
    pooled = torch.randn(B * T, TEXT.text_dim, generator=g)
    return dict(text_tokens=tokens, text_mask=mask, text_pooled=pooled)


def _pair(cfg: UNetConfig = TEXT):
    """An image-only UNet with every parameter random, and a text UNet holding the same weights."""
    image_only = randomize_(VideoUNet(BASE), seed=0, std=0.1).eval()
    torch.manual_seed(0)
    with_text = VideoUNet(cfg).eval()
    missing, unexpected = with_text.load_state_dict(image_only.state_dict(), strict=False)
    assert not unexpected and missing and all(_is_text_key(k) for k in missing)
    return image_only, with_text


def _is_text_key(k: str) -> bool:
    return ".attn_text." in k or ".norm_text." in k or k.startswith("text_emb.")


def test_text_branch_exists_only_when_configured():
    plain = set(VideoUNet(BASE).state_dict())
    text = VideoUNet(TEXT).state_dict()
    assert not any(_is_text_key(k) for k in plain)
    assert set(text) - plain == {k for k in text if _is_text_key(k)}
    assert plain <= set(text)
    n_blocks = sum(1 for k in text if k.endswith("attn_text.to_q.weight"))
    assert n_blocks == 2 * 1 + 1 + 2 * 2  # attention at both levels: 2 down, 1 middle, 4 up
    # per block: to_q, to_k, to_v, to_out.0.{weight,bias}, norm_text.{weight,bias}; plus text_emb.{weight,bias}
    assert len(set(text) - plain) == 7 * n_blocks + 2
    assert text["text_emb.weight"].shape == (4 * TEXT.model_channels, TEXT.text_dim)
    # The official full-size network is untouched (meta device: no memory).
    with torch.device("meta"):
        assert not any(_is_text_key(k) for k in VideoUNet(UNetConfig()).state_dict())

    # temporal_text: every temporal block gets the same pair, named under time_stack.
    temporal = set(VideoUNet(TEMPORAL_TEXT).state_dict()) - set(text)
    assert temporal and all(".time_stack.0.attn_text." in k or ".time_stack.0.norm_text." in k for k in temporal)
    assert len(temporal) == 7 * n_blocks


def test_temporal_text_needs_a_text_branch():
    with pytest.raises(ValueError, match="temporal_text needs a text branch"):
        dataclasses.replace(BASE, temporal_text=True)


@pytest.mark.parametrize("cfg", [TEXT, TEMPORAL_TEXT], ids=["spatial", "temporal"])
def test_zero_init_text_branch_keeps_image_only_output_exactly(cfg):
    image_only, with_text = _pair(cfg)
    with torch.no_grad():
        ref = image_only(**_inputs())
        out = with_text(**_inputs(), **_text())
        none = with_text(**_inputs())
    assert ref.abs().max() > 1e-3  # a real output, not the zero-initialised head
    assert torch.equal(out, ref)
    assert torch.equal(none, ref)


def test_zero_init_branch_is_trainable():
    _, with_text = _pair(TEMPORAL_TEXT)
    with_text.train()
    with_text(**_inputs(), **_text()).square().mean().backward()
    blk = with_text.input_blocks[1][1].transformer_blocks[0]
    assert blk.attn_text.to_out[0].weight.grad.abs().sum() > 0
    temporal = with_text.input_blocks[1][1].time_stack[0]
    assert temporal.attn_text.to_out[0].weight.grad.abs().sum() > 0
    assert with_text.text_emb.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("cfg", [TEXT, TEMPORAL_TEXT], ids=["spatial", "temporal"])
def test_trained_text_branch_masks_and_dropped_text(cfg):
    image_only, with_text = _pair(cfg)
    randomize_(with_text, seed=3, std=0.1)  # every text parameter random now
    with torch.no_grad():
        with_text_sd = {k: v for k, v in with_text.state_dict().items() if not _is_text_key(k)}
        image_only.load_state_dict(with_text_sd)
        text = _text()
        out = with_text(**_inputs(), **text)
        ref = image_only(**_inputs())
        assert (out - ref).abs().max() > 1e-3  # text now changes the output

        # Padding tokens (mask False) do not matter, whatever their values.
        junk = {**text, "text_tokens": text["text_tokens"].clone()}
        junk["text_tokens"][:, N - 2 :] = 100.0
        torch.testing.assert_close(with_text(**_inputs(), **junk), out, atol=1e-5, rtol=0)

        # Dropped text for the second video (mask all False, pooled vector zero, as training drops
        # it): that video equals the image-only output, the first keeps its text result.
        dropped = {**text, "text_mask": text["text_mask"].clone(), "text_pooled": text["text_pooled"].clone()}
        dropped["text_mask"][T:] = False
        dropped["text_pooled"][T:] = 0.0
        mixed = with_text(**_inputs(), **dropped)
        torch.testing.assert_close(mixed[T:], ref[T:], atol=1e-5, rtol=0)
        torch.testing.assert_close(mixed[:T], out[:T], atol=1e-5, rtol=0)
        assert torch.isfinite(mixed).all()


def test_gradient_checkpointing_with_text_matches():
    _, with_text = _pair()
    randomize_(with_text, seed=4, std=0.1)
    with_text.train()
    grads = []
    for ckpt in (False, True):
        with_text.zero_grad()
        with_text.gradient_checkpointing = ckpt
        with_text(**_inputs(), **_text()).square().mean().backward()
        grads.append(with_text.text_emb.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_temporal_text_reads_one_caption_per_video_and_changes_every_frame():
    """Only the temporal text branch on: the video's caption is its first frame's row, and it
    reaches every frame (its queries are the frames of each pixel)."""
    _, with_text = _pair(TEMPORAL_TEXT)
    randomize_(with_text, seed=5, std=0.1)
    with torch.no_grad():
        for name, p in with_text.named_parameters():  # the spatial text branch and pooled vector off
            if _is_text_key(name) and ".time_stack." not in name:
                p.zero_()
        text = _text()
        out = with_text(**_inputs(), **text)
        none = with_text(**_inputs())
        # Every frame of both videos moved with the caption.
        assert ((out - none).flatten(1).abs().amax(1) > 1e-3).all()
        # Rows of later frames are not read ...
        later = {**text, "text_tokens": text["text_tokens"].clone()}
        later["text_tokens"][1:T] = torch.randn_like(later["text_tokens"][1:T])
        torch.testing.assert_close(with_text(**_inputs(), **later), out, atol=1e-6, rtol=0)
        # ... the first frame's row is the caption of all of its video's frames, and only of its video.
        first = {**text, "text_tokens": text["text_tokens"].clone()}
        first["text_tokens"][0] = torch.randn_like(first["text_tokens"][0])
        changed = with_text(**_inputs(), **first)
        assert ((changed[:T] - out[:T]).flatten(1).abs().amax(1) > 1e-4).all()
        torch.testing.assert_close(changed[T:], out[T:], atol=1e-6, rtol=0)
