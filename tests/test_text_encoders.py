"""Text encoders: our OpenCLIP text transformer against transformers' CLIP on identical weights,
the full ViT-H/14 layout on the meta device, the loaders, and the packaged MiniLM."""

from __future__ import annotations

import pytest
import torch

from kinetograph.errors import CheckpointError
from kinetograph.io.safetensors import save_state_dict
from kinetograph.models.text import (
    OpenCLIPTextConfig,
    OpenCLIPTextEncoder,
    check_text_encoder,
    load_open_clip_text,
    load_text_encoder,
    minilm_text_encoder,
    open_clip_text_from_transformers,
)

TINY = OpenCLIPTextConfig(width=64, layers=2, heads=4, embed_dim=48)


def _randomize(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _tiny_transformers_clip():
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5, projection_dim=48,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = CLIPTextModelWithProjection(cfg).eval()
    _randomize(model)
    return model


def test_parity_with_transformers_clip_text():
    ref = _tiny_transformers_clip()
    ours = OpenCLIPTextEncoder(TINY)
    ours.load_state_dict(open_clip_text_from_transformers(ref.state_dict()), strict=True)
    ours.eval()
    texts = ["the camera pans left", "a person running in a park at sunset, zoom in", ""]
    emb = ours.encode(texts)
    from kinetograph.models.tokenizer import clip_tokenizer

    ids = clip_tokenizer()(texts)
    with torch.no_grad():
        out = ref(input_ids=ids)
    assert emb.tokens.shape == (3, 77, 64) and emb.pooled.shape == (3, 48)
    torch.testing.assert_close(emb.tokens, out.last_hidden_state, atol=1e-4, rtol=0)
    torch.testing.assert_close(emb.pooled, out.text_embeds, atol=1e-4, rtol=0)
    # mask covers SOT..EOT: "" is [sot, eot]
    assert emb.mask[2].sum() == 2 and emb.mask[0].sum() == len(clip_tokenizer().encode(texts[0])) + 2


def test_vit_h14_text_layout_on_meta():
    with torch.device("meta"):
        model = OpenCLIPTextEncoder(OpenCLIPTextConfig())
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    w, L = 1024, 24
    expected = {
        "token_embedding.weight": (49408, w),
        "positional_embedding": (77, w),
        "ln_final.weight": (w,),
        "ln_final.bias": (w,),
        "text_projection": (w, 1024),
    }
    per_block = {
        "ln_1.weight": (w,), "ln_1.bias": (w,), "attn.in_proj_weight": (3 * w, w), "attn.in_proj_bias": (3 * w,),
        "attn.out_proj.weight": (w, w), "attn.out_proj.bias": (w,), "ln_2.weight": (w,), "ln_2.bias": (w,),
        "mlp.c_fc.weight": (4 * w, w), "mlp.c_fc.bias": (4 * w,), "mlp.c_proj.weight": (w, 4 * w), "mlp.c_proj.bias": (w,),
    }  # fmt: skip
    for i in range(L):
        expected.update({f"transformer.resblocks.{i}.{k}": s for k, s in per_block.items()})
    assert shapes == expected
    assert model.cfg.heads == 16 and model.transformer.resblocks[0].attn.heads == 16
    # The five non-transformer tensors are the SVD file's text leftovers: 51,723,265 parameters with
    # logit_scale (the checkpoint fact sheet); each block is 12 * 1024^2 + 13 * 1024 parameters.
    n = sum(v.numel() for v in model.state_dict().values())
    assert n == (51_723_265 - 1) + L * (12 * w * w + 13 * w) == 354_032_640


@pytest.mark.parametrize("layout", ["open_clip_safetensors", "open_clip_pickle", "transformers"])
def test_load_open_clip_text_file(tmp_path, layout):
    ref = _tiny_transformers_clip()
    sd = open_clip_text_from_transformers(ref.state_dict())
    if layout == "transformers":
        path = save_state_dict({k: v.contiguous() for k, v in ref.state_dict().items()}, tmp_path / "model.safetensors")
    else:  # a full open_clip CLIP state dict: visual tower and logit_scale are ignored
        full = {**sd, "visual.proj": torch.randn(8, 48), "logit_scale": torch.tensor(4.6)}
        if layout == "open_clip_pickle":
            path = tmp_path / "open_clip_pytorch_model.bin"
            torch.save(full, path)
        else:
            path = save_state_dict(full, tmp_path / "open_clip.safetensors")
    if layout == "open_clip_pickle":
        with pytest.raises(CheckpointError, match="pickle"):
            load_open_clip_text(path)
    enc = load_open_clip_text(path, allow_pickle=True, heads=4)  # open_clip: width // 64 = 1 here
    assert enc.cfg == TINY
    ids = torch.tensor([[49406, 320, 22697, 49407] + [0] * 73])
    with torch.no_grad():
        torch.testing.assert_close(enc(ids)[1], ref(input_ids=ids).text_embeds, atol=1e-4, rtol=0)


def test_load_refuses_svd_leftovers(tmp_path):
    # The SVD single file keeps only the text embedding leftovers, not the transformer.
    prefix = "conditioner.embedders.0.open_clip.model."
    leftovers = {
        prefix + "token_embedding.weight": torch.zeros(49408, 8),
        prefix + "positional_embedding": torch.zeros(77, 8),
        prefix + "text_projection": torch.zeros(8, 8),
    }
    path = save_state_dict(leftovers, tmp_path / "svd.safetensors")
    with pytest.raises(CheckpointError, match="no text transformer"):
        load_open_clip_text(path)
    bad = {k: v for k, v in open_clip_text_from_transformers(_tiny_transformers_clip().state_dict()).items()}
    del bad["ln_final.bias"]
    with pytest.raises(CheckpointError, match="missing"):
        load_open_clip_text(save_state_dict(bad, tmp_path / "bad.safetensors"))


@pytest.fixture(scope="module")
def minilm():
    return minilm_text_encoder()


def test_minilm_tokens_and_pooling(minilm):
    assert minilm.name == "minilm-l6-v2" and minilm.width == 384
    texts = ["the camera pans left", "camera panning to the left over a lake", "a bowl of tomato soup"]
    emb = minilm.encode(texts)
    b, n, d = emb.tokens.shape
    assert (b, d) == (3, 384) and emb.pooled.shape == (3, 384) and emb.mask.shape == (3, n)
    # Padding does not change a text's tokens: encode alone == encode in a batch (valid positions).
    alone = minilm.encode([texts[0]])
    k = int(emb.mask[0].sum())
    assert alone.tokens.shape[1] == k
    torch.testing.assert_close(emb.tokens[0, :k], alone.tokens[0], atol=1e-4, rtol=0)
    # Mean pooling over the mask.
    torch.testing.assert_close(emb.pooled[0], alone.tokens[0].mean(0), atol=1e-5, rtol=0)
    # A real pretrained sentence encoder: paraphrases are closer than unrelated text.
    p = torch.nn.functional.normalize(emb.pooled, dim=-1)
    assert p[0] @ p[1] > p[0] @ p[2] + 0.2


def test_load_text_encoder_by_name_and_mismatch(minilm):
    enc = load_text_encoder("minilm-l6-v2")
    assert enc.name == minilm.name
    check_text_encoder("minilm-l6-v2", 384, enc)
    with pytest.raises(CheckpointError, match="trained with text encoder 'open_clip:ViT-H-14'"):
        check_text_encoder("open_clip:ViT-H-14", 1024, enc)
    with pytest.raises(CheckpointError, match="width 256"):
        check_text_encoder("minilm-l6-v2", 256, enc)
