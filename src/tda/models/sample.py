"""Text in, text out: continue a prompt with a model and its tokenizer."""
from __future__ import annotations

import torch


def sample_text(model, tokenizer, prompt: str, *, max_new_tokens: int, temperature: float, top_k: int | None,
                seed: int, num_samples: int = 1) -> list[str]:
    """`num_samples` continuations of `prompt` (from an end-of-text token when empty), seeded by `seed`.
    temperature 0 is greedy; top_k 0 or None keeps every token. The KV cache is used when prompt +
    max_new_tokens fit the context (block_size); past it, each step re-reads the last block_size tokens."""
    if tokenizer is None:
        raise ValueError("the checkpoint holds no tokenizer; cannot encode a prompt")
    ids = tokenizer.encode(prompt) if prompt else [tokenizer.eot_id]
    device = next(model.parameters()).device
    x = torch.tensor([ids] * num_samples, dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    use_cache = len(ids) + max_new_tokens <= model.config.block_size
    y = model.generate(x, max_new_tokens, temperature=temperature, top_k=top_k or None, generator=gen,
                       use_cache=use_cache)
    model.train(was_training)
    start = 0 if prompt else 1  # drop the eot we started from
    return [tokenizer.decode(row[start:].tolist()) for row in y]
