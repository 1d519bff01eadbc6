"""Hugging Face integration: config, save/load round trip, generate() over tda's KV cache, tokenizers, export."""
import dataclasses
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from tda.models.config import GPTConfig  # noqa: E402
from tda.data.tokenizer import load_tokenizer  # noqa: E402
# importing tda.hf registers the Auto classes
from tda.hf import TDAConfig, TDAForCausalLM, export_checkpoint, to_hf_tokenizer  # noqa: E402
from tda.layers import ATTENTION  # noqa: E402
from tda.models import GPT, KVCache  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: E402

# the bundled BPE's JSON stores merges as pairs, which tokenizers < 0.20 (transformers < 4.45) cannot read
import tokenizers  # noqa: E402
needs_pair_merges = pytest.mark.skipif(tuple(int(x) for x in tokenizers.__version__.split(".")[:2]) < (0, 20),
                                       reason="the bundled tokenizer needs tokenizers >= 0.20")

TEXT = "Hello world! Threshold attention, 1234 tokens -- naïve café ☃ 東京\n\n  indented <|endoftext|> done."


def tiny(attention="tda", n_kv_head=2, **kw):
    if attention == "entmax":
        pytest.importorskip("entmax")
    torch.manual_seed(0)
    cfg = TDAConfig(vocab_size=61, block_size=32, n_layer=2, n_head=4, n_kv_head=n_kv_head, n_embd=32,
                    attention=attention, beta_init=0.3, **kw)
    model = TDAForCausalLM(cfg).eval()
    with torch.no_grad():  # learned scalars away from their initial values, so loading them is tested
        for name, p in model.named_parameters():
            if name.endswith(("beta", "lam_logit", ".s")):
                p.uniform_(0.2, 0.6)
    return model


def test_config_covers_gpt_config_and_round_trips(tmp_path):
    gpt = GPTConfig(vocab_size=99, n_layer=3, n_head=6, n_kv_head=2, n_embd=48, attention="diff", kappa=2.0,
                    p=1.5, rope_scaling=2.0, head_norm_eps=1e-5, bias=True, tie_embeddings=False)
    cfg = TDAConfig.from_gpt_config(gpt)
    assert cfg.to_gpt_config() == gpt
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_hidden_layers, cfg.num_key_value_heads) == (48, 6, 3, 2)
    cfg.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, TDAConfig) and loaded.to_gpt_config() == gpt
    assert {f.name for f in dataclasses.fields(GPTConfig)} - {"rope_scaling"} <= set(loaded.to_dict())
    with pytest.raises(ValueError, match="attention"):
        TDAForCausalLM(TDAConfig(attention="nope", n_layer=1, n_embd=16, n_head=2, vocab_size=10))


@pytest.mark.parametrize("attention", sorted(ATTENTION))
def test_save_and_load_give_equal_logits(attention, tmp_path):
    model = tiny(attention)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, TDAForCausalLM)
    x = torch.randint(0, 61, (2, 9))
    torch.testing.assert_close(loaded(x).logits, model(x).logits, rtol=0, atol=0)


@pytest.mark.parametrize("attention,n_kv_head", [("tda", 2), ("tda", 4), ("tra", 2), ("softmax", 2)])
def test_hf_generate_runs_over_our_cache_and_matches_our_generate(attention, n_kv_head):
    model = tiny(attention, n_kv_head)
    calls = []
    gpt_forward = model.model.forward

    def spy(input_ids, *a, cache=None, **kw):
        calls.append((input_ids.shape[1], isinstance(cache, KVCache), kw.get("logits_to_keep", 0)))
        return gpt_forward(input_ids, *a, cache=cache, **kw)

    x = torch.randint(0, 61, (2, 6))
    ours = model.model.generate(x, 9, temperature=0)
    model.model.forward = spy
    hf = model.generate(x, max_new_tokens=9, do_sample=False)
    assert torch.equal(hf, ours)
    # one prefill of the prompt, then one token per step, every call on a KVCache, and for the last position's
    # logits only where transformers asks for that (logits_to_keep, from 4.50)
    keep = 1 if hasattr(model, "_supports_logits_to_keep") else 0
    assert calls == [(6, True, keep)] + [(1, True, keep)] * 8


def test_hf_generate_left_padded_batch_equals_each_prompt_alone():
    model = tiny("tda")
    prompts = [torch.tensor([5, 9, 2, 7, 1]), torch.tensor([3, 4])]
    ids = torch.tensor([[5, 9, 2, 7, 1], [0, 0, 0, 3, 4]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 0, 1, 1]])
    out = model.generate(ids, attention_mask=mask, max_new_tokens=7, do_sample=False, pad_token_id=0)
    for row, p in zip(out, prompts):
        alone = model.model.generate(p[None], 7, temperature=0)[0]
        assert torch.equal(row[-7:], alone[-7:])


