"""A GPT language model whose attention is chosen by config: TDA, softmax, or any baseline layer.

Read top to bottom in data-flow order (nanoGPT style): MLP, Block, GPT. Pre-norm RMSNorm blocks, RoPE
(no learned positions, so the context can be extended at evaluation), tied embeddings. Serving (KV cache,
prefill and decode, sampling) lives in kv_cache.py and generate.py; `GPT.generate` is their entry.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from .config import GPTConfig
from ..layers import RMSNorm, RotaryEmbedding, build_attention
from ..layers.common import plain_linear
from ..ops import cross_entropy as linear_ce
from ..ops.varlen import PackedDocuments
from . import generate as _generate
from .kv_cache import KVCache


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.mlp_hidden, bias=config.bias)
        self.c_proj = nn.Linear(config.mlp_hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


# activation checkpointing's default: non-reentrant (works under torch.compile, with kwargs-free recompute)
_checkpoint = functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = RMSNorm(config.n_embd)
        self.attn = build_attention(config, layer_idx)
        self.ln_2 = RMSNorm(config.n_embd)
        self.mlp = MLP(config)
        # activation checkpointing (GPT.set_activation_checkpointing, or transformers'
        # gradient_checkpointing_enable, which sets these two): keep only the block's input for the backward
        # and run the block again there. Inside the block, so an FSDP2-sharded block's hooks stay outside it.
        self.gradient_checkpointing = False
        self._gradient_checkpointing_func = None

    def forward(self, x, rope, position_offset=0, docs=None, cache=None):
        if self.gradient_checkpointing and self.training and cache is None and torch.is_grad_enabled():
            fn = self._gradient_checkpointing_func or _checkpoint
            return fn(self._forward, x, rope, position_offset, docs)  # positional: reentrant takes no kwargs
        return self._forward(x, rope, position_offset, docs, cache)

    def _forward(self, x, rope, position_offset=0, docs=None, cache=None):
        x = x + self.attn(self.ln_1(x), rope, position_offset, docs=docs, cache=cache)
        return x + self.mlp(self.ln_2(x))


_eager_linear_ce = torch.compiler.disable(linear_ce.linear_cross_entropy)  # a compiled model's loss: one break


def logits_index(logits_to_keep, n: int):
    """GPT.forward's logits_to_keep as an index along the sequence (None: every position)."""
    if isinstance(logits_to_keep, torch.Tensor):
        if logits_to_keep.dim() != 1 or logits_to_keep.dtype.is_floating_point or logits_to_keep.dtype == torch.bool:
            raise ValueError(f"logits_to_keep must be an int or a 1-D integer index tensor, got "
                             f"{logits_to_keep.dtype} of shape {tuple(logits_to_keep.shape)}")
        return logits_to_keep
    if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, int) or logits_to_keep < 0:
        raise ValueError(f"logits_to_keep must be an int >= 0 or an index tensor, got {logits_to_keep!r}")
    return None if logits_to_keep == 0 or logits_to_keep >= n else slice(n - logits_to_keep, n)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = RMSNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.rope = RotaryEmbedding(config.head_dim, config.rope_base, config.rope_scaling, config.block_size)
        self.apply(self._init_weights)
        # GPT-2: residual projections scaled by 1/sqrt(2 * n_layer) so the residual stream's variance
        # does not grow with depth
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def set_activation_checkpointing(self, every: int = 1) -> "GPT":
        """Recompute every `every`-th block's activations in the backward instead of keeping them (0: off;
        1: every block). Training memory then holds one input per checkpointed block instead of its
        intermediates, for about one more forward of those blocks per step. Returns the model."""
        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise ValueError(f"every must be an int >= 0, got {every!r}")
        for i, block in enumerate(self.blocks):
            block.gradient_checkpointing = every > 0 and i % every == 0
        return self

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; tied embeddings are counted once, and excluded when non_embedding."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wte.weight.numel() if non_embedding else n

    def forward(self, input_ids=None, targets=None, position_offset: int = 0, cache: KVCache | None = None, *,
                cu_seqlens=None, max_seqlen=None, docs: PackedDocuments | None = None, return_logits: bool = True,
                logits_to_keep: int | torch.Tensor = 0, inputs_embeds: torch.Tensor | None = None):
        """Logits (B, N, vocab); with targets, (logits, mean cross-entropy) — targets == -1 are ignored.

        inputs_embeds (B, N, n_embd): the token embeddings themselves, instead of input_ids (soft prompts,
        other modalities' features); everything else is as for the tokens they stand for.

        logits_to_keep: the logits of the last k positions only (B, k, vocab) (0: all), or of the positions a
        1-D index tensor names; a prefill that needs only the next token's logits passes 1, and never writes
        the (B, N, vocab) rest. The loss still covers every position.

        With targets and return_logits=False, (None, loss), which training and evaluation call: the loss
        then comes from the chunked linear cross-entropy (tda.ops.cross_entropy), which never holds the full
        logits nor an fp32 copy of them (under fp16 autocast, the plain loss). A compiled model runs it outside
        its graph: one graph break at the loss (so not with fullgraph=True).

        With `cache` (a KVCache for this batch), row b's tokens sit at positions cache.seqlens[b] + r: every
        layer writes them into the cache and attends over all it holds, then seqlens advance by N.

        Packed documents (flash-attn varlen convention): cu_seqlens int32 cumulative document lengths over
        the B * N tokens numbered row-major (every row start b * N among them), max_seqlen an int >= the
        longest document. Each document then attends only within itself and restarts its positions (RoPE,
        tau) at 0: its logits are those of the document run alone. Packing and a cache exclude each other.
        docs: the same, prebuilt (PackedDocuments.build, on the host) instead of cu_seqlens / max_seqlen: what
        a compiled model takes, since nothing of it is then read on the host inside the forward.
        """
        shape, device = self._input_shape(input_ids, inputs_embeds)
        keep = logits_index(logits_to_keep, shape[1])
        if docs is not None:
            if cu_seqlens is not None or max_seqlen is not None:
                raise ValueError("docs: pass either docs or cu_seqlens / max_seqlen, not both")
            if cache is not None or position_offset:
                raise ValueError("docs: packed documents take no KV cache and no position_offset")
            if tuple(docs.shape) != shape:
                raise ValueError(f"docs: built for a {tuple(docs.shape)} batch, the input is {shape}")
        elif cu_seqlens is not None:
            if cache is not None:
                raise ValueError("cu_seqlens: packed documents cannot be combined with a KV cache (cache)")
            if position_offset:
                raise ValueError(f"position_offset must be 0 with cu_seqlens (packed documents start at 0), "
                                 f"got {position_offset}")
            docs = PackedDocuments.build(cu_seqlens, max_seqlen, *shape, device)
        elif max_seqlen is not None:
            raise ValueError("max_seqlen: given without cu_seqlens")
        layer_caches = [None] * len(self.blocks)
        if cache is not None:
            position_offset, layer_caches = self._cache_step(shape, position_offset, cache)
        x = self.drop(self.wte(input_ids) if inputs_embeds is None else inputs_embeds)
        # a (B,) offsets tensor (sequences of different lengths in a cache): RoPE angles once for all layers
        shared = self.rope.shared_angles() if isinstance(position_offset, torch.Tensor) else contextlib.nullcontext()
        with shared:
            for block, layer_cache in zip(self.blocks, layer_caches):
                x = block(x, self.rope, position_offset, docs=docs, cache=layer_cache)
        if cache is not None:
            cache.advance(shape[1])
        if targets is None:
            return self.lm_head(self.ln_f(x if keep is None else x[:, keep]))
        h = self.ln_f(x)
        # the chunked loss reads the head's weight instead of calling it: only a plain, unhooked Linear
        if not return_logits and plain_linear(self.lm_head) and linear_ce.supported(h, self.lm_head.weight):
            # compiled, the graph ends at h: the loss runs eagerly (its Triton row pass, its chunk loop)
            loss_fn = _eager_linear_ce if torch.compiler.is_compiling() else linear_ce.linear_cross_entropy
            return None, loss_fn(h.reshape(-1, h.shape[-1]), self.lm_head.weight, targets.reshape(-1), -1)
        logits = self.lm_head(h)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        if not return_logits:
            return None, loss
        return (logits if keep is None else logits[:, keep]), loss

    def _input_shape(self, input_ids, inputs_embeds) -> tuple:
        """((B, N), device) of the call's tokens, given as ids (B, N) or as embeddings (B, N, n_embd)."""
        if inputs_embeds is not None:
            if input_ids is not None:
                raise ValueError("pass input_ids or inputs_embeds, not both")
            if inputs_embeds.dim() != 3 or inputs_embeds.shape[2] != self.config.n_embd:
                raise ValueError(f"inputs_embeds must be (B, N, {self.config.n_embd}), got shape "
                                 f"{tuple(inputs_embeds.shape)}")
            return tuple(inputs_embeds.shape[:2]), inputs_embeds.device
        if input_ids is None:
            raise ValueError("input_ids is required (or inputs_embeds)")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (B, N), got shape {tuple(input_ids.shape)}")
        return tuple(input_ids.shape), input_ids.device

    def _cache_step(self, shape, position_offset, cache):
        """(positions the new tokens start at: an int, or a (B,) tensor when sequences differ or the cache is
        static; per-layer views of the cache) for one cached call of shape (B, N); one host read of the lengths
        per call, none in static decoding."""
        B, N = shape
        if position_offset != 0:
            raise ValueError("position_offset must be 0 with a cache: positions come from cache.seqlens")
        if cache.batch_size != B:
            raise ValueError(f"cache was built for batch size {cache.batch_size}, the input has {B} rows: "
                             f"build a KVCache per batch size (KVCache.for_model(model, {B}, max_seqlen))")
        if len(cache.layers) != len(self.blocks):
            raise ValueError(f"cache has {len(cache.layers)} layers, the model {len(self.blocks)}")
        if cache.static:  # no host read: positions stay on the device (the caller checked the capacity)
            return cache.seqlens, [cache.layer(i, None, N) for i in range(len(self.blocks))]
        lengths = tuple(cache.seqlens.tolist())
        if max(lengths) + N > cache.max_seqlen:
            raise ValueError(f"cache holds {cache.max_seqlen} positions per sequence; {max(lengths)} cached + "
                             f"{N} new tokens do not fit: allocate a longer cache (max_seqlen)")
        start = lengths[0] if len(set(lengths)) == 1 else cache.seqlens
        return start, [cache.layer(i, lengths, N) for i in range(len(self.blocks))]

    # --- analysis hooks -------------------------------------------------------------------------
    def record_attention(self, flag: bool = True):
        """Make every attention layer keep its weights (B, H, N, N) from the next forward."""
        for block in self.blocks:
            block.attn.record_weights = flag
            block.attn.last_weights = None

    def attention_weights(self) -> list:
        """Per layer, the weights recorded by the last forward (see record_attention)."""
        return [block.attn.last_weights for block in self.blocks]

    def set_rope_scaling(self, scaling: float):
        """NTK-aware RoPE scaling for evaluation beyond the training context."""
        self.rope.set_scaling(self.config.rope_base, scaling)
        self.rope.to(self.wte.weight.device)

    # --- training ---------------------------------------------------------------------------------
    def configure_optimizer(self, weight_decay: float, lr: float, betas=(0.9, 0.95), device_type="cpu"):
        """AdamW; matrices decay, vectors (norm gains, beta, lam, biases) do not."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        fused = device_type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters
        return torch.optim.AdamW(groups, lr=lr, betas=betas, **({"fused": True} if fused else {}))

    # --- serving ----------------------------------------------------------------------------------
    def new_cache(self, batch_size: int, max_seqlen: int | None = None, dtype=None) -> KVCache:
        """An empty KV cache for `batch_size` sequences of up to max_seqlen (default block_size) positions."""
        return KVCache.for_model(self, batch_size, max_seqlen or self.config.block_size, dtype=dtype)

    @torch.no_grad()
    def generate(self, input_ids, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, eos_id: int | None = None, use_cache: bool = True,
                 generator: torch.Generator | None = None, max_seqlen: int | None = None, cache=None,
                 cuda_graph: bool = False):
        """Sample continuations; see tda.models.generate.generate (temperature 0 = greedy).

        input_ids: a (B, N) tensor (returns (B, N + T), rows that stopped at eos_id padded with eos_id) or
        a list of prompts of any lengths (returns a list of 1-D tensors, prompt + new tokens through eos).
        cuda_graph=True (CUDA): decode steps replay one captured CUDA graph (generate.GraphedDecodeStep)."""
        return _generate.generate(self, input_ids, max_new_tokens, temperature=temperature, top_k=top_k,
                                  top_p=top_p, eos_id=eos_id, use_cache=use_cache, generator=generator,
                                  max_seqlen=max_seqlen, cache=cache, cuda_graph=cuda_graph)

    @torch.no_grad()
    def generate_stream(self, input_ids, max_new_tokens: int, **kwargs):
        """Yield the (B,) next tokens step by step as they are produced; arguments as generate()."""
        yield from _generate.stream(self, input_ids, max_new_tokens, **kwargs)
