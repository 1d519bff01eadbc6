from .config import GPTConfig
from .generate import sample_loop
from .gpt import GPT
from .kv_cache import KVCache

__all__ = ["GPT", "GPTConfig", "KVCache", "sample_loop"]
