"""Linear warmup, an optional constant phase (train.decay_fraction), then cosine decay, as a torch LambdaLR handed
to deepspeed.initialize.

Not DeepSpeed's WarmupCosineLR: that one runs the first two optimizer steps at lr=0 (it starts at
iteration -1 and its linear warmup ratio at iteration 0 is 0). Here step 0 already trains at lr/warmup.
DeepSpeed still saves and restores this scheduler's state with every checkpoint.
"""

from __future__ import annotations

import math
from functools import partial

from torch.optim.lr_scheduler import LambdaLR

from moe.config.budget import decay_steps


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float, decay: int | None = None) -> float:
    """LR multiplier for 0-based optimizer step `step`: linear warmup, constant, then cosine over the last `decay`
    steps (None: every step after warmup, no constant phase)."""
    if step < warmup:
        return (step + 1) / warmup
    decay = total - warmup if decay is None else decay
    progress = min(1.0, max(0, step - (total - decay)) / max(1, decay))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer, train_cfg) -> LambdaLR:
    return LambdaLR(
        optimizer,
        partial(
            warmup_cosine,
            warmup=train_cfg.warmup_steps,
            total=train_cfg.max_steps,
            min_ratio=train_cfg.min_lr_ratio,
            decay=decay_steps(train_cfg),
        ),
    )
