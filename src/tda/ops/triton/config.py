"""Kernel settings as data: `KernelConfig` (one call's tiles and kernel options) and the block table
`block_config(head_dim, dtype, n_keys, training)` that picks one for a shape.

The table was chosen on an H200 from kernel-only timings (docs/kernels.md). A training call uses one config
for its forward and its backward (they must agree on the survivor flags' grain); a call that needs no gradient
takes the inference config (no flags, no stored norms). Tests and benchmarks try another config through the
`config=` argument of `tda.ops.triton.attention.threshold_differential_attention` /
`threshold_rectified_attention`; nothing else changes a setting.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

# a section of heads as large as any grid: every head's programs start at once
ALL_HEADS = 1 << 20


def _pow2(name: str, x: int) -> None:
    if not isinstance(x, int) or x < 1 or x & (x - 1):
        raise ValueError(f"{name} must be a power of two, got {x!r}")


@dataclass(frozen=True)
class KernelConfig:
    """Tiles and options of one call's kernels.

    Forward: (block_m, block_n) query x key tiles, num_warps, num_stages, maxnreg (a register cap; 0 none),
    group (programs start in sections of this many heads, heaviest query blocks first: common.grouped_order).
    survivor_test: the forward tests every (query block, key block) pair for a surviving exceedance and skips
    the value load and product of those without one; in training it writes the survivor flags the backward
    reads. False (inference only) accumulates every visited pair with no test.
    With the survivor test: the screen tests a pair with one multiply-add per score against tau / rq before
    the exact path; unit_keys (with normalize_qk) scores the key-norm pre-pass's unit keys, rounded to the
    input dtype, in the screen and the exact path -- in training its screen lowers tau by a margin that
    covers that rounding, so the flags cover every raw-key survivor the backward finds; mask_screen screens
    the masked stage (diagonal blocks, ragged tail) too; row_screen (inference) decides the screen from
    each row's maximum; tma (with unit_keys, compute capability 9.0+) loads the unmasked stage's unit keys
    and values through tensor descriptors.
    Backward (training): flags (flag_m, flag_n), the survivor flags' grain (0: the forward block; must
    divide it); dkdv_block and dq_block the (query, key) tiles of the dK/dV and the dQ programs, which run in
    one launch with bwd_warps, bwd_stages, bwd_maxnreg and bwd_group; dkdv_lists / dq_lists: the unmasked
    stage visits a compacted list of its live blocks (list_chunk flags per vector load, at most list_row
    entries per program's scratch row) instead of testing each block's flag in the loop.
    """
    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 2
    maxnreg: int = 0
    group: int = 1
    survivor_test: bool = True
    unit_keys: bool = False
    mask_screen: bool = True
    row_screen: bool = False
    tma: bool = False
    flag_m: int = 0
    flag_n: int = 0
    dkdv_block: tuple = (64, 64)
    dq_block: tuple = (64, 64)
    bwd_warps: int = 4
    bwd_stages: int = 2
    bwd_maxnreg: int = 0
    bwd_group: int = 1
    dkdv_lists: bool = True
    dq_lists: bool = True
    list_chunk: int = 64
    list_row: int = 256

    def __post_init__(self):
        for name in ("block_m", "block_n", "list_chunk"):
            _pow2(name, getattr(self, name))
        for name, blk in (("dkdv_block", self.dkdv_block), ("dq_block", self.dq_block)):
            if len(blk) != 2:
                raise ValueError(f"{name} must be (block_m, block_n), got {blk!r}")
            for x in blk:
                _pow2(name, x)
        fm, fn = self.flags
        _pow2("flag_m", fm)
        _pow2("flag_n", fn)
        if self.block_m % fm or self.block_n % fn:
            raise ValueError(f"flags grain {(fm, fn)} must divide the forward block {(self.block_m, self.block_n)}")
        if self.list_row < 1 or self.group < 1 or self.bwd_group < 1:
            raise ValueError("list_row, group and bwd_group must be >= 1")

    @property
    def flags(self) -> tuple:
        """The survivor flags' grain (rows, keys): one flag per flag_m x flag_n tile."""
        return (self.flag_m or self.block_m, self.flag_n or self.block_n)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# Under TRITON_INTERPRET=1 (CPU tests): small tiles, so that tiny shapes span several blocks; sections of 3
# heads, so that the tests' 4-8 heads end on a short section.
INTERPRETER_CONFIG = KernelConfig(16, 16, 4, 1, group=3, dkdv_block=(16, 32), dq_block=(32, 16), bwd_stages=1,
                                  bwd_group=3)


def block_config(head_dim: int, dtype: torch.dtype, n_keys: int, training: bool) -> KernelConfig:
    """The block table: the config for head dim `head_dim`, input dtype, key length `n_keys` and whether a
    backward follows (training) or not (inference). Under the Triton interpreter, INTERPRETER_CONFIG."""
    if interpreting():
        return INTERPRETER_CONFIG
    key = (head_dim, dtype, n_keys, training)
    cfg = _TABLE_CACHE.get(key)
    if cfg is None:
        if len(_TABLE_CACHE) > 256:
            _TABLE_CACHE.clear()
        cfg = _TABLE_CACHE[key] = _table(head_dim, dtype, n_keys, training)
    return cfg


_TABLE_CACHE: dict = {}  # a call's lookup costs a dict hit, not a dataclass construction


def _table(D: int, dtype: torch.dtype, n: int, training: bool) -> KernelConfig:
    if dtype in (torch.float32, torch.float64):
        # exact (ieee) products: smaller tiles, no unit keys
        if training:
            return KernelConfig(64, 32, 4, 2, dkdv_block=(32, 64), dq_block=(64, 32))
        return KernelConfig(64, 32, 4, 2)
    # bf16 / fp16. Sections of heads in the forward's program order: every head at once up to 1K keys (their
    # keys all fit in L2), else a few heads per section so that the running programs' keys stay in L2.
    group = ALL_HEADS if n <= 1024 else 8 if D <= 64 else 4 if n <= 4096 else 2
    if D <= 64:
        # the register cap fits three 4-warp programs per SM past 1K keys; TMA loads pay past 4K keys
        cap = 168 if n > 1024 else 0
        tma = n > 4096
        if not training:
            if n <= 2048:  # short keys: most pairs hold a survivor, so no survivor test
                return KernelConfig(64, 32, 4, 3, maxnreg=cap, group=group, survivor_test=False, mask_screen=False)
            return KernelConfig(64, 64, 4, 3, maxnreg=cap, group=group, unit_keys=True, row_screen=True, tma=tma)
        if n <= 1024:
            # flags at 64 x 32, dK/dV at 64 x 64 without lists
            return KernelConfig(64, 32, 4, 3, group=group, mask_screen=False, dkdv_block=(64, 64),
                                dq_block=(64, 32), dkdv_lists=False, dq_lists=False)
        if n <= 4096:
            # flags at 64 x 32 with backward blocks to match skip more of the denser rows; the backward's
            # 64 x 32 programs capped too (three per SM); the masked stage unscreened (its screen measured
            # slower with the register cap)
            return KernelConfig(64, 64, 4, 3, maxnreg=cap, group=group, mask_screen=False, flag_m=64, flag_n=32,
                                dkdv_block=(64, 32), dq_block=(64, 32), bwd_maxnreg=168)
        return KernelConfig(64, 64, 4, 3, maxnreg=cap, group=group, unit_keys=True, tma=tma)
    # head dim 128
    if not training:
        if n <= 2048:
            return KernelConfig(128, 64, 8, 3, group=group, survivor_test=False, mask_screen=False)
        # 4 stages past 2K keys (the training forward keeps 3)
        return KernelConfig(128, 64, 8, 4, group=group, unit_keys=True, row_screen=True)
    if n <= 4096:
        return KernelConfig(64, 32, 4, 3, group=group, dkdv_block=(64, 32), dq_block=(64, 32))
    return KernelConfig(128, 64, 8, 3, group=group, unit_keys=True, flag_m=32, flag_n=32, dkdv_block=(64, 32),
                        dq_block=(64, 32))
