"""A launch cache: kernel launches with less host work per call than Triton's JIT dispatch.

`kernel[grid](*args, **meta)` through Triton's JITFunction binds every argument, computes its
specialisation and a cache key, and looks the compiled kernel up, on every call: tens of microseconds on
the host per launch, which at short sequence lengths is longer than the kernels themselves run (see
docs/kernels.md). `FastKernel` wraps a @triton.jit function with the same call syntax: the first call
for a given specialisation goes through Triton's JIT (which compiles if needed, launches, and returns its
CompiledKernel); later calls launch that CompiledKernel directly. The key covers everything Triton
specialises on -- the device, the keyword arguments (constexprs, num_warps, num_stages), each tensor's
dtype and 16-byte alignment, each specialised integer (the strides) by value, and each unspecialised
integer's 32-bit range -- so a call never reuses a kernel compiled under other assumptions.

Off under TRITON_INTERPRET=1 (the interpreter has no compiled kernels) or with TDA_FAST_LAUNCH=0; if a
direct launch is refused (a Triton version whose launcher takes other arguments), the wrapper warns once
and falls back to the JIT for good.
"""
import os
import warnings
from operator import itemgetter

import torch
import triton

ENABLED = os.environ.get("TDA_FAST_LAUNCH", "1") != "0"
_I32_MIN, _I32_MAX = -(2 ** 31), 2 ** 31 - 1


class FastKernel:
    """kernel[grid](*runtime_args, **constexprs_and_options) with a per-specialisation launch cache.
    Runtime (non-constexpr) parameters must be passed positionally, constexprs by keyword."""

    def __init__(self, fn):
        self.fn = fn
        self.cache: dict = {}
        self._sig = None  # see _signature, on first use
        self.direct_launches = 0  # launches that bypassed the JIT (benchmarks/check_kernels.py reports them)

    def __getitem__(self, grid):
        return lambda *args, **kw: self._launch(grid, args, kw)

    def _signature(self, args):
        """From the first call: the runtime parameters' types, which of them are tensors / specialised ints /
        unspecialised ints (index getters), and the constexpr names in parameter order."""
        params = self.fn.params
        n_rt = sum(not p.is_constexpr for p in params)
        if any(p.is_constexpr for p in params[:n_rt]):
            raise TypeError(f"{self.fn.__name__}: FastKernel needs the constexpr parameters last")
        types = tuple(map(type, args))
        t_idx = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
        s_idx = [i for i, a in enumerate(args) if type(a) is int and not params[i].do_not_specialize]
        d_idx = [i for i, a in enumerate(args) if type(a) is int and params[i].do_not_specialize]
        pick = lambda idx: (lambda a: tuple(a[i] for i in idx)) if len(idx) < 2 else itemgetter(*idx)  # noqa: E731
        return n_rt, types, pick(t_idx), pick(s_idx), pick(d_idx), tuple(p.name for p in params[n_rt:])

    def key(self, args, kw):
        """What Triton's specialisation of this call depends on (a superset of it: specialised integers,
        i.e. strides, by value), or None when the argument types differ from the first call's."""
        _, types, get_t, get_s, get_d, _ = self._sig
        if tuple(map(type, args)) != types:
            return None
        ts = get_t(args)
        return (ts[0].device.index, tuple(kw.items()), tuple([t.dtype for t in ts]),
                tuple([t.data_ptr() & 15 == 0 for t in ts]), get_s(args),
                tuple([_I32_MIN <= a <= _I32_MAX for a in get_d(args)]))

    def lookup(self, args, kw):
        """(key, the cached CompiledKernel or None): the launch cache's host work before a launch."""
        if self._sig is None:
            self._sig = self._signature(args)
        if len(args) != self._sig[0]:
            raise TypeError(f"{self.fn.__name__}: expected {self._sig[0]} positional (runtime) arguments, "
                            f"got {len(args)}")
        key = self.key(args, kw)
        return key, (self.cache.get(key) if key is not None else None)

    def _launch(self, grid, args, kw):
        global ENABLED
        if not ENABLED or os.environ.get("TRITON_INTERPRET", "0") == "1":
            return self.fn[grid](*args, **kw)
        key, compiled = self.lookup(args, kw)
        if compiled is None:  # Triton's JIT: compiles (or finds) the kernel, launches it, returns it
            compiled = self.fn[grid](*args, **kw)
            if key is None:
                return compiled
            if len(self.cache) >= 256:
                self.cache.clear()
            self.cache[key] = compiled
            return compiled
        stream = triton.runtime.driver.active.get_current_stream(key[0])
        g3 = (grid[0], grid[1] if len(grid) > 1 else 1, grid[2] if len(grid) > 2 else 1)  # the runner indexes 3
        try:
            compiled[g3](*args, *[kw[n] for n in self._sig[5]], stream=stream)
            self.direct_launches += 1
        except (TypeError, ValueError, SystemError) as e:  # the launcher refused the argument list
            ENABLED = False
            warnings.warn(f"tda: direct Triton launches disabled ({type(e).__name__}: {e}); using the JIT")
            return self.fn[grid](*args, **kw)
        return compiled
