"""Hugging Face integration: config, save/load round trip, generate() over tda's KV cache, tokenizers, export."""
import dataclasses

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
        calls.append((input_ids.shape[1], isinstance(cache, KVCache)))
        return gpt_forward(input_ids, *a, cache=cache, **kw)

    x = torch.randint(0, 61, (2, 6))
    ours = model.model.generate(x, 9, temperature=0)
    model.model.forward = spy
    hf = model.generate(x, max_new_tokens=9, do_sample=False)
    assert torch.equal(hf, ours)
    # one prefill of the prompt, then one token per step, every call on a KVCache
    assert calls == [(6, True)] + [(1, True)] * 8


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
