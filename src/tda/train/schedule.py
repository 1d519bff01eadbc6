"""Learning-rate schedule: linear warm-up, then cosine decay to min_lr."""
from __future__ import annotations

import math


def lr_at(step: int, *, lr: float, min_lr: float, warmup_steps: int, decay_steps: int) -> float:
    """lr(step) for the 0-based optimiser step.

    warm-up:  lr * (step + 1) / warmup_steps                       for step < warmup_steps
    cosine:   min_lr + (lr - min_lr) * (1 + cos(pi * t)) / 2,  t = (step - warmup) / (decay - warmup)
    after decay_steps: min_lr.
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if step >= decay_steps:
        return min_lr
    t = (step - warmup_steps) / max(1, decay_steps - warmup_steps)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))
