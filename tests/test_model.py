"""GPT model and the TDA / softmax layers: shapes, causality, gradients, weight recording."""
import pytest
import torch

from tda.models.config import GPTConfig
from tda.layers import ATTENTION, RotaryEmbedding
from tda.models import GPT


def tiny(attention, **kw):
    return GPTConfig(vocab_size=97, block_size=32, n_layer=2, n_head=4, n_embd=32, attention=attention, **kw)


@pytest.mark.parametrize("attention", ["tda", "tra", "softmax"])
def test_forward_loss_and_all_params_get_grads(attention):
    torch.manual_seed(0)
    model = GPT(tiny(attention))
    x, t = torch.randint(0, 97, (2, 24)), torch.randint(0, 97, (2, 24))
    logits, loss = model(x, t)
    assert logits.shape == (2, 24, 97) and torch.isfinite(loss)
    assert abs(loss.item() - torch.log(torch.tensor(97.0)).item()) < 0.5  # near-uniform at init
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    if attention == "tda":
        attn = model.blocks[0].attn
        assert attn.beta.grad.abs().sum() > 0 and attn.lam_logit.grad.abs().sum() > 0


@pytest.mark.parametrize("attention", sorted(ATTENTION))
def test_causal_future_tokens_do_not_change_the_past(attention):
    torch.manual_seed(1)
    model = GPT(tiny(attention)).eval()
    x = torch.randint(0, 97, (1, 20))
    y = x.clone()
    y[0, 12:] = (y[0, 12:] + 5) % 97
    with torch.no_grad():
        a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_tda_layer_parameters_and_ranges():
    cfg = tiny("tda", lam_init=0.3, beta_init=1.5)
    attn = GPT(cfg).blocks[0].attn
    torch.testing.assert_close(attn.lam, torch.full((4,), 0.3))
    torch.testing.assert_close(attn.beta.detach(), torch.full((4,), 1.5))
    with torch.no_grad():
        attn.lam_logit.fill_(40.0)
    assert torch.all(attn.lam < 1.0 + 1e-6) and torch.all(attn.lam > 0)


def test_recorded_tda_weights_are_sparse_signed_and_causal():
    torch.manual_seed(2)
    model = GPT(tiny("tda")).eval()
    model.record_attention(True)
    with torch.no_grad():
        model(torch.randint(0, 97, (1, 32)))
    ws = model.attention_weights()
    assert len(ws) == 2 and ws[0].shape == (1, 4, 32, 32)
    upper = torch.ones(32, 32, dtype=torch.bool).triu(1)
    for w in ws:
        assert torch.all(w[..., upper] == 0)
        assert (w[..., ~upper] == 0).float().mean() > 0.5  # thresholding makes exact zeros at init
    model.record_attention(False)
    assert all(w is None for w in model.attention_weights())


def test_recorded_softmax_weights_are_probabilities():
    torch.manual_seed(3)
    model = GPT(tiny("softmax")).eval()
    model.record_attention(True)
    with torch.no_grad():
        model(torch.randint(0, 97, (2, 16)))
    w = model.attention_weights()[1]
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 16))


def test_rope_offset_matches_slice():
    rope = RotaryEmbedding(8)
    x = torch.randn(1, 2, 10, 8)
    full = rope(x)
    torch.testing.assert_close(rope(x[:, :, 6:], position_offset=6), full[:, :, 6:])
    torch.testing.assert_close(full.norm(dim=-1), x.norm(dim=-1))  # a rotation keeps norms (cosines)
    rope.set_scaling(10000.0, 4.0)
    assert not torch.allclose(rope(x), full)


@pytest.mark.parametrize("n, offset", [(10, 0), (6, 4), (40, 0), (12, 30)])
def test_rope_traced_matches_eager(n, offset):
    """Under torch.compile RoPE reads its buffers (max_positions rows) or, past them, computes the table in the
    graph, never its eager cache (a CUDA-graph replay would overwrite a cache filled from a graph): the same
    rotation either way."""
    rope = RotaryEmbedding(8, max_positions=16)
    x = torch.randn(2, 3, n, 8)
    traced = torch.compile(lambda t: rope(t, position_offset=offset), backend="eager", fullgraph=True)
    torch.testing.assert_close(traced(x), rope(x, position_offset=offset), rtol=0, atol=0)
    assert rope._cache is not None and rope._cache[0].shape[0] >= n + offset  # filled by the eager call only
    assert "cos_table" not in rope.state_dict()  # derived: not saved in checkpoints


