"""`TDAConfig`: a Hugging Face configuration holding every field of tda's GPTConfig (model_type "tda").

Every attention variant of tda.layers (tda, tra, softmax, diff, rela, entmax, gated_softmax, ssmax) is a
value of `attention`; the HF names hidden_size / num_attention_heads / num_hidden_layers /
num_key_value_heads / max_position_embeddings are aliases of n_embd / n_head / n_layer / n_kv_head /
block_size. GPTConfig.rope_scaling (tda's NTK factor, a float) is stored as `rope_ntk_scaling`:
transformers reserves `rope_scaling` for its own rope dictionaries.
"""
from __future__ import annotations

from dataclasses import fields

from transformers import PretrainedConfig

from ..models.config import GPTConfig

GPT_FIELDS = tuple(f.name for f in fields(GPTConfig))
# GPTConfig name -> TDAConfig attribute, where transformers reserves the GPTConfig name
RENAMED = {"rope_scaling": "rope_ntk_scaling"}


def _attr(name: str) -> str:
    return RENAMED.get(name, name)


class TDAConfig(PretrainedConfig):
    model_type = "tda"
    attribute_map = {
        "hidden_size": "n_embd",
        "num_attention_heads": "n_head",
        "num_hidden_layers": "n_layer",
        "num_key_value_heads": "n_kv_head",
        "max_position_embeddings": "block_size",
    }

    def __init__(self, **kwargs):
        # GPTConfig fills the derived defaults (n_kv_head, head_dim, mlp_hidden) and validates; the stored
        # values are the resolved ones, so config.json spells the model out in full
        given = {name: kwargs.pop(_attr(name)) for name in GPT_FIELDS if _attr(name) in kwargs}
        gpt = GPTConfig(**given)
        for name in GPT_FIELDS:
            setattr(self, _attr(name), getattr(gpt, name))
        kwargs.setdefault("tie_word_embeddings", gpt.tie_embeddings)
        super().__init__(**kwargs)

    def to_gpt_config(self) -> GPTConfig:
        return GPTConfig(**{name: getattr(self, _attr(name)) for name in GPT_FIELDS})

    @classmethod
    def from_gpt_config(cls, config: GPTConfig, **kwargs) -> "TDAConfig":
        return cls(**{_attr(k): v for k, v in config.to_dict().items()}, **kwargs)
