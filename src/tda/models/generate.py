"""Generation: prefill a KV cache with the prompts, then decode one token at a time (gpt-fast style).

    prefill(model, cache, prompts)   one forward per prompt (or one for the batch when all prompts have
                                     the same length) through the plain causal path -- on CUDA the fused
                                     kernels -- writing every layer's cache; returns each prompt's last logits
    decode_one(model, cache, tok)    one forward of a (B, 1) step over the cache; returns (B, vocab) logits
    GraphedDecodeStep(model, cache)  decode_one captured once in a CUDA graph and replayed (cuda_graph=True)
    sample(logits, ...)              temperature, top-k, nucleus (top-p); temperature 0 is greedy

Prompts of different lengths share one batch: each is prefilled alone into its row of the cache, and the
batch decodes with per-sequence lengths, so every row gets exactly the tokens it would get alone.
`stream` yields the (B,) tokens of each step as they are produced; `generate` collects them;
`sample_loop` prints text as it streams and reports tokens/s (the `tda sample` command).
"""
from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F

from .kv_cache import KVCache


def check_sampling(temperature, top_k, top_p, max_new_tokens):
    """ValueError naming the argument for settings that cannot sample."""
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or not temperature >= 0 or temperature == float("inf"):
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    if top_p is not None and (not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be None or in (0, 1], got {top_p!r}")


def sample(logits, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
           generator: torch.Generator | None = None):
    """(B, vocab) logits -> (B,) token ids. temperature 0: argmax. Otherwise softmax(logits / temperature)
    restricted to the top_k largest logits, then to the smallest set of tokens whose probability reaches
    top_p (the nucleus; the most likely token is always kept)."""
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens before it already reach top_p
        outside = probs.cumsum(-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(outside, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)[:, 0]


def as_prompts(input_ids, device) -> tuple[list, bool]:
    """(list of 1-D long tensors on device, whether the input was one (B, N) tensor)."""
    if isinstance(input_ids, torch.Tensor):
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be a (B, N) tensor or a list of prompts, got shape "
                             f"{tuple(input_ids.shape)}")
        rows, as_tensor = list(input_ids), True
    elif isinstance(input_ids, (list, tuple)):
        rows, as_tensor = list(input_ids), False
    else:
        raise ValueError(f"input_ids must be a (B, N) tensor or a list of prompts, got {type(input_ids).__name__}")
    if not rows:
        raise ValueError("input_ids holds no prompt")
    prompts = []
    for b, r in enumerate(rows):
        t = torch.as_tensor(r, device=device)
        if t.numel() == 0:
            raise ValueError(f"input_ids: prompt {b} is empty; start it with at least one token (e.g. the "
                             f"end-of-text id)")
        if t.dim() != 1 or t.dtype.is_floating_point or t.dtype == torch.bool:
            raise ValueError(f"input_ids: prompt {b} must be a 1-D sequence of token ids")
        prompts.append(t.long())
    return prompts, as_tensor


@torch.no_grad()
def prefill(model, cache: KVCache, prompts: list):
    """Run the prompts through the model, writing `cache` (reset first); (B, vocab) last-token logits."""
    cache.reset()
    if len({p.numel() for p in prompts}) == 1:
        return model(torch.stack(prompts), cache=cache, logits_to_keep=1)[:, -1]
    return torch.cat([model(p[None], cache=cache.row(b), logits_to_keep=1)[:, -1] for b, p in enumerate(prompts)])


@torch.no_grad()
def decode_one(model, cache: KVCache, tokens):
    """One step: (B,) tokens appended to the cached sequences -> (B, vocab) next-token logits."""
    return model(tokens[:, None], cache=cache)[:, -1]


class GraphedDecodeStep:
    """decode_one(model, cache, tokens) captured in a CUDA graph, for a fixed model, cache and batch size.

    An eager decode step is bound by the host: it launches every layer's kernels one by one from Python, and
    the GPU waits. Replaying a graph launches the whole step at once. The step runs in static decoding
    (KVCache.static: every layer attends over the whole cache with device-side lengths, no host sync), so
    one capture serves every later step; seqlens advance on the device inside the graph. Two warm-up steps
    (compiling the kernels) run on a side stream before the capture, after which the cache's lengths are
    restored: what they wrote past the lengths is overwritten before any step reads it. They need two free
    positions past the longest sequence; every replay needs one (the caller keeps within the cache).
    """

    WARMUP = 2

    def __init__(self, model, cache: KVCache):
        if cache.seqlens.device.type != "cuda" or not torch.cuda.is_available():
            raise ValueError("cuda_graph=True needs the model and its KV cache on a CUDA device")
        longest = int(cache.seqlens.max())
        if longest + self.WARMUP > cache.max_seqlen:
            raise ValueError(f"cuda_graph=True: the cache holds {cache.max_seqlen} positions and a sequence already "
                             f"has {longest}; capturing the decode step needs {self.WARMUP} free positions past it")
        self.cache = cache
        self.tokens = torch.zeros(cache.batch_size, dtype=torch.long, device=cache.seqlens.device)
        saved = cache.seqlens.clone()
        cache.static = True
        try:
            side = torch.cuda.Stream(device=cache.seqlens.device)
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(self.WARMUP):
                    decode_one(model, cache, self.tokens)
            torch.cuda.current_stream().wait_stream(side)
            cache.seqlens.copy_(saved)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.logits = decode_one(model, cache, self.tokens)
            cache.seqlens.copy_(saved)
        finally:
            cache.static = False

    def __call__(self, tokens):
        """(B,) tokens appended to the cached sequences -> (B, vocab) logits (a buffer the next call reuses)."""
        self.tokens.copy_(tokens)
        self.graph.replay()
        return self.logits


@torch.no_grad()
def _uncached_logits(model, seqs):
    """Next-token logits from a full forward over each sequence's last block_size tokens (no cache)."""
    n = model.config.block_size
    if len({s.numel() for s in seqs}) == 1:
        return model(torch.stack(seqs)[:, -n:], logits_to_keep=1)[:, -1]
    return torch.cat([model(s[None, -n:], logits_to_keep=1)[:, -1] for s in seqs])


@torch.no_grad()
def stream(model, input_ids, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, eos_id: int | None = None, use_cache: bool = True,
           generator: torch.Generator | None = None, max_seqlen: int | None = None, cache: KVCache | None = None,
           cuda_graph: bool = False):
    """Yield (B,) tensors: the token each sequence takes at each step, as soon as it is sampled.

    With eos_id, a sequence that produced it yields eos_id from then on, and the stream ends when every
    sequence has. use_cache=False re-runs the last block_size tokens at every step (the reference path).
    max_seqlen (default: the cache's length, else config.block_size) bounds prompt + new tokens.
    cuda_graph=True (CUDA, with the cache) decodes through a GraphedDecodeStep: the same tokens, without
    the host's per-layer launch work."""
    check_sampling(temperature, top_k, top_p, max_new_tokens)
    if cuda_graph and not use_cache:
        raise ValueError("cuda_graph=True needs use_cache=True (the graph replays a cached decode step)")
    device = next(model.parameters()).device
    if cuda_graph and device.type != "cuda":
        raise ValueError("cuda_graph=True needs the model and its KV cache on a CUDA device")
    prompts, _ = as_prompts(input_ids, device)
    B, longest = len(prompts), max(p.numel() for p in prompts)
    if use_cache:
        if cache is not None and not isinstance(cache, KVCache):
            raise ValueError(f"cache must be a tda.models.KVCache, got {type(cache).__name__}")
        if cache is not None and cache.batch_size != B:
            raise ValueError(f"cache was built for batch size {cache.batch_size}, got {B} prompts")
        limit = max_seqlen or (cache.max_seqlen if cache is not None else model.config.block_size)
        if cache is not None and limit > cache.max_seqlen:
            raise ValueError(f"max_seqlen={limit} exceeds the cache's {cache.max_seqlen} positions")
        if longest + max_new_tokens > limit:
            raise ValueError(f"a prompt of {longest} tokens + max_new_tokens={max_new_tokens} = "
                             f"{longest + max_new_tokens} positions exceed the {limit} the "
                             f"{'cache' if cache is not None else 'context'} allows (block_size="
                             f"{model.config.block_size}): shorten the prompt, pass max_seqlen to extend the "
                             f"cache past the trained context, or use_cache=False for a sliding window")
        if cache is None:
            cache = KVCache.for_model(model, B, limit)
        logits = prefill(model, cache, prompts)
        # a graph pays off over many steps; one new token needs no decode step at all
        graphed = cuda_graph and max_new_tokens > 1
        step_fn = GraphedDecodeStep(model, cache) if graphed else (lambda t: decode_one(model, cache, t))
    else:
        seqs = list(prompts)
        logits = _uncached_logits(model, seqs)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        nxt = sample(logits, temperature, top_k, top_p, generator)
        if eos_id is not None:
            nxt = nxt.masked_fill(finished, eos_id)
            finished |= nxt == eos_id
        yield nxt
        if (eos_id is not None and bool(finished.all())) or step + 1 == max_new_tokens:
            return
        if use_cache:
            logits = step_fn(nxt)
        else:
            seqs = [torch.cat([s, t[None]]) for s, t in zip(seqs, nxt)]
            logits = _uncached_logits(model, seqs)


@torch.no_grad()
def generate(model, input_ids, max_new_tokens: int, **kwargs):
    """Prompts + sampled continuations (arguments as `stream`).

    A (B, N) tensor in gives a (B, N + T) tensor out (rows that stopped early are padded with eos_id);
    a list of prompts gives a list of 1-D tensors, each its prompt + new tokens through the first eos_id."""
    device = next(model.parameters()).device
    prompts, as_tensor = as_prompts(input_ids, device)
    steps = list(stream(model, input_ids, max_new_tokens, **kwargs))
    new = torch.stack(steps, 1)                                    # (B, T)
    if as_tensor:
        return torch.cat([input_ids.to(device).long(), new], 1)
    eos_id = kwargs.get("eos_id")
    out = []
    for p, row in zip(prompts, new):
        if eos_id is not None and bool((row == eos_id).any()):
            row = row[:int((row == eos_id).nonzero()[0]) + 1]
        out.append(torch.cat([p, row]))
    return out


def sample_loop(model, tokenizer, prompt: str = "", *, max_new_tokens: int = 200, temperature: float = 0.8,
                top_k: int | None = 200, top_p: float | None = None, seed: int = 1337, num_samples: int = 1,
                stop_at_eot: bool = False, use_cache: bool | None = None, cuda_graph: bool = False, out=None,
                err=None) -> list:
    """Print each sample as it is generated (prompt, then tokens as they come) and a tokens/s line per sample
    on `err`; returns the sample texts. An empty prompt starts from the end-of-text token (not printed).
    use_cache=None: the KV cache when prompt + max_new_tokens fit the context (block_size), else the
    sliding-window path (each step re-reads the last block_size tokens), with a note on `err`.
    cuda_graph: decode steps replayed from a CUDA graph (needs CUDA and the cache)."""
    out, err = out or sys.stdout, err or sys.stderr
    ids = tokenizer.encode(prompt) if prompt else [tokenizer.eot_id]
    if use_cache is None:
        use_cache = len(ids) + max_new_tokens <= model.config.block_size
        if not use_cache:
            print(f"[{len(ids)} prompt + {max_new_tokens} new tokens exceed the context of "
                  f"{model.config.block_size}: sampling without the KV cache, over a sliding window]",
                  file=err, flush=True)
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    texts = []
    try:
        for i in range(num_samples):
            if num_samples > 1:
                print(f"--- sample {i}", file=out, flush=True)
            out.write(prompt)
            new, shown = [], ""
            t0 = time.perf_counter()
            first = None
            for tok in stream(model, [ids], max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                              eos_id=tokenizer.eot_id if stop_at_eot else None, use_cache=use_cache,
                              generator=gen, cuda_graph=cuda_graph and use_cache):
                new.append(int(tok[0]))
                first = first if first is not None else time.perf_counter() - t0
                text = tokenizer.decode(new)
                # a byte-level BPE token may end inside a UTF-8 character: print once it is complete
                if not text.endswith("\ufffd"):
                    out.write(text[len(shown):])
                    out.flush()
                    shown = text
            dt = time.perf_counter() - t0
            text = tokenizer.decode(new)
            out.write(text[len(shown):] + "\n")
            out.flush()
            print(f"[{len(new)} tokens in {dt:.2f} s: {len(new) / dt:.1f} tokens/s; first token after "
                  f"{first:.3f} s]", file=err, flush=True)
            texts.append(prompt + text)
    finally:
        model.train(was_training)
    return texts
