"""CLIP's byte-level BPE tokenizer (Radford et al. 2021), as OpenCLIP uses it for ViT-H/14.

The merges file `assets/bpe_simple_vocab_16e6.txt.gz` is OpenAI's (MIT, see
`assets/LICENSE-CLIP-BPE.txt`), byte-identical to the one in `clip` / `open_clip`. The vocabulary
(49408 ids) is built from it as CLIP builds it: 256 byte symbols, the same 256 with the end-of-word
marker `</w>`, then one symbol per merge (48894), then <|startoftext|> 49406 and <|endoftext|> 49407.

Text is cleaned (HTML entities unescaped, whitespace collapsed, lower-cased) and split by CLIP's
regex before BPE. CLIP also runs `ftfy.fix_text` first; we use it when it is installed and fall
back to Unicode NFC otherwise (identical for well-formed text; ftfy only repairs mojibake).
"""

from __future__ import annotations

import gzip
import html
import unicodedata
from functools import cache, lru_cache
from pathlib import Path

import regex
import torch

from kinetograph.errors import InputError

BPE_PATH = Path(__file__).parent / "assets" / "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2  # the merges CLIP keeps (the file has a few more)
CONTEXT_LENGTH = 77

# CLIP's pre-tokenizer: special tokens, English contractions, letter runs, single digits, other runs.
_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map, so BPE never sees whitespace or controls."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def _fix_text(text: str) -> str:
    try:
        import ftfy  # optional: CLIP's mojibake repair
    except ImportError:
        return unicodedata.normalize("NFC", text)
    return ftfy.fix_text(text)


def clean(text: str) -> str:
    """CLIP's text cleaning: fix, unescape HTML twice, collapse whitespace, strip, lower-case."""
    text = html.unescape(html.unescape(_fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


class CLIPTokenizer:
    """Text <-> CLIP token ids. `__call__` gives open_clip's padded (b, 77) LongTensor."""

    def __init__(self, bpe_path: str | Path = BPE_PATH):
        merges_text = gzip.open(bpe_path).read().decode("utf-8").split("\n")
        merges = [tuple(m.split()) for m in merges_text[1 : NUM_MERGES + 1]]  # line 0 is a version header
        byte_symbols = list(bytes_to_unicode().values())
        vocab = byte_symbols + [s + "</w>" for s in byte_symbols] + ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        self.encoder: dict[str, int] = {s: i for i, s in enumerate(vocab)}
        self.decoder: dict[int, str] = dict(enumerate(vocab))
        self.bpe_ranks: dict[tuple[str, str], int] = {m: i for i, m in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.sot_token = self.encoder["<|startoftext|>"]
        self.eot_token = self.encoder["<|endoftext|>"]
        self.vocab_size = len(vocab)
        assert self.vocab_size == 49408, "the merges file is not CLIP's"

    @lru_cache(maxsize=10_000)  # noqa: B019 - one tokenizer per process; words repeat a lot
    def bpe(self, token: str) -> tuple[str, ...]:
        """Merge the characters of one pre-token by rank until no known pair is left."""
        if token in ("<|startoftext|>", "<|endoftext|>"):
            return (token,)
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = set(zip(word, word[1:]))
            best = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if best not in self.bpe_ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        return word

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without start/end tokens."""
        ids: list[int] = []
        for token in _PATTERN.findall(clean(text)):
            symbols = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[s] for s in self.bpe(symbols))
        return ids

    def decode(self, ids: list[int]) -> str:
        """Text of token ids; start/end tokens and padding (0 after the end token) are dropped."""
        if self.eot_token in ids:  # padding (id 0, the "!" symbol) follows the end token
            ids = ids[: ids.index(self.eot_token)]
        ids = [i for i in ids if i != self.sot_token]
        text = "".join(self.decoder[i] for i in ids)
        raw = bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace")
        return raw.replace("</w>", " ").strip()

    def __call__(self, texts: str | list[str], context_length: int = CONTEXT_LENGTH) -> torch.Tensor:
        """(b, context_length) int64: [sot, ids..., eot, 0, ...], as `open_clip.tokenize`.

        Too-long texts are cut and end with eot (open_clip's behaviour), so EOT pooling still works.
        """
        if isinstance(texts, str):
            texts = [texts]
        if context_length < 2:
            raise InputError(f"context_length must be at least 2, got {context_length}")
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_token, *self.encode(text), self.eot_token]
            if len(ids) > context_length:
                ids = ids[:context_length]
                ids[-1] = self.eot_token
            out[row, : len(ids)] = torch.tensor(ids)
        return out


@cache
def clip_tokenizer() -> CLIPTokenizer:
    """The shared tokenizer (building the 49k-entry vocabulary takes ~0.1 s)."""
    return CLIPTokenizer()
