"""The run's length and LR schedule in steps, from steps or from a token budget (a resolve step).

`train.max_tokens` fixes the tokens a run sees across model sizes, batch sizes and rank counts: max_steps =
ceil(max_tokens / global batch tokens). Warmup and the decay phase may be fractions of the run. Giving a length
or a warmup both ways is refused, since one of them would be silently ignored.
"""

from __future__ import annotations

import math

from moe.config.loader import ConfigError
from moe.config.schema import Recipe

DEFAULT_MAX_STEPS = 200
DEFAULT_WARMUP_STEPS = 20


def derive_run_length(recipe: Recipe, ds: dict) -> None:
    """Fill train.max_steps and train.warmup_steps (after the global batch is known); check the schedule."""
    t = recipe.train
    if t.max_tokens is not None and t.max_steps is not None:
        raise ConfigError(
            f"train.max_tokens={t.max_tokens} and train.max_steps={t.max_steps} both set the run's length; "
            f"give one (set the other to null)"
        )
    if t.max_tokens is not None:
        t.max_steps = math.ceil(t.max_tokens / (ds["train_batch_size"] * recipe.data.seq_len))
    elif t.max_steps is None:
        t.max_steps = DEFAULT_MAX_STEPS
    if t.max_steps < 1:
        raise ConfigError(f"train.max_steps must be positive, got {t.max_steps}")
    if t.warmup_fraction is not None:
        if t.warmup_steps is not None:
            raise ConfigError("train.warmup_steps and train.warmup_fraction both set the warmup; give one")
        t.warmup_steps = int(t.warmup_fraction * t.max_steps)
    elif t.warmup_steps is None:
        t.warmup_steps = min(DEFAULT_WARMUP_STEPS, t.max_steps - 1)
    if not 0 <= t.warmup_steps < t.max_steps:
        raise ConfigError(f"train.warmup_steps={t.warmup_steps} must be below train.max_steps={t.max_steps}")
    if t.decay_fraction is not None and t.warmup_steps + decay_steps(t) > t.max_steps:
        raise ConfigError(
            f"train.decay_fraction={t.decay_fraction} ({decay_steps(t)} steps) and {t.warmup_steps} warmup steps "
            f"exceed train.max_steps={t.max_steps}"
        )


def decay_steps(t) -> int:
    """Steps of the cosine decay at the end of the run; all steps after warmup when decay_fraction is None."""
    if t.decay_fraction is None:
        return t.max_steps - t.warmup_steps
    return max(1, round(t.decay_fraction * t.max_steps))
