"""The length-generalisation form of the passkey test: fine-tune a model briefly on passkey prompts at its
training length, then test retrieval at 1-8x that length.

Every model gets the same budget: `steps` AdamW steps of `batch_size` prompts of exactly the training
length (needle at a uniform random depth, keys from a seed the test never uses), loss on the answer tokens
only, bf16 autocast on CUDA. The filler, needle and question are the test's own (passkey.py), so what
the fine-tune teaches is the retrieval, and what the test then measures is whether it holds at lengths
never trained on.

    from tda.eval.passkey_finetune import FinetuneSettings, finetune_passkey
    curve = finetune_passkey(model, tokenizer, FinetuneSettings(steps=200), bos_id=None)
"""
from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass

import torch

from .bos import with_bos
from .passkey import build_prompt, units_for_length

ANSWER_ROOM = 4  # tokens kept free for " NNNNN" after the question (GPT-2 and the bundled BPE use <= 3)


@dataclass(frozen=True)
class FinetuneSettings:
    steps: int = 200
    batch_size: int = 16
    lr: float = 1e-4
    warmup: int = 20
    seed: int = 1_000_003      # prompt keys and depths: never the test's seed (0)
    length: int | None = None  # prompt length in tokens; None = the model's training context

    def __post_init__(self):
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"passkey fine-tune {name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"passkey fine-tune lr must be > 0, got {self.lr}")


def passkey_batch(tokenizer, units: int, length: int, batch_size: int, rng: random.Random,
                  bos_id: int | None = None, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of shape (batch_size, length): prompt + answer, right-padded (padding sits after the answer,
    so causal attention never sees it); y is -1 except where the next token is an answer token."""
    xs, ys = [], []
    for _ in range(batch_size):
        pr = build_prompt(units, [str(rng.randint(10000, 99999))], [rng.random()])
        prompt = with_bos(tokenizer.encode(pr.text), bos_id)
        answer = tokenizer.encode(" " + pr.answer)
        ids = prompt + answer
        if len(ids) > length + 1:
            raise ValueError(f"passkey prompt of {len(ids)} tokens does not fit length {length}")
        targets = [-1] * (len(prompt) - 1) + answer
        pad = length + 1 - len(ids)
        xs.append(ids[:-1] + [pad_id] * pad)
        ys.append(targets + [-1] * pad)
    return torch.tensor(xs), torch.tensor(ys)


def check_length(tokenizer, length: int, block_size: int, bos_id: int | None = None) -> int:
    """The filler units of a fine-tune prompt of `length` tokens; ValueError when the model's context cannot
    hold it or the prompt without any filler does not fit (checked before any other work)."""
    if length > block_size:
        raise ValueError(f"passkey fine-tune length {length} exceeds the model's context {block_size}")
    room = length - ANSWER_ROOM - (bos_id is not None)
    shortest = len(tokenizer.encode(build_prompt(0, ["12345"], [0.5]).text))
    if shortest > room:
        raise ValueError(f"--passkey-finetune: a passkey prompt needs at least {shortest + length - room} tokens "
                         f"(no filler, answer included), the training context is {length}")
    return units_for_length(tokenizer, room)


def finetune_passkey(model, tokenizer, s: FinetuneSettings, bos_id: int | None = None,
                     log=print) -> list[tuple[int, float]]:
    """Fine-tune `model` in place (see the module docstring); returns the loss curve [(step, loss)]."""
    device = next(model.parameters()).device
    length = s.length or model.config.block_size
    units = check_length(tokenizer, length, model.config.block_size, bos_id)
    rng = random.Random(s.seed)
    pad_id = int(getattr(tokenizer, "eot_id", 0) or 0)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, betas=(0.9, 0.95), weight_decay=0.0)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    model.train()
    curve = []
    try:
        for step in range(s.steps):
            for g in opt.param_groups:
                g["lr"] = s.lr * min(1.0, (step + 1) / max(1, s.warmup))
            x, y = passkey_batch(tokenizer, units, length, s.batch_size, rng, bos_id, pad_id)
            with amp:
                _, loss = model(x.to(device), y.to(device), return_logits=False)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            curve.append((step + 1, float(loss.detach())))
            if (step + 1) % max(1, s.steps // 5) == 0 or step + 1 == s.steps:
                log(f"[passkey fine-tune] step {step + 1}/{s.steps}: answer loss {curve[-1][1]:.4f}")
    finally:
        model.eval()
    return curve
