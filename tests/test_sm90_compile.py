"""Every kernel of the GPU block table compiles for sm_90 (H100/H200) with this machine's Triton, through
Triton's bundled ptxas: no GPU needed. The interpreter tests check what the kernels compute; this checks
that Triton can lower them for real (layouts, shared memory) -- which the interpreter never tries.

Runs in a subprocess with TRITON_INTERPRET unset (under the interpreter @triton.jit builds no compilable
kernels)."""
import pytest

from conftest import has_ptxas, run_compiled

pytest.importorskip("triton")

SMEM_LIMIT = 232448  # bytes of shared memory one block may use on sm_90 (227 KiB)

CODE = """
import json
from tda.ops.triton import sm90
res = {}
for name, fn, consts, warps, stages in sm90.table_variants(full=True):
    res[name] = sm90.resource_usage(sm90.compile_kernel(fn, consts, warps, stages))
print("RESULT " + json.dumps(res))
"""


@pytest.mark.skipif(not has_ptxas(), reason="this Triton build ships no ptxas (no NVIDIA backend)")
def test_gpu_table_compiles_for_sm90():
    res = run_compiled(CODE)
    # d 64 / 128 x 1K, 4K, 16K keys x (training forward, inference forward, backward)
    assert len(res) == 18, sorted(res)
    for name, r in res.items():
        assert 0 < r["shared"] <= SMEM_LIMIT, (name, r)
        assert r["regs"] is None or r["regs"] <= 255, (name, r)
        # the table's register caps reached the compile: the d 64 forward past 1K keys, the backward at 4K
        if name in ("fwd-train-d64-4k", "fwd-infer-d64-4k", "fwd-train-d64-16k", "fwd-infer-d64-16k", "bwd-d64-4k"):
            assert r["regs"] is None or r["regs"] <= 168, (name, r)
    print("\n".join(f"{n}: {r}" for n, r in sorted(res.items())))  # registers / spills, with pytest -s


VARLEN_CODE = """
import json
from tda.ops.triton import sm90
res = {}
for name, fn, consts, warps, stages in sm90.varlen_variants():
    res[name] = sm90.resource_usage(sm90.compile_kernel(fn, consts, warps, stages))
print("RESULT " + json.dumps(res))
"""


@pytest.mark.skipif(not has_ptxas(), reason="this Triton build ships no ptxas (no NVIDIA backend)")
def test_packed_document_kernels_compile_for_sm90():
    """The kernels with the document table (VARLEN: per-program lengths and offsets, early exit past a
    document's end) lower for sm_90 too, within the same shared-memory and register limits."""
    res = run_compiled(VARLEN_CODE)
    assert len(res) == 6, sorted(res)
    for name, r in res.items():
        assert 0 < r["shared"] <= SMEM_LIMIT, (name, r)
        assert r["regs"] is None or r["regs"] <= 255, (name, r)
    print("\n".join(f"{n}: {r}" for n, r in sorted(res.items())))
