from .config import GPTConfig
from .gpt import GPT

__all__ = ["GPT", "GPTConfig"]
