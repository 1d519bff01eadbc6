"""The benchmark's trained inputs (benchmarks/trained_inputs.py): what it records must be exactly what each
TDA layer hands the op, stacked layer by layer with each layer's own beta and lam, from real token windows."""
import json
import os
import sys

import numpy as np
import pytest
import torch

from tda.models.config import GPTConfig
from tda.models.gpt import GPT
from tda.ops import threshold_differential_attention

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import trained_inputs as ti  # noqa: E402


def _model(n_head=2):
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=128, block_size=32, n_layer=4, n_head=n_head, n_embd=32, attention="tda")).eval()
    with torch.no_grad():  # trained-looking per-head parameters, different in every layer
        for i, b in enumerate(m.blocks):
            b.attn.beta.copy_(torch.rand(n_head) + 0.5 + i)
            b.attn.lam_logit.copy_(torch.randn(n_head))
    return m


def test_capture_records_the_ops_inputs_and_stacks_layers():
    m = _model()
    ids = torch.randint(0, 128, (2, 40))
    outs = []
    hooks = [b.attn.register_forward_hook(lambda mod, a, o: outs.append(o)) for b in m.blocks]
    got = ti.capture(m, ids, dtype=torch.float32)
    for h in hooks:
        h.remove()
    assert len(got) == 4 and not any("_op" in vars(b.attn) for b in m.blocks)  # the layers' own _op again
    for L, (g, block) in enumerate(zip(got, m.blocks)):
        assert g["q1"].shape == (2, 2, 40, 16) and g["v"].shape == (2, 2, 40, 16)
        assert torch.equal(g["beta"], block.attn.beta.detach()) and torch.equal(g["lam"], block.attn.lam.detach())
        # the op on the recorded inputs is the layer's attention: through head norm and projection, its output
        y = threshold_differential_attention(g["q1"], g["k1"], g["q2"], g["k2"], g["v"], g["beta"], g["lam"],
                                             causal=True, backend="reference")
        y = block.attn.head_norm(y.transpose(1, 2))
        torch.testing.assert_close(block.attn.c_proj(y.reshape(2, 40, -1)), outs[L])
    groups = ti.heads_for_bench(got, 4)
    assert [L for L, _ in groups] == [0, 2]
    q1, k1, q2, k2, v, beta, lam = groups[1][1]
    assert q1.shape == (2, 4, 40, 16) and q1.is_contiguous()
    assert torch.equal(q1[:, 2:], got[3]["q1"]) and torch.equal(beta[:2], got[2]["beta"])
    assert torch.equal(lam[2:], got[3]["lam"])
    with pytest.raises(ValueError, match="cannot stack"):
        ti.heads_for_bench(got, 3)


def test_token_batch_reads_real_windows(tmp_path):
    val = np.arange(1000, dtype=np.uint16)
    val.tofile(tmp_path / "val.bin")
    (tmp_path / "long").mkdir()
    docs = [np.arange(5000, 5000 + n, dtype=np.uint16) for n in (3000, 2500, 900)]
    index = []
    for i, d in enumerate(docs):
        d.tofile(tmp_path / "long" / f"{i}.bin")
        index.append({"file": f"{i}.bin", "source": "s", "name": f"d{i}", "tokens": len(d)})
    (tmp_path / "long" / "index.json").write_text(json.dumps(index))
    (tmp_path / "meta.json").write_text(json.dumps({"dtype": "uint16"}))
    ids = ti.token_batch(tmp_path, 100, 3)  # validation windows, evenly spaced
    assert ids.dtype == torch.int64 and ids[:, 0].tolist() == [0, 333, 666] and ids[0, -1] == 99
    ids = ti.token_batch(tmp_path, 2048, 2)  # the longest documents holding >= N
    assert ids.shape == (2, 2048) and (ids[:, 0] == 5000).all()
    with pytest.raises(ValueError, match="only 2 held-out documents"):
        ti.token_batch(tmp_path, 2048, 3)
    with pytest.raises(ValueError, match="validation split holds only 1000"):
        ti.token_batch(tmp_path, 1024, 1)
