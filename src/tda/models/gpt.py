"""A GPT language model whose attention is chosen by config: TDA, softmax, or any baseline layer.

Read top to bottom in data-flow order (nanoGPT style): MLP, Block, GPT. Pre-norm RMSNorm blocks, RoPE
(no learned positions, so the context can be extended at evaluation), tied embeddings.
"""
from __future__ import annotations

import inspect
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import GPTConfig
from ..layers import RMSNorm, RotaryEmbedding, build_attention
from ..ops.varlen import PackedDocuments


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.mlp_hidden, bias=config.bias)
        self.c_proj = nn.Linear(config.mlp_hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = RMSNorm(config.n_embd)
        self.attn = build_attention(config, layer_idx)
        self.ln_2 = RMSNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x, rope, position_offset: int = 0, docs=None):
        x = x + self.attn(self.ln_1(x), rope, position_offset, docs=docs)
        return x + self.mlp(self.ln_2(x))


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

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; tied embeddings are counted once, and excluded when non_embedding."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wte.weight.numel() if non_embedding else n

    def forward(self, input_ids, targets=None, position_offset: int = 0, *, cu_seqlens=None, max_seqlen=None):
        """Logits (B, N, vocab); with targets, (logits, mean cross-entropy) — targets == -1 are ignored.

        Packed documents (flash-attn varlen convention): cu_seqlens int32 cumulative document lengths over
        the B * N tokens numbered row-major (every row start b * N among them), max_seqlen an int >= the
        longest document. Each document then attends only within itself and restarts its positions (RoPE,
        tau) at 0: its logits are those of the document run alone.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (B, N), got shape {tuple(input_ids.shape)}")
        docs = None
        if cu_seqlens is not None:
            if position_offset:
                raise ValueError(f"position_offset must be 0 with cu_seqlens (packed documents start at 0), "
                                 f"got {position_offset}")
            docs = PackedDocuments.build(cu_seqlens, max_seqlen, *input_ids.shape, input_ids.device)
        elif max_seqlen is not None:
            raise ValueError("max_seqlen: given without cu_seqlens")
        x = self.drop(self.wte(input_ids))
        for block in self.blocks:
            x = block(x, self.rope, position_offset, docs=docs)
        logits = self.lm_head(self.ln_f(x))
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

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

    @torch.no_grad()
    def generate(self, input_ids, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None, eos_id: int | None = None):
        """Sample continuations (no KV cache: each step re-reads the last block_size tokens).
        temperature 0 means greedy decoding."""
        for _ in range(max_new_tokens):
            ctx = input_ids[:, -self.config.block_size:]
            logits = self(ctx)[:, -1, :].float()
            if temperature == 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            input_ids = torch.cat([input_ids, nxt], dim=1)
            if eos_id is not None and bool((nxt == eos_id).all()):
                break
        return input_ids
