"""`TDAForCausalLM`: tda.models.GPT as a Hugging Face causal LM, generating over tda's own KV cache.

The cache HF's `generate()` carries between steps (`past_key_values`, called `cache` from transformers 5)
is a tda.models.KVCache: the first call of a generation prefills it through the plain causal path -- each
row alone when an attention_mask marks padding, so left-padded batches get the tokens each prompt gets on
its own -- and every later call appends one token per sequence at that sequence's own position.
The cache starts at config.block_size positions and doubles when a generation runs past it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
import transformers
from transformers import GenerationMixin, PreTrainedModel
from transformers.utils import ModelOutput

from ..layers import RotaryEmbedding
from ..models import GPT, KVCache
from ..models.gpt import logits_index
from .configuration_tda import TDAConfig

_HF_MAJOR = int(transformers.__version__.split(".")[0])


@dataclass
class TDACausalLMOutput(ModelOutput):
    """loss, logits (B, N, vocab), and the KV cache under both names transformers has used for it."""
    loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None
    cache: Optional[Any] = None
    past_key_values: Optional[Any] = None


class TDAPreTrainedModel(PreTrainedModel):
    config_class = TDAConfig
    base_model_prefix = "model"
    _no_split_modules = ["Block"]
    supports_gradient_checkpointing = True  # each Block carries gradient_checkpointing (tda.models.gpt)
    # transformers 5 maps tied parameters target -> source; 4.x lists the targets
    _tied_weights_keys = ({"model.lm_head.weight": "model.wte.weight"} if _HF_MAJOR >= 5
                          else ["model.lm_head.weight"])

    def _init_weights(self, module):
        # GPT initialises its own parameters; only what transformers allocates empty needs values here
        GPT._init_weights(module)
        if isinstance(module, RotaryEmbedding):
            _refill_rope(module)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        model = super().from_pretrained(*args, **kwargs)
        if _HF_MAJOR < 5:
            _reload_beta(model, args[0] if args else kwargs["pretrained_model_name_or_path"], kwargs)
        # RoPE's tables are computed, never saved: transformers versions that build the model empty and load
        # only saved tensors leave them unset, so they are recomputed here whatever the version did
        for module in model.modules():
            if isinstance(module, RotaryEmbedding):
                _refill_rope(module)
        return model


@torch.no_grad()
def _reload_beta(model, path, kwargs):
    """transformers 4.x renames saved keys containing "beta" to "bias" when loading (a legacy TF rule), which
    would leave TDA's learned beta at its initial value: read those tensors straight from the files."""
    from safetensors.torch import load_file
    from transformers.utils import cached_file

    opts = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only") if k in kwargs}
    index = cached_file(path, "model.safetensors.index.json", _raise_exceptions_for_missing_entries=False,
                        **opts)
    files = (sorted(set(json.loads(Path(index).read_text())["weight_map"].values())) if index
             else ["model.safetensors"])
    params = dict(model.named_parameters())
    for name in files:
        for key, t in load_file(cached_file(path, name, **opts)).items():
            if ("beta" in key or "gamma" in key) and key in params:
                params[key].copy_(t.to(params[key].dtype))


@torch.no_grad()
def _refill_rope(rope: RotaryEmbedding):
    """Recompute a RotaryEmbedding's buffers in place (same base and NTK scaling as it was built with)."""
    fresh = RotaryEmbedding(rope.head_dim, rope.base, rope.scaling, rope.max_positions)
    for name in ("inv_freq", "cos_table", "sin_table"):
        getattr(rope, name).copy_(getattr(fresh, name))
    rope._cache = None


def _padded_documents(attention_mask: torch.Tensor, shape) -> tuple:
    """(real (B, N) bool, {} or the packed-documents kwargs of GPT.forward) for an uncached call with this
    attention_mask: none when nothing is padding; else each row's real tokens -- one contiguous run, left or
    right padded -- one document, the padding before and after it documents of their own."""
    B, N = shape
    if tuple(attention_mask.shape) != (B, N):
        raise ValueError(f"attention_mask must have input_ids' shape {(B, N)} without a cache, got "
                         f"{tuple(attention_mask.shape)}")
    real = attention_mask.bool()
    ones = real.int()
    # each row's first and last real token and its count, read in one host sync: its real tokens are one run
    # exactly when last - first + 1 == count
    first, last, count = torch.stack([ones.argmax(1), N - 1 - ones.flip(1).argmax(1), ones.sum(1)]).tolist()
    if all(n == N for n in count):
        return real, {}
    bounds = [0]
    for b, (f, l, n) in enumerate(zip(first, last, count)):
        if n and l - f + 1 != n:
            raise ValueError(f"attention_mask: row {b} has padding between its tokens; only left or right "
                             f"padding (one run of ones per row) is supported")
        for cut in (f, f + n, N) if n else (N,):
            if b * N + cut > bounds[-1]:
                bounds.append(b * N + cut)
    cu = torch.tensor(bounds, dtype=torch.int32, device=attention_mask.device)
    return real, {"cu_seqlens": cu, "max_seqlen": int((cu[1:] - cu[:-1]).max())}


