"""tda — Threshold Differential Attention (arXiv 2601.12145): sink-free, ultra-sparse attention."""
from .ops import threshold_differential_attention, threshold_rectified_attention

__version__ = "0.1.0"


def load_checkpoint(path, device="cpu"):
    """(model, tokenizer) from any checkpoint the trainer writes."""
    from .train.checkpoint import load_checkpoint as _load
    return _load(path, device=device)


__all__ = ["threshold_differential_attention", "threshold_rectified_attention", "load_checkpoint",
           "__version__"]
