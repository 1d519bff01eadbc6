"""Attention layers, one file per family; a model picks one by `config.attention`."""
from .common import AttentionBase, RMSNorm, RotaryEmbedding
from .softmax import SoftmaxAttention
from .tda import TDAAttention, TRAAttention
from .gated_softmax import GatedSoftmaxAttention
from .rela import ReLAAttention
from .diff import DiffAttention
from .entmax import EntmaxAttention
from .ssmax import SSMaxAttention

# name -> class; baseline files add themselves here
ATTENTION = {
    "softmax": SoftmaxAttention,
    "tda": TDAAttention,
    "tra": TRAAttention,
    "gated_softmax": GatedSoftmaxAttention,
    "rela": ReLAAttention,
    "diff": DiffAttention,
    "entmax": EntmaxAttention,
    "ssmax": SSMaxAttention,
}


def build_attention(config, layer_idx: int = 0):
    try:
        cls = ATTENTION[config.attention]
    except KeyError:
        raise ValueError(f"attention must be one of {sorted(ATTENTION)}, got {config.attention!r}") from None
    return cls(config, layer_idx)


__all__ = ["ATTENTION", "build_attention", "AttentionBase", "RMSNorm", "RotaryEmbedding",
           "SoftmaxAttention", "TDAAttention", "TRAAttention"]
