"""The GPU check's estimator for dbeta/dlam (benchmarks/check_kernels.py): its reordered evaluations of the
reference must be the same gradients mathematically (one permutation for q and k, another for v and dO), or
the averaged error it compares against would be inflated and the check loosened without anyone noticing."""
import os
import random
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import check_kernels as ck  # noqa: E402


@pytest.fixture(autouse=True)
def _cpu(monkeypatch):
    monkeypatch.setattr(ck, "DEV", "cpu")


def _config(two, scalar):
    return dict(dtype="fp32", D=16, p=2.0, two=two, B=1, H=2, Hk=1, M=33, N=40, causal=True, offset=7,
                kappa=1.0, beta_scale=0.5, noncontig=False, scalar_params=scalar, normalize=True)


@pytest.mark.parametrize("two,scalar", [(True, True), (True, False), (False, True)])
def test_reordered_reference_is_the_same_gradient(two, scalar):
    c = _config(two, scalar)
    t, dout, _ = ck.make_inputs(c, torch.Generator().manual_seed(5))
    ref64 = ck.run(c, t, dout, "ref64", "reference")
    names = [k for k in ck.SCALAR_GRADS if k in ref64]
    assert names == (["dbeta", "dlam"] if two else ["dbeta"])
    for seed in (1, 2):
        # in float64 a reordering moves the scalar gradients by rounding only
        r64 = ck.reordered(c, t, dout, "ref64", seed)
        for k in names:
            torch.testing.assert_close(r64[k], ref64[k], rtol=1e-10, atol=1e-12)
        # in fp32 by the fp32 sums' rounding: an error of the plain evaluation's order, never a wrong value
        r32 = ck.reordered(c, t, dout, torch.float32, seed)
        for k in names:
            assert (r32[k] - ref64[k]).abs().max() <= 1e-4 * ref64[k].abs().max() + 1e-6


def test_a_wrong_permutation_would_show():
    """The control: permuting q and k by different permutations changes dbeta by far more than rounding,
    so the test above can fail."""
    c = _config(True, True)
    t, dout, _ = ck.make_inputs(c, torch.Generator().manual_seed(5))
    ref64 = ck.run(c, t, dout, "ref64", "reference")
    g = torch.Generator().manual_seed(3)
    bad = dict(t, k1=t["k1"][..., torch.randperm(c["D"], generator=g)])
    wrong = ck.run(c, bad, dout, "ref64", "reference")
    assert (wrong["dbeta"] - ref64["dbeta"]).abs().max() > 1e-3 * ref64["dbeta"].abs().max()


def test_random_configs_are_valid_calls_and_reach_the_table_rows(monkeypatch):
    """The drawn configurations satisfy the causal length rule (N_q <= N_k <= N_q + position_offset), and
    configs_for hands the kernel the block table's training and inference rows of the drawn key length
    (the check's short sequences would reach only the short-key rows)."""
    rng = random.Random(0)
    cs = [ck.random_config(rng) for _ in range(300)]
    assert all(c["M"] <= c["N"] <= c["M"] + c["offset"] for c in cs if c["causal"])
    assert {c["table_length"] for c in cs} == set(ck.TABLE_LENGTHS)
    monkeypatch.setattr(ck.kc, "interpreting", lambda: False)  # the GPU table
    c = next(c for c in cs if c["table_length"] == 16384 and not c["list_row"] and c["dtype"] != "fp32")
    train, infer = ck.configs_for(c)
    dt = ck.DTYPES[c["dtype"]]
    assert train == ck.kc.block_config(c["D"], dt, 16384, True) != ck.kc.block_config(c["D"], dt, 1024, True)
    assert infer == ck.kc.block_config(c["D"], dt, 16384, False) and infer.survivor_test
    c = next(c for c in cs if c["list_row"])
    assert ck.configs_for(c)[0].list_row == c["list_row"]
    assert ck.configs_for(dict(c, table_length=None, list_row=None)) == (None, None)
