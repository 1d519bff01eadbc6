"""The launch cache's key (tda.ops.triton.launch_cache): a cached compiled kernel may only be reused by calls that
Triton would have specialised the same way. The direct launches themselves need a GPU (benchmarks/
check_kernels.py runs every configuration through them); here, the key on CPU tensors."""
import pytest
import torch

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")
from triton.runtime.jit import JITFunction  # noqa: E402

from tda.ops.triton.launch import FastKernel  # noqa: E402


def _kernel(X, Y, s_x, n, p_val, BLOCK: tl.constexpr, FLAG: tl.constexpr):
    pass


def _fast():
    # a real JITFunction (not the interpreter's wrapper, which has no parameter list)
    fk = FastKernel(JITFunction(_kernel, do_not_specialize=["n", "p_val"]))
    return fk


def _key(fk, args, **kw):
    if fk._sig is None:
        fk._sig = fk._signature(args)
    return fk.key(args, kw)


def test_key_separates_what_triton_specialises_on():
    fk = _fast()
    x, y = torch.randn(64, 16), torch.randn(64, 16)
    base = _key(fk, (x, y, 16, 100, 2.0), BLOCK=32, FLAG=True, num_warps=4)
    # fresh tensors of the same kind, other unspecialised values: the same key (a cache hit)
    assert _key(fk, (torch.randn(64, 16), torch.randn(64, 16), 16, 7, 3.0), BLOCK=32, FLAG=True,
                num_warps=4) == base
    others = [
        ((x.double(), y, 16, 100, 2.0), dict(BLOCK=32, FLAG=True, num_warps=4)),        # dtype
        ((x.view(-1)[1:].view(-1)[:1008].view(63, 16), y, 16, 100, 2.0),                  # 4-byte aligned only
         dict(BLOCK=32, FLAG=True, num_warps=4)),
        ((x, y, 1, 100, 2.0), dict(BLOCK=32, FLAG=True, num_warps=4)),                   # stride == 1
        ((x, y, 24, 100, 2.0), dict(BLOCK=32, FLAG=True, num_warps=4)),                  # stride % 16 != 0
        ((x, y, 16, 2 ** 31, 2.0), dict(BLOCK=32, FLAG=True, num_warps=4)),              # needs int64
        ((x, y, 16, 100, 2.0), dict(BLOCK=64, FLAG=True, num_warps=4)),                  # a constexpr
        ((x, y, 16, 100, 2.0), dict(BLOCK=32, FLAG=True, num_warps=8)),                  # an option
    ]
    keys = [_key(fk, a, **kw) for a, kw in others]
    assert all(k is not None and k != base for k in keys)
    assert len(set(keys)) == len(keys)
    assert keys[1][3][0] is False  # the misaligned pointer is recorded as such


def test_key_none_when_argument_types_change():
    fk = _fast()
    x = torch.randn(8, 16)
    _key(fk, (x, x, 16, 5, 2.0), BLOCK=16, FLAG=False)
    assert fk.key((x, x, 16, 5, 2), dict(BLOCK=16, FLAG=False)) is None  # p_val an int now


def test_constexpr_parameters_must_come_last():
    def bad(X, BLOCK: tl.constexpr, n):
        pass
    fk = FastKernel(JITFunction(bad))
    with pytest.raises(TypeError, match="constexpr parameters last"):
        fk._signature((torch.randn(4), 3))