def test_head_norm_eps_reaches_the_layers():
    for attention in ("tda", "tra"):
        model = GPT(tiny(attention, head_norm_eps=1e-3))
        assert all(block.attn.head_norm.eps == 1e-3 for block in model.blocks)


def test_gqa_config_and_generate():
    torch.manual_seed(4)
    model = GPT(tiny("tda", n_kv_head=2)).eval()
    out = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=5, temperature=0)
    assert out.shape == (1, 8)
    again = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=5, temperature=0)
    assert torch.equal(out, again)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="n_kv_head"):
        GPTConfig(n_head=4, n_kv_head=3, n_embd=32)
    with pytest.raises(ValueError, match="lam_init"):
        GPTConfig(lam_init=1.0)
    with pytest.raises(ValueError, match="head_norm_eps"):
        GPTConfig(head_norm_eps=0.0)
    with pytest.raises(ValueError, match="attention must be one of"):
        GPT(tiny("nope"))
    with pytest.raises(ValueError, match="unknown model config keys"):
        GPTConfig.from_dict({"n_layers": 3})


@pytest.mark.parametrize("shape", [(24,), (3, 8)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_matches_its_formula(shape, dtype):
    """RMSNorm (torch's rms_norm inside) is x * rsqrt(mean(x^2) + eps) * gain over the last dim alone, per head
    for (H, D) gains, in fp32 whatever the input dtype; its gradients match the formula's; an all-zero row is
    zero, with finite gradients."""
    from tda.layers.common import RMSNorm
    g = torch.Generator().manual_seed(3)
    norm = RMSNorm(shape, eps=1e-4)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(shape, generator=g))
    x = (torch.randn(2, 5, *shape, generator=g) * torch.rand(2, 5, *shape[:-1], 1, generator=g) ** 3).to(dtype)
    x[0, 0] = 0
    x.requires_grad_(True)
    xd = x.detach().double().requires_grad_(True)
    ref = xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + 1e-4) * norm.weight.detach().double()
    y = norm(x)
    assert y.dtype == dtype and (y[0, 0] == 0).all()
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(y.double(), ref, **tol)
    dy = torch.randn(y.shape, generator=g).to(dtype)
    y.backward(dy)
    ref.backward(dy.double())
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(x.grad.double(), xd.grad, **tol)



@pytest.mark.parametrize("attention", ["tda", "softmax"])
def test_logits_to_keep_slices_the_logits_not_the_loss(attention):
    torch.manual_seed(0)
    model = GPT(tiny(attention)).eval()
    x = torch.randint(0, 97, (2, 12))
    y = torch.randint(0, 97, (2, 12))
    full = model(x)
    TOL = dict(rtol=1e-6, atol=1e-6)  # the same sums; only the GEMM's blocking over fewer rows differs
    torch.testing.assert_close(model(x, logits_to_keep=3), full[:, -3:], **TOL)
    torch.testing.assert_close(model(x, logits_to_keep=1), full[:, -1:], **TOL)
    torch.testing.assert_close(model(x, logits_to_keep=99), full, **TOL)  # more than N: all
    idx = torch.tensor([7, 0, 11])
    torch.testing.assert_close(model(x, logits_to_keep=idx), full[:, idx], **TOL)
    logits, loss = model(x, y)
    kept, kept_loss = model(x, y, logits_to_keep=2)
    torch.testing.assert_close(kept, logits[:, -2:], **TOL)
    torch.testing.assert_close(kept_loss, loss, **TOL)
    # a cached prefill keeping only the next token's logits
    cache = model.new_cache(2, 16)
    torch.testing.assert_close(model(x, cache=cache, logits_to_keep=1), full[:, -1:], rtol=1e-5, atol=1e-5)
    for bad in (-1, 1.5, True, torch.tensor([[1]]), torch.tensor([0.5]), torch.tensor([True])):
        with pytest.raises(ValueError, match="logits_to_keep"):
            model(x, logits_to_keep=bad)


