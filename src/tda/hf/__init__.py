"""Hugging Face integration (`pip install 'tda[hf]'`): `import tda.hf` registers TDAConfig / TDAForCausalLM
with AutoConfig / AutoModelForCausalLM (model_type "tda"), so a folder written by `save_pretrained` or
`export_checkpoint` loads with the Auto classes.

Import ladder: hf sits right above models (it wraps tda.models.GPT and reads checkpoints through
tda.models.checkpoint); only the CLI imports hf.
"""
from transformers import AutoConfig, AutoModelForCausalLM

from .configuration_tda import TDAConfig
from .export import export_checkpoint, to_hf_tokenizer
from .modeling_tda import TDAForCausalLM

AutoConfig.register(TDAConfig.model_type, TDAConfig)
AutoModelForCausalLM.register(TDAConfig, TDAForCausalLM)

__all__ = ["TDAConfig", "TDAForCausalLM", "export_checkpoint", "to_hf_tokenizer"]