def test_cache_grows_past_block_size():
    model = tiny("softmax")
    x = torch.randint(0, 61, (1, 30))
    hf = model.generate(x, max_new_tokens=10, do_sample=False)
    ours = model.model.generate(x, 10, temperature=0, max_seqlen=40)
    assert torch.equal(hf, ours)


@needs_pair_merges
def test_bundled_bpe_exports_to_auto_tokenizer(tmp_path):
    tok = load_tokenizer("bundled")
    to_hf_tokenizer(tok).save_pretrained(tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    plain = TEXT.replace("<|endoftext|>", "")
    assert hf(plain, add_special_tokens=False)["input_ids"] == tok.encode(plain)
    assert hf.decode(tok.encode(plain)) == plain
    assert hf.eos_token_id == tok.eot_id and hf.pad_token_id == tok.eot_id


def test_gpt2_exports_to_auto_tokenizer(tmp_path):
    tok = load_tokenizer("gpt2")
    to_hf_tokenizer(tok).save_pretrained(tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    plain = TEXT.replace("<|endoftext|>", "")
    assert hf(plain, add_special_tokens=False)["input_ids"] == tok.encode(plain)
    assert hf.decode(tok.encode(plain)) == plain
    assert hf.eos_token_id == 50256 and len(hf) == 50257


@pytest.mark.parametrize("kind", [pytest.param("bundled", marks=needs_pair_merges), "gpt2"])
def test_export_checkpoint_round_trip(kind, tmp_path):
    from tda.train.checkpoint import save_checkpoint

    tok = load_tokenizer(kind)
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                        beta_init=0.3)).eval()
    ckpt = save_checkpoint({"model": gpt.state_dict(), "model_config": gpt.config.to_dict(),
                            "tokenizer": tok.to_dict(), "step": 3}, tmp_path / "ckpt.pt")
    out = export_checkpoint(ckpt, tmp_path / "hf")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    hf_tok = AutoTokenizer.from_pretrained(out)
    hf_model = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = hf_tok("The cat sat", return_tensors="pt")["input_ids"]
    assert ids[0].tolist() == tok.encode("The cat sat")
    torch.testing.assert_close(hf_model(ids).logits, gpt(ids), rtol=0, atol=0)
    hf_ids = hf_model.generate(ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(hf_ids, gpt.generate(ids, 6, temperature=0))
    assert hf_model.generation_config.eos_token_id == tok.eot_id
    with pytest.raises(ValueError, match="not an empty folder"):
        export_checkpoint(ckpt, out)


def test_beam_search_and_sampling_run_over_the_cache():
    model = tiny("tda")
    x = torch.randint(0, 61, (2, 6))
    beams = model.generate(x, max_new_tokens=6, num_beams=3, do_sample=False)
    assert torch.equal(beams, model.generate(x, max_new_tokens=6, num_beams=3, do_sample=False, use_cache=False))
    drawn = model.generate(x, max_new_tokens=4, do_sample=True, top_p=0.9, num_return_sequences=2)
    assert drawn.shape == (4, 10) and torch.equal(drawn[:, :6], x.repeat_interleave(2, 0))


def test_left_padded_prefill_keeps_the_asked_logits():
    model = tiny("tda")
    ids = torch.tensor([[5, 9, 2, 7, 1], [0, 0, 0, 3, 4]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 0, 1, 1]])
    full = model(ids, attention_mask=mask, past_key_values=model.new_cache(2)).logits
    assert full.shape == (2, 5, 61) and not full[1, :3].any()
    for keep in (1, 3, torch.tensor([0, 4])):
        kept = model(ids, attention_mask=mask, past_key_values=model.new_cache(2), logits_to_keep=keep).logits
        want = full[:, -keep:] if isinstance(keep, int) else full[:, keep]
        torch.testing.assert_close(kept, want, rtol=1e-6, atol=1e-6)


def _hf_loss(logits, labels):
    """transformers' causal-LM loss: position i predicts labels[i + 1], -100 ignored."""
    return torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                             labels[:, 1:].reshape(-1), ignore_index=-100)


