"""tda — Threshold Differential Attention (arXiv 2601.12145): sink-free, ultra-sparse attention."""
from .models.checkpoint import load_checkpoint
from .ops import threshold_differential_attention, threshold_rectified_attention

__version__ = "0.1.0"


__all__ = ["threshold_differential_attention", "threshold_rectified_attention", "load_checkpoint",
           "__version__"]
