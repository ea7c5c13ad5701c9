"""CLIP BPE tokenizer: known sequences, round trips, and transformers' tokenizer on the same merges."""

from __future__ import annotations

import gzip
import json
import random

import pytest
import torch

from kinetograph.models.tokenizer import BPE_PATH, NUM_MERGES, clip_tokenizer


@pytest.fixture(scope="module")
def tok():
    return clip_tokenizer()


def test_known_token_sequences(tok):
    # The CLIP README's example: clip.tokenize("a diagram") -> [49406, 320, 22697, 49407, 0, ...].
    ids = tok(["a diagram", "a dog", "a cat"])
    assert ids.shape == (3, 77) and ids.dtype == torch.long
    assert ids[0, :5].tolist() == [49406, 320, 22697, 49407, 0]
    assert ids[1, :4].tolist() == [49406, 320, 1929, 49407]
    assert ids[2, :4].tolist() == [49406, 320, 2368, 49407]
    assert (ids[:, 4:] == 0).all()
    assert tok.vocab_size == 49408 and tok.sot_token == 49406 and tok.eot_token == 49407


def test_cleaning_and_round_trip(tok):
    assert tok.encode("  The Camera\tPANS   left ") == tok.encode("the camera pans left")
    assert tok.encode("rock &amp; roll") == tok.encode("rock & roll")  # HTML unescaped, as CLIP
    for text in ["the camera pans left over a park", "zoom in on a café in münchen", "2 dogs, 3 cats!"]:
        assert tok.decode(tok(text)[0].tolist()) == " ".join(text.split()).replace(",", " ,").replace("!", " !")


def test_round_trip_of_arbitrary_words(tok):
    random.seed(0)
    words = gzip.open(BPE_PATH).read().decode().split()[1:3000]
    for _ in range(50):
        text = " ".join(random.choice(words).replace("</w>", "") for _ in range(6))
        assert tok.decode(tok.encode(text)) == tok.decode(tok.encode(tok.decode(tok.encode(text))))
        assert "".join(tok.decode(tok.encode(text)).split()) == "".join(text.lower().split())


def test_truncation_keeps_eot(tok):
    ids = tok("word " * 200)
    assert ids.shape == (1, 77)
    assert ids[0, 0] == tok.sot_token and ids[0, -1] == tok.eot_token
    assert ids[0].argmax() == 76  # EOT pooling finds the last position
    assert tok("hi", context_length=8).shape == (1, 8)


def test_matches_transformers_clip_tokenizer(tok, tmp_path):
    from transformers import CLIPTokenizer

    (tmp_path / "vocab.json").write_text(json.dumps(tok.encoder))
    merges = gzip.open(BPE_PATH).read().decode().split("\n")[1 : NUM_MERGES + 1]
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    ref = CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    texts = [
        "a diagram",
        "The camera pans LEFT over a park!",
        "zoom-in, zoom out; 🎥🎬 日本",
        "it's a person running in the park's grass, 1999",
    ]
    for text in texts:
        assert ref(text)["input_ids"] == [tok.sot_token, *tok.encode(text), tok.eot_token], text