def test_labels_loss_matches_transformers_and_training_skips_the_logits():
    model = tiny("tda")
    x = torch.randint(0, 61, (3, 10))
    labels = x.clone()
    labels[0, 4:7] = -100
    labels[2, :5] = -100
    out = model(x, labels=labels)  # eval mode: logits and loss
    torch.testing.assert_close(out.loss, _hf_loss(out.logits, labels))
    plain = [p.grad for p in (out.loss.backward(), model.parameters())[1]]
    model.zero_grad()
    model.train()
    chunked = model(x, labels=labels)  # training with labels: the chunked loss, no logits
    assert chunked.logits is None
    torch.testing.assert_close(chunked.loss, out.loss)
    chunked.loss.backward()
    for a, b in zip(plain, [p.grad for p in model.parameters()]):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert model(x, labels=labels, skip_logits=False).logits.shape == (3, 10, 61)
    with torch.no_grad():
        assert model(x, labels=labels).logits is not None  # no gradient: nothing to save by skipping
    # num_items_in_batch (the Trainer's count over every accumulated micro-batch): sum / count
    n = int((labels[:, 1:] != -100).sum())
    torch.testing.assert_close(model(x, labels=labels, num_items_in_batch=3 * n).loss, out.loss / 3)
    none = torch.full_like(labels, -100)  # a micro-batch without a counted token adds 0, not NaN
    assert model(x, labels=none, num_items_in_batch=n).loss.item() == 0.0
    with pytest.raises(ValueError, match="labels"):
        model(x, labels=labels[:, :5])
    with pytest.raises(ValueError, match="skip_logits"):
        model(x, skip_logits=True)


def test_trainer_gradient_accumulation_equals_one_large_batch(tmp_path):
    """The Trainer passes num_items_in_batch to a forward that takes **kwargs and then leaves the loss
    unscaled, so the model must divide by it: 2 micro-batches of 2 take the same step as one batch of 4."""
    pytest.importorskip("accelerate")
    if tuple(int(x) for x in transformers.__version__.split(".")[:2]) < (4, 46):
        pytest.skip("transformers < 4.46 passes no num_items_in_batch and averages the micro-batches' means")
    from transformers import Trainer, TrainingArguments
    torch.manual_seed(1)
    rows = []
    for i in range(4):
        ids = torch.randint(0, 61, (12,))
        labels = ids.clone()
        labels[: 2 + 3 * i] = -100  # rows with different numbers of counted tokens
        rows.append({"input_ids": ids, "labels": labels})

    def step(batch, accum):
        model = tiny("tda")
        args = TrainingArguments(output_dir=str(tmp_path / f"{batch}x{accum}"), per_device_train_batch_size=batch,
                                 gradient_accumulation_steps=accum, max_steps=1, learning_rate=0.5, optim="sgd",
                                 lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0,
                                 report_to=[], save_strategy="no", use_cpu=True, seed=0)
        Trainer(model=model, args=args, train_dataset=rows).train()
        return model

    one, accumulated = step(4, 1), step(2, 2)
    assert any(not torch.equal(a, b) for a, b in zip(one.parameters(), tiny("tda").parameters()))  # it stepped
    for (name, a), b in zip(one.named_parameters(), accumulated.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)


def test_gradient_checkpointing_enable_recomputes_each_block():
    """transformers' activation_checkpointing_enable() (gradient_checkpointing_enable() before transformers 5.x)
    reaches the blocks: each runs again in the backward, with the gradients of the plain step; disable turns
    it off."""
    model = tiny("tda").train()
    assert model.supports_gradient_checkpointing
    x = torch.randint(0, 61, (2, 10))
    calls = []
    for block in model.model.blocks:
        block.attn.register_forward_hook(lambda *a: calls.append(1))

    def grads():
        calls.clear()
        model(x, labels=x).loss.backward()
        out = [p.grad.clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        return out, len(calls)

    plain, n_plain = grads()
    new_api = hasattr(model, "activation_checkpointing_enable")
    (model.activation_checkpointing_enable if new_api else model.gradient_checkpointing_enable)()
    assert all(b.gradient_checkpointing for b in model.model.blocks)
    ck, n_ck = grads()
    assert (n_plain, n_ck) == (2, 4)
    for a, b in zip(plain, ck):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
    (model.activation_checkpointing_disable if new_api else model.gradient_checkpointing_disable)()
    assert grads()[1] == 2


@pytest.mark.parametrize("attention", ["tda", "softmax", "diff"])
def test_padded_batch_without_cache_equals_each_row_alone(attention):
    """An attention_mask with padding on the uncached path (training, scoring, generate(use_cache=False)):
    each row's real tokens -- left or right padded -- give the logits of that row alone, padding gets zeros;
    the loss counts real tokens only, as if each row were scored alone."""
    model = tiny(attention)
    rows = [torch.tensor([5, 9, 2, 7, 1, 8]), torch.tensor([3, 4]), torch.tensor([6, 6, 1, 9])]
    N = 6
    for side in ("left", "right"):
        ids = torch.zeros(3, N, dtype=torch.long)
        mask = torch.zeros(3, N, dtype=torch.long)
        for b, r in enumerate(rows):
            span = slice(N - len(r), N) if side == "left" else slice(0, len(r))
            ids[b, span], mask[b, span] = r, 1
        out = model(ids, attention_mask=mask).logits
        for b, r in enumerate(rows):
            span = slice(N - len(r), N) if side == "left" else slice(0, len(r))
            torch.testing.assert_close(out[b, span], model(r[None]).logits[0], rtol=1e-5, atol=1e-5)
            assert not out[b][~mask[b].bool()].any()
        torch.testing.assert_close(model(ids, attention_mask=mask, logits_to_keep=2).logits, out[:, -2:])
        labels = ids.masked_fill(mask == 0, -100)
        losses = [torch.nn.functional.cross_entropy(model(r[None]).logits[0, :-1], r[1:], reduction="sum")
                  for r in rows]
        want = sum(losses) / sum(len(r) - 1 for r in rows)
        torch.testing.assert_close(model(ids, attention_mask=mask, labels=labels).loss, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="attention_mask: row 0 has padding between"):
        model(ids, attention_mask=torch.tensor([[1, 0, 1, 1, 1, 1]] + [[1] * N] * 2))
    with pytest.raises(ValueError, match="attention_mask must have"):
        model(ids, attention_mask=mask[:, :4])


def test_generate_without_cache_on_a_left_padded_batch_equals_each_prompt_alone():
    model = tiny("tda")
    prompts = [torch.tensor([5, 9, 2, 7, 1]), torch.tensor([3, 4])]
    ids = torch.tensor([[5, 9, 2, 7, 1], [0, 0, 0, 3, 4]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 0, 1, 1]])
    out = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0,
                         use_cache=False)
    for row, p in zip(out, prompts):
        assert torch.equal(row[-6:], model.model.generate(p[None], 6, temperature=0)[0, -6:])


