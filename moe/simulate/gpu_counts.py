"""Which layouts a GPU count allows: the counts of a table (8..4096) and the expert-parallel size that fits."""

from __future__ import annotations

import math
from functools import reduce

from moe.config import ConfigError


def parse_gpu_counts(text: str) -> list[int]:
    """'8..4096' = powers of two from 8 to 4096; '8,24,64' = those; '128' = one count."""
    try:
        if ".." in text:
            low, high = (int(x) for x in text.split(".."))
            if low < 1 or high < low:
                raise ValueError
            counts = [low]
            while counts[-1] * 2 <= high:
                counts.append(counts[-1] * 2)
            return counts
        counts = [int(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(
            f"--gpus {text!r}: give a count, a list (8,16,64) or a range of powers of two (8..4096)"
        ) from None
    if any(c < 1 for c in counts):
        raise ConfigError(f"--gpus {text!r}: counts must be positive")
    return counts


def expert_parallel_size(wanted: int, num_experts: int | list[int], dp_size: int) -> int:
    """The largest expert-parallel size <= the recipe's that divides every layer's experts and the data-parallel
    ranks: the recipe's own on a big enough cluster, smaller on a small one."""
    experts = reduce(math.gcd, num_experts) if isinstance(num_experts, list) else num_experts
    return max(e for e in range(1, wanted + 1) if experts % e == 0 and dp_size % e == 0)