def _grow(cache: KVCache, need: int):
    """Reallocate `cache` in place to hold at least `need` positions (doubling), keeping its contents."""
    n = cache.max_seqlen
    while n < need:
        n *= 2
    for layer in cache.layers:
        for name, t in layer.items():
            bigger = t.new_zeros(t.shape[0], t.shape[1], n, t.shape[3])
            bigger[:, :, :t.shape[2]] = t
            layer[name] = bigger


class TDAForCausalLM(TDAPreTrainedModel, GenerationMixin):
    def __init__(self, config: TDAConfig):
        super().__init__(config)
        self.model = GPT(config.to_gpt_config())
        self.post_init()

    @classmethod
    def from_gpt(cls, gpt: GPT, **config_kwargs) -> "TDAForCausalLM":
        """Wrap a trained GPT (its weights are copied)."""
        model = cls(TDAConfig.from_gpt_config(gpt.config, **config_kwargs))
        model.model.load_state_dict(gpt.state_dict())
        return model.to(next(gpt.parameters()).device)

    def get_input_embeddings(self):
        return self.model.wte

    def set_input_embeddings(self, value):
        self.model.wte = value

    def get_output_embeddings(self):
        return self.model.lm_head

    def set_output_embeddings(self, value):
        self.model.lm_head = value

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # transformers 5 would otherwise hand forward() its own DynamicCache; this model brings a KVCache
        return False

    def new_cache(self, batch_size: int, max_seqlen: int | None = None) -> KVCache:
        return self.model.new_cache(batch_size, max_seqlen or self.config.block_size)

    @staticmethod
    def _reorder_cache(past_key_values, beam_idx):
        # transformers 4.x beam search; 5.x calls the cache's own reorder_cache
        return past_key_values.reorder_cache(beam_idx)

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None, use_cache=True,
                                      cache=None, inputs_embeds=None, **kwargs):
        kv = cache if cache is not None else past_key_values
        if kv is not None and not isinstance(kv, KVCache):
            raise ValueError(f"TDAForCausalLM generates over a tda.models.KVCache, got {type(kv).__name__}")
        embeds = inputs_embeds
        if use_cache is False:
            if embeds is not None:
                raise ValueError("inputs_embeds: generating from embeddings needs the KV cache (use_cache=True)")
            return {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
        if kv is None:
            n = input_ids.shape[1] if embeds is None else embeds.shape[1]
            kv = self.new_cache(input_ids.shape[0], max(self.config.block_size, n))
        inputs = {"past_key_values": kv, "attention_mask": attention_mask, "use_cache": True}
        if kv.seqlens.any():  # prefilled: the one token the cache has not seen yet
            inputs["input_ids"] = input_ids[:, -1:]
        elif embeds is not None:  # the prefill of a prompt given as embeddings (input_ids is then empty)
            inputs["inputs_embeds"] = embeds
        else:
            inputs["input_ids"] = input_ids
        if "logits_to_keep" in kwargs:  # generate() asks for the last position's logits only
            inputs["logits_to_keep"] = kwargs["logits_to_keep"]
        return inputs

    def forward(self, input_ids=None, attention_mask=None, past_key_values=None, labels=None, use_cache=None,
                return_dict=None, cache=None, logits_to_keep=0, num_items_in_batch=None, skip_logits=None,
                inputs_embeds=None, **kwargs):
        """Logits (B, N, vocab); with labels (B, N), the next-token loss (labels == -100 ignored). With a
        KVCache (past_key_values or cache), the cached call described in the module docstring.

        inputs_embeds (B, N, hidden_size): embeddings in place of input_ids (soft prompts); generate() takes
        them for the prompt, then feeds the tokens it draws.
        logits_to_keep: logits of the last k positions only (0: all; generate() passes 1 for the prefill), or
        of the positions a 1-D index tensor names. The loss still covers every position.
        num_items_in_batch: the loss is the sum over tokens divided by this count instead of their mean, as
        the HF Trainer passes it under gradient accumulation (it then does not divide by the steps itself).
        skip_logits: return no logits, and compute the loss through the chunked linear cross-entropy
        (tda.ops.cross_entropy), which never holds the (B, N, vocab) logits; by default on in training mode
        with labels and gradients, where the Trainer reads only the loss.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass input_ids or inputs_embeds (one of them)")
        shape = tuple(input_ids.shape if inputs_embeds is None else inputs_embeds.shape[:2])
        tokens = {"input_ids": input_ids, "inputs_embeds": inputs_embeds}
        kv = cache if cache is not None else past_key_values
        if kv is not None and not isinstance(kv, KVCache):
            raise ValueError(f"past_key_values must be a tda.models.KVCache (see new_cache), got {type(kv).__name__}")
        if kv is not None and labels is not None:
            raise ValueError("labels: the loss is computed without a KV cache (pass use_cache=False)")
        if labels is not None and tuple(labels.shape) != shape:
            raise ValueError(f"labels must have the input's shape {shape}, got {tuple(labels.shape)}")
        if skip_logits is None:
            skip_logits = labels is not None and self.training and torch.is_grad_enabled()
        if skip_logits and labels is None:
            raise ValueError("skip_logits=True needs labels: without them there is nothing to return")
        loss = None
        # padding without a cache: each row's real tokens as one packed document, so they see neither the
        # padding nor anything but themselves, from position 0 (what the cached path gets by running rows alone)
        real, packed = None, {}
        if kv is None and attention_mask is not None:
            real, packed = _padded_documents(attention_mask, shape)
        if labels is not None:
            # position i predicts labels[i + 1]; the last position predicts nothing. GPT ignores -1.
            targets = F.pad(labels[:, 1:], (0, 1), value=-100)
            if real is not None:  # nor does padding
                targets = targets.masked_fill(~real, -100)
            targets = torch.where(targets == -100, -1, targets)
            logits, loss = self.model(targets=targets, return_logits=not skip_logits, logits_to_keep=logits_to_keep,
                                      **tokens, **packed)
            if num_items_in_batch is not None:  # mean over this batch's tokens -> sum / the accumulated count
                n = (targets != -1).sum()
                loss = torch.where(n > 0, loss * n, 0.0) / num_items_in_batch  # no counted token: adds 0
        elif kv is None:
            logits = self.model(logits_to_keep=logits_to_keep, **tokens, **packed)
        else:
            logits = self._cached_forward(tokens, shape, attention_mask, kv, logits_to_keep)
        if packed and logits is not None:  # padding gets zeros, as in the cached path
            keep = logits_index(logits_to_keep, shape[1])
            logits = logits * (real if keep is None else real[:, keep])[..., None]
        out = TDACausalLMOutput(loss=loss, logits=logits, cache=kv, past_key_values=kv)
        if return_dict is False:
            return out.to_tuple()
        return out

    def _cached_forward(self, tokens: dict, shape, attention_mask, kv: KVCache, logits_to_keep):
        B, N = shape
        if kv.batch_size != B:
            raise ValueError(f"past_key_values was built for batch size {kv.batch_size}, input_ids has {B} rows")
        longest = int(kv.seqlens.max())
        if longest + N > kv.max_seqlen:
            _grow(kv, longest + N)
        padded = attention_mask is not None and longest == 0 and not bool(attention_mask[:, -N:].all())
        if not padded:
            return self.model(cache=kv, logits_to_keep=logits_to_keep, **tokens)
        # a padded prompt batch: each row's real tokens alone into its row of the cache, logits put back at
        # those tokens' places among the kept positions (padding gets zeros)
        window = torch.zeros(N, dtype=torch.bool, device=attention_mask.device)
        keep = logits_index(logits_to_keep, N)
        window[slice(None) if keep is None else keep] = True
        logits = torch.zeros(B, int(window.sum()), self.config.vocab_size, device=window.device,
                             dtype=self.model.lm_head.weight.dtype)
        real = attention_mask[:, -N:].bool()
        for b in range(B):
            if not real[b].any():
                continue
            wanted = window[real[b]].nonzero().squeeze(1)  # among the row's real tokens, those kept
            row_tokens = {k: None if t is None else t[b:b + 1, real[b]] for k, t in tokens.items()}
            row = self.model(cache=kv.row(b), logits_to_keep=wanted if len(wanted) else 1, **row_tokens)
            if len(wanted):
                logits[b, real[b][window]] = row[0].to(logits.dtype)
        return logits