def test_lora_adapters_on_the_projections_take_effect(monkeypatch):
    """PEFT LoRA on TDA's q/k/v projections: the adapters change the logits, equal to a model with every fused
    path refused, and train (their gradients are non-zero). The device test of the fused projection is lifted,
    so the interpreter would run it here as eager CUDA does: it must step aside for the adapted Linears. On a
    GPU machine it runs on CUDA."""
    peft = pytest.importorskip("peft")
    import tda.layers.common as common
    from tda.layers import RotaryEmbedding as Rope

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs CUDA or TRITON_INTERPRET=1 (the fused projection's kernel)")
    monkeypatch.setattr(common, "_eager_cuda_rows", lambda x, offset, positions: not isinstance(offset, torch.Tensor))
    model = peft.get_peft_model(tiny("tda").to(dev), peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                                     target_modules=["q_proj", "k_proj", "v_proj"]))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # LoRA starts at B = 0; give the adapters something to add
                p.copy_(torch.randn(p.shape, generator=g).to(dev) * 0.5)
    x = torch.randint(0, 61, (2, 10), device=dev)
    adapted = model(input_ids=x).logits
    with model.disable_adapter():
        base = model(input_ids=x).logits
    assert (adapted - base).abs().max() > 1e-3
    with monkeypatch.context() as m:
        m.setattr(Rope, "project", lambda *a, **k: None)
        torch.testing.assert_close(adapted, model(input_ids=x).logits, rtol=1e-5, atol=1e-5)
    model.train()
    model(input_ids=x, labels=x).loss.backward()
    lora = [p.grad for n, p in model.named_parameters() if "lora_A" in n]
    assert lora and all(g is not None and g.abs().sum() > 0 for g in lora)


def test_inputs_embeds_forward_and_generate():
    """inputs_embeds in place of input_ids: the same logits and loss, a left-padded cached prefill included;
    generate(inputs_embeds=...) draws the tokens generate(input_ids) draws after the prompt."""
    model = tiny("tda")
    x = torch.randint(0, 61, (2, 7))
    e = model.get_input_embeddings()(x).detach()
    torch.testing.assert_close(model(inputs_embeds=e).logits, model(x).logits, rtol=0, atol=0)
    torch.testing.assert_close(model(inputs_embeds=e, labels=x).loss, model(x, labels=x).loss, rtol=0, atol=0)
    mask = torch.tensor([[1] * 7, [0, 0, 1, 1, 1, 1, 1]])
    for kv in (None, model.new_cache(2)):
        torch.testing.assert_close(model(inputs_embeds=e, attention_mask=mask, past_key_values=kv).logits,
                                   model(x, attention_mask=mask, past_key_values=model.new_cache(2)).logits,
                                   rtol=1e-6, atol=1e-6)
    ids = model.generate(x, max_new_tokens=6, do_sample=False)
    from_embeds = model.generate(inputs_embeds=e, max_new_tokens=6, do_sample=False)
    assert torch.equal(from_embeds[:, -6:], ids[:, -6:])
    with pytest.raises(ValueError, match="one of them"):
        model(x, inputs_embeds=e)
    with pytest.raises(ValueError, match="needs the KV cache"):  # the uncached step would have only new tokens
        model.prepare_inputs_for_generation(x[:, :0], inputs_embeds=e, use_cache=False)