@pytest.mark.parametrize("attention,packed", [("tda", False), ("tda", True), ("softmax", False)])
def test_activation_checkpointing_recomputes_and_keeps_the_gradients(attention, packed):
    """set_activation_checkpointing(k): every k-th block runs again in the backward (its attention is called
    twice a step), and the loss and every gradient equal the plain step's, dropout included (the recompute
    replays the RNG)."""
    torch.manual_seed(0)
    model = GPT(tiny(attention, dropout=0.1)).train()
    x, t = torch.randint(0, 97, (2, 24)), torch.randint(0, 97, (2, 24))
    kw = dict(cu_seqlens=torch.tensor([0, 7, 24, 30, 48], dtype=torch.int32), max_seqlen=18) if packed else {}
    calls = []
    for i, block in enumerate(model.blocks):
        block.attn.register_forward_hook(lambda *a, i=i: calls.append(i))

    def step():
        calls.clear()
        torch.manual_seed(1)
        _, loss = model(x, t, return_logits=False, **kw)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
        return loss.detach(), grads, sorted(calls)

    loss, grads, plain_calls = step()
    assert plain_calls == [0, 1]
    for every, recomputed in ((1, [0, 0, 1, 1]), (2, [0, 0, 1])):
        model.set_activation_checkpointing(every)
        ck_loss, ck_grads, ck_calls = step()
        assert ck_calls == recomputed
        torch.testing.assert_close(ck_loss, loss, rtol=0, atol=0)
        for n, g in grads.items():
            torch.testing.assert_close(ck_grads[n], g, rtol=1e-6, atol=1e-7, msg=n)
    model.set_activation_checkpointing(0)
    assert step()[2] == [0, 1]
    model.set_activation_checkpointing(1).eval()
    with torch.no_grad():  # no backward: nothing to recompute
        calls.clear()
        model(x)
        assert sorted(calls) == [0, 1]
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="every"):
            model.set_activation_checkpointing(bad)


@pytest.mark.parametrize("attention", ["tda", "softmax"])
def test_inputs_embeds_stand_for_the_tokens(attention):
    """inputs_embeds = the tokens' embeddings gives the tokens' logits and loss, plain, packed and through a KV
    cache; a soft prompt (embeddings of no token) changes them; bad input names the argument."""
    torch.manual_seed(0)
    model = GPT(tiny(attention)).eval()
    x, t = torch.randint(0, 97, (2, 12)), torch.randint(0, 97, (2, 12))
    e = model.wte(x).detach()
    torch.testing.assert_close(model(inputs_embeds=e), model(x), rtol=0, atol=0)
    torch.testing.assert_close(model(targets=t, inputs_embeds=e)[1], model(x, t)[1], rtol=0, atol=0)
    cu = torch.tensor([0, 5, 12, 20, 24], dtype=torch.int32)
    torch.testing.assert_close(model(inputs_embeds=e, cu_seqlens=cu, max_seqlen=8),
                               model(x, cu_seqlens=cu, max_seqlen=8), rtol=0, atol=0)
    cache = model.new_cache(2, 16)
    prefill = model(inputs_embeds=e[:, :10], cache=cache, logits_to_keep=1)
    step = model(x[:, 10:11], cache=cache)
    full = model(x)
    torch.testing.assert_close(prefill[:, 0], full[:, 9], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(step[:, 0], full[:, 10], rtol=1e-5, atol=1e-5)
    soft = e.clone()
    soft[:, :3] = torch.randn(2, 3, 32)
    assert not torch.allclose(model(inputs_embeds=soft)[:, -1], full[:, -1])
    with pytest.raises(ValueError, match="not both"):
        model(x, inputs_embeds=e)
    with pytest.raises(ValueError, match="input_ids is required"):
        model()
    with pytest.raises(ValueError, match="inputs_embeds must be"):
        model(inputs_embeds=e[..., :16])
