"""Cond with text, compositional image/text guidance, and CLIP-space steering."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kinetograph.conditioning import Cond, make_cond, steer_toward_text
from kinetograph.diffusion.guidance import GuidedDenoiser, TextImageGuidedDenoiser, linear_ramp
from kinetograph.errors import InputError

B, T, D_TXT = 2, 4, 6


def _cond(seed: int = 0) -> Cond:
    g = torch.Generator().manual_seed(seed)
    return make_cond(
        torch.randn(B, 1, 8, generator=g), torch.randn(B, 4, 3, 3, generator=g), torch.randn(1, 12, generator=g), T
    )


def _text(seed: int, n: int):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(1, n, dtype=torch.bool)
    mask[:, -1] = False
    return torch.randn(1, n, D_TXT, generator=g), mask, torch.randn(1, D_TXT, generator=g)


class ToyDenoiser:
    """A nonlinear D whose answer depends on every conditioning field, text included; records batch sizes."""

    def __init__(self):
        self.rows: list[int] = []

    def __call__(self, x, sigma, cond: Cond):
        self.rows.append(x.shape[0])
        sigma = torch.as_tensor(sigma).reshape(-1, 1, 1, 1) if torch.as_tensor(sigma).ndim else torch.as_tensor(sigma)
        out = torch.tanh(x) / (1 + sigma) + cond.concat + cond.crossattn.mean(dim=(1, 2)).reshape(-1, 1, 1, 1)
        if cond.has_text:
            m = cond.text_mask.float()[..., None]
            tok = (cond.text_tokens * m).sum(1) / m.sum(1).clamp(min=1)  # ((b t), d)
            out = out + (tok.sum(-1) + cond.text_pooled.sin().sum(-1)).reshape(-1, 1, 1, 1) * x.cos()
        return out


def test_cond_text_cat_pads_and_marks_missing_text():
    a = _cond(0).with_text(*_text(1, 5))
    b = _cond(1)
    c = _cond(2).with_text(*_text(3, 3))
    cat = Cond.cat([a, b, c])
    rows = B * T
    assert cat.text_tokens.shape == (3 * rows, 5, D_TXT) and cat.text_mask.shape == (3 * rows, 5)
    assert not cat.text_mask[rows : 2 * rows].any()  # b had no text
    assert cat.text_mask[2 * rows :, 3:].logical_not().all()  # c padded from 3 to 5 tokens
    torch.testing.assert_close(cat.text_tokens[2 * rows :, :3], c.text_tokens)
    assert torch.equal(cat.text_mask[:rows], a.text_mask) and a.text_mask[:, -1].logical_not().all()
    # per-video text repeated over frames, frames fastest
    assert torch.equal(a.text_tokens[0], a.text_tokens[T - 1])
    assert a.zeroed().text_tokens is None and a.without_text().text_tokens is None
    assert torch.equal(a.without_text().crossattn, a.crossattn)
    assert Cond.cat([_cond(0), _cond(1)]).text_tokens is None


def test_text_scale_zero_is_the_image_only_result_bit_for_bit():
    cond = _cond().with_text(*_text(1, 5))
    negative = _cond().with_text(*_text(2, 4))
    x = torch.randn(B * T, 4, 3, 3, generator=torch.Generator().manual_seed(9))
    ramp = linear_ramp(1.0, 2.5, T)
    image_only = GuidedDenoiser(ToyDenoiser(), cond.without_text(), cond.zeroed(), ramp)(x, 2.0)
    for neg in (None, negative):
        out = TextImageGuidedDenoiser(ToyDenoiser(), cond, ramp, 0.0, negative=neg)(x, 2.0)
        assert torch.equal(out, image_only)


@pytest.mark.parametrize("use_negative", [False, True])
@pytest.mark.parametrize("text_scale", [3.0, "ramp"])
def test_compositional_guidance_formula(use_negative, text_scale):
    cond = _cond().with_text(*_text(1, 5))
    negative = _cond().with_text(*_text(2, 4)) if use_negative else None
    x = torch.randn(B * T, 4, 3, 3, generator=torch.Generator().manual_seed(9))
    s_img = linear_ramp(1.0, 2.5, T)
    s_txt = torch.linspace(0.5, 4.0, T) if text_scale == "ramp" else torch.tensor(text_scale)
    toy = ToyDenoiser()
    out = TextImageGuidedDenoiser(toy, cond, s_img, s_txt, negative=negative)(x, 2.0)
    assert toy.rows == [(4 if use_negative else 3) * B * T]  # one batched forward

    # By hand, one branch at a time.
    d_uu = toy(x, 2.0, cond.zeroed())
    d_i = toy(x, 2.0, cond.without_text())
    d_it = toy(x, 2.0, cond)
    d_in = toy(x, 2.0, negative) if use_negative else d_i
    si = s_img.repeat(B).reshape(-1, 1, 1, 1)
    st = s_txt.repeat(B).reshape(-1, 1, 1, 1) if s_txt.ndim else s_txt
    expected = d_uu + si * (d_i - d_uu) + st * (d_it - d_in)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert (d_it - d_in).abs().max() > 1e-2  # the text term is not trivially zero


def test_image_scale_one_skips_the_unconditional_branch():
    cond = _cond().with_text(*_text(1, 5))
    x = torch.randn(B * T, 4, 3, 3)
    toy = ToyDenoiser()
    out = TextImageGuidedDenoiser(toy, cond, 1.0, 2.0)(x, 0.5)
    assert toy.rows == [2 * B * T]
    d_i, d_it = toy(x, 0.5, cond.without_text()), toy(x, 0.5, cond)
    torch.testing.assert_close(out, d_i + 2.0 * (d_it - d_i), atol=1e-5, rtol=0)


def test_guidance_input_errors():
    with pytest.raises(InputError, match="prompt"):
        TextImageGuidedDenoiser(ToyDenoiser(), _cond(), 1.0, 2.0)
    with pytest.raises(InputError, match="one value per frame"):
        TextImageGuidedDenoiser(ToyDenoiser(), _cond().with_text(*_text(1, 5)), 1.0, torch.ones(T + 1))
    with pytest.raises(InputError, match="3 texts for 2 videos"):
        _cond().with_text(torch.zeros(3, 2, D_TXT), torch.ones(3, 2, dtype=torch.bool), torch.zeros(3, D_TXT))


def test_steer_toward_text():
    g = torch.Generator().manual_seed(0)
    e = 20 * torch.randn(B, 1, 16, generator=g)  # unnormalized, like SVD's CLIP image embedding
    text, ref = torch.randn(16, generator=g), torch.randn(16, generator=g)
    assert steer_toward_text(e, text, ref, 0.0) is e
    direction = F.normalize(text, dim=0) - F.normalize(ref, dim=0)
    previous = None
    for strength in (0.25, 0.5, 1.0):
        out = steer_toward_text(e, text, ref, strength)
        assert out.shape == e.shape
        torch.testing.assert_close(out.norm(dim=-1), e.norm(dim=-1))  # norm kept
        # by hand: |e| * normalize(e/|e| + s d)
        u = e / e.norm(dim=-1, keepdim=True) + strength * direction
        torch.testing.assert_close(out, u / u.norm(dim=-1, keepdim=True) * e.norm(dim=-1, keepdim=True))
        cos = F.cosine_similarity(out.squeeze(1), direction[None], dim=-1)
        assert previous is None or (cos > previous).all()  # more strength, closer to the prompt
        previous = cos
    # The prompt equal to the reference adds no direction.
    torch.testing.assert_close(steer_toward_text(e, text, text, 0.7), e)
    with pytest.raises(InputError):
        steer_toward_text(e, text, ref, -1.0)


def test_drop_conditioning_rates_and_fields():
    from kinetograph.conditioning import drop_conditioning

    n = 4000
    g = torch.Generator().manual_seed(0)
    cond = make_cond(torch.randn(n, 1, 8, generator=g) + 3, torch.randn(n, 4, 2, 2, generator=g) + 3, torch.randn(1, 12), 2)
    cond = cond.with_text(torch.randn(n, 3, D_TXT), torch.ones(n, 3, dtype=torch.bool), torch.randn(n, D_TXT) + 3)
    out = drop_conditioning(cond, 0.1, 0.2, 0.05, torch.Generator().manual_seed(1))
    img = out.crossattn[::2].abs().sum((1, 2)) > 0  # per video: image kept
    txt = out.text_mask[::2].any(-1)
    assert torch.equal(out.crossattn[0::2] != 0, out.crossattn[1::2] != 0)  # whole videos, all frames alike
    assert torch.equal(img, out.concat[::2].abs().sum((1, 2, 3)) > 0)
    assert torch.equal(txt, out.text_pooled[::2].abs().sum(-1) > 0)
    rates = {
        "image only": (~img & txt).float().mean(),
        "text only": (img & ~txt).float().mean(),
        "both": (~img & ~txt).float().mean(),
    }
    for (name, rate), p in zip(rates.items(), (0.1, 0.2, 0.05), strict=True):
        assert abs(rate - p) < 0.02, (name, rate)
    kept = img & txt
    torch.testing.assert_close(out.crossattn[::2][kept], cond.crossattn[::2][kept])
    assert torch.equal(out.vector, cond.vector)
    with pytest.raises(InputError):
        drop_conditioning(cond, 0.5, 0.5, 0.5)
