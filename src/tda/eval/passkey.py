"""Passkey retrieval (Mohtashami & Jaggi 2023, "Landmark Attention"), single- and multi-needle.

Prompt (single needle), built to a target length in tokens:

    There is an important info hidden inside a lot of irrelevant text. Find it and memorize them.
    I will quiz you about the important information there.
    <filler ...> The pass key is N. Remember it. N is the pass key. <filler ...>
    What is the pass key? The pass key is

with filler = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
repeated, N a random 5-digit integer, and the needle placed at a random depth (a fraction of the filler
units before it). The model decodes greedily; the trial succeeds when its continuation, after leading
whitespace, begins with exactly the integer N (not a longer or shorter number, and not a number that
only appears later: after "The pass key is" the answer must come first).

Multi-needle: n needles with n distinct keys, each labelled, e.g. "The pass key number 2 is N. Remember
it. N is the pass key number 2.", at independent random depths; the question asks for one of them
("What is the pass key number 2? The pass key number 2 is"). With n = 1 the unlabelled original is used.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

import torch

from .bos import with_bos

PREFIX = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
          "I will quiz you about the important information there.")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"
NEEDLE_N = "The pass key number {n} is {key}. Remember it. {key} is the pass key number {n}."
QUESTION_N = "What is the pass key number {n}? The pass key number {n} is"


@dataclass
class PasskeyPrompt:
    text: str
    answer: str
    depths: list          # requested depth of each needle, in [0, 1]
    needle_units: list    # filler units placed before each needle
    n_units: int          # filler units in total


def build_prompt(n_units: int, keys, depths, query: int = 0) -> PasskeyPrompt:
    """Prompt with `n_units` filler sentences groups and one needle per key, needle m placed after
    round(depths[m] * n_units) filler units. `query` selects which key the question asks for."""
    keys = [str(k) for k in keys]
    if len(keys) != len(depths):
        raise ValueError(f"depths: need one per key ({len(keys)}), got {len(depths)}")
    if any(not 0.0 <= d <= 1.0 for d in depths):
        raise ValueError(f"depths must lie in [0, 1], got {depths}")
    multi = len(keys) > 1
    at = [round(d * n_units) for d in depths]
    needles = {}
    for m, (u, k) in enumerate(zip(at, keys)):
        needles.setdefault(u, []).append(NEEDLE_N.format(n=m + 1, key=k) if multi else NEEDLE.format(key=k))
    parts = [PREFIX]
    for u in range(n_units + 1):
        parts.extend(needles.get(u, []))
        if u < n_units:
            parts.append(FILLER)
    parts.append(QUESTION_N.format(n=query + 1) if multi else QUESTION)
    return PasskeyPrompt(" ".join(parts), keys[query], list(depths), at, n_units)


def units_for_length(tokenizer, target_tokens: int, n_needles: int = 1) -> int:
    """Largest number of filler units whose prompt fits in target_tokens (tokens are counted, not guessed)."""
    def length(u):
        return len(tokenizer.encode(build_prompt(u, ["12345"] * n_needles, [0.5] * n_needles).text))
    per_unit = max(1, len(tokenizer.encode(" " + FILLER)))
    u = max(0, (target_tokens - length(0)) // per_unit)
    while u > 0 and length(u) > target_tokens:
        u -= 1
    while length(u + 1) <= target_tokens:
        u += 1
    return u


def parse_answer(generated: str) -> str | None:
    """The integer the model's continuation begins with, after whitespace (None if it begins otherwise)."""
    m = re.match(r"\s*(\d+)", generated)
    return m.group(1) if m else None


def is_correct(generated: str, answer: str) -> bool:
    """Exact match of the leading integer with the key (a longer or shorter number is wrong)."""
    return parse_answer(generated) == str(answer)


@torch.no_grad()
def greedy_decode(model, ids: list, max_new_tokens: int, stop=None) -> list:
    """Greedy continuation of ids (no context truncation, unlike GPT.generate). `stop(new_ids)` may end
    decoding early."""
    device = next(model.parameters()).device
    x = torch.tensor([ids], dtype=torch.long, device=device)
    new = []
    for _ in range(max_new_tokens):
        nxt = int(model(x)[0, -1].argmax())
        new.append(nxt)
        if stop is not None and stop(new):
            break
        x = torch.cat([x, torch.tensor([[nxt]], device=device)], dim=1)
    return new


def _stop_when_decided(tokenizer, answer: str):
    """Stop decoding as soon as the outcome is fixed: something other than whitespace or a digit came
    first, the leading integer is complete (a non-digit follows it), or its digits already diverge from
    the answer. Early stopping never changes the result of `is_correct`."""
    def stop(new):
        s = tokenizer.decode(new)
        if not s.strip():
            return False
        m = re.match(r"\s*(\d+)", s)
        if m is None:
            return True
        return m.end() < len(s) or not answer.startswith(m.group(1))
    return stop


@torch.no_grad()
def passkey_accuracy(model, tokenizer, lengths, trials: int = 50, n_needles: int = 1, seed: int = 0,
                     max_new_tokens: int = 8, progress: bool = False, bos_id: int | None = None) -> dict:
    """Exact-match accuracy of greedy passkey retrieval at each prompt length (tokens).

    Returns {"lengths", "accuracy", "n_needles", "trials", "per_trial": [[{depth, answer, output, ok}]]}.
    Key and depths are drawn from random.Random(seed), identically for every model. With bos_id (a model
    trained with a fixed first token) the prompt is [bos_id] + its tokens, still at most L tokens."""
    model.eval()
    rng = random.Random(seed)
    acc, per = [], []
    it = lengths
    if progress:
        from tqdm import tqdm
        it = tqdm(lengths, desc=f"passkey x{n_needles}")
    for L in it:
        units = units_for_length(tokenizer, L - (bos_id is not None), n_needles)
        rows = []
        for _ in range(trials):
            keys = [str(rng.randint(10000, 99999)) for _ in range(n_needles)]
            depths = [rng.random() for _ in range(n_needles)]
            query = rng.randrange(n_needles)
            pr = build_prompt(units, keys, depths, query)
            ids = with_bos(tokenizer.encode(pr.text), bos_id)
            out = tokenizer.decode(greedy_decode(model, ids, max_new_tokens, _stop_when_decided(tokenizer, pr.answer)))
            rows.append({"depth": depths[query], "answer": pr.answer, "output": out,
                         "ok": is_correct(out, pr.answer), "n_tokens": len(ids)})
        per.append(rows)
        acc.append(sum(r["ok"] for r in rows) / max(1, len(rows)))
    return {"lengths": list(lengths), "accuracy": acc, "n_needles": n_needles, "trials": trials,
            "per_trial": per}
