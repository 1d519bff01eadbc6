"""GPTConfig: the model's shape and attention settings (imports nothing from tda; layers receive it as data)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields


LEGACY_HEAD_NORM_EPS = 1e-6  # the per-head RMSNorm's eps before GPTConfig.head_norm_eps existed


@dataclass
class GPTConfig:
    vocab_size: int = 50304
    block_size: int = 1024          # training context length
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int | None = None    # grouped-query k/v heads (None = n_head)
    n_embd: int = 768
    head_dim: int | None = None     # None = n_embd // n_head
    mlp_hidden: int | None = None   # None = 4 * n_embd (set per variant to match parameter counts)
    attention: str = "tda"          # which layer family: see tda.layers.ATTENTION
    dropout: float = 0.0
    bias: bool = False
    tie_embeddings: bool = True
    rope_base: float = 10000.0
    rope_scaling: float = 1.0       # NTK-aware context extension factor s: base' = base * s^(d/(d-2))
    # threshold attention (TDA / TRA)
    kappa: float = 1.0
    p: float = 2.0
    beta_init: float = 1.0
    lam_init: float = 0.5
    # the per-head RMSNorm's eps (on the mean square): rows whose survivors barely pass tau have a tiny mean square,
    # which the norm scales up to unit size, and with it their rounding error (docs/kernels.md, decision log);
    # 1e-4 damps such rows and trains better than 1e-6 (GPU comparison config, 3 seeds: -0.11 to -0.15 validation loss; docs/results/compare-gpu/head-norm-eps/). Checkpoints written before
    # this key existed were trained at LEGACY_HEAD_NORM_EPS and load with it (models.checkpoint).
    head_norm_eps: float = 1e-4
    attn_backend: str = "auto"      # "auto" | "triton" | "reference"

    def __post_init__(self):
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.head_dim is None:
            if self.n_embd % self.n_head:
                raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
            self.head_dim = self.n_embd // self.n_head
        if self.mlp_hidden is None:
            self.mlp_hidden = 4 * self.n_embd
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_kv_head ({self.n_kv_head}) must divide n_head ({self.n_head})")
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.lam_init < 1.0:
            raise ValueError(f"lam_init must lie in (0, 1), got {self.lam_init}")
        if self.kappa <= 0:
            raise ValueError(f"kappa must be > 0, got {self.kappa}")
        if self.p < 1:
            raise ValueError(f"p must be >= 1, got {self.p}")
        if not self.head_norm_eps > 0:
            raise ValueError(f"head_norm_eps must be > 0, got {self.head_norm_eps}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)
