"""Deterministic, resumable, data-parallel batches over one source or a weighted mixture.

The sample stream is the concatenation of per-epoch permutations, each seeded by (seed, epoch). Global
micro-batch m covers stream positions [m*G, (m+1)*G) with G = micro_batch * dp_size, and data-parallel rank r
takes its contiguous slice. A batch is a pure function of (seed, m), so resuming at m continues exactly.
The trainer addresses batches by stream position instead (`at_sample(samples consumed)`), so a run resumed with
another data-parallel size, micro-batch or accumulation continues at the next unseen sample.

A mixture interleaves its sources by a fixed table of `BLEND_PERIOD` positions, built greedily as Megatron's
BlendedDataset builds its index (each position goes to the source furthest below its share), so every prefix of
the stream holds each source within one sample per period of its weight; each source keeps its own per-epoch
permutations. Position p is then (source s, that source's n-th sample), a pure function of p as well.
"""

from __future__ import annotations

import numpy as np
import torch

BLEND_PERIOD = 10_000
SOURCE_SEED_STRIDE = 1_000_003  # source s's permutations are seeded seed + s * stride + epoch


def blend_table(weights: list[float], period: int = BLEND_PERIOD) -> np.ndarray:
    """(period,) source of each position of one period: greedy, the source with the largest deficit first."""
    w = np.asarray(weights, dtype=np.float64) / sum(weights)
    counts = np.zeros(len(w))
    table = np.empty(period, dtype=np.int64)
    for i in range(period):
        s = int(np.argmax(w * (i + 1) - counts))
        table[i] = s
        counts[s] += 1
    return table


class _Order:
    """One source's stream order: position -> block index through per-epoch permutations."""

    def __init__(self, n: int, seed: int, shuffle: bool):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self._perms: dict[int, torch.Tensor] = {}

    def block(self, position: int) -> int:
        epoch, offset = divmod(position, self.n)
        if not self.shuffle:
            return offset
        if epoch not in self._perms:
            self._perms = {epoch: torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))}
        return int(self._perms[epoch][offset])


class BlockBatches:
    """`sources`: one block set (anything indexable by a list of rows -> (rows, seq_len) tensor) or a list of them,
    with `weights` for a mixture."""

    def __init__(
        self,
        sources,
        micro_batch: int,
        dp_rank: int,
        dp_size: int,
        seed: int,
        shuffle: bool = True,
        weights: list[float] | None = None,
    ):
        self.sources = list(sources) if isinstance(sources, (list, tuple)) else [sources]
        self.micro_batch, self.dp_rank, self.dp_size = micro_batch, dp_rank, dp_size
        self.seed, self.shuffle = seed, shuffle
        self._orders = [
            _Order(len(blocks), seed + s * SOURCE_SEED_STRIDE if s else seed, shuffle)
            for s, blocks in enumerate(self.sources)
        ]
        if len(self.sources) > 1:
            self._table = blend_table(weights or [1.0] * len(self.sources))
            one_hot = np.eye(len(self.sources), dtype=np.int64)[self._table]  # (period, sources)
            self._before = np.vstack([np.zeros(len(self.sources), np.int64), one_hot.cumsum(0)])  # (period + 1, S)

    @property
    def samples_per_micro_step(self) -> int:
        return self.micro_batch * self.dp_size

    def source_position(self, position: int) -> tuple[int, int]:
        """Stream position -> (source, that source's own stream position)."""
        if len(self.sources) == 1:
            return 0, position
        period, offset = divmod(position, BLEND_PERIOD)
        s = int(self._table[offset])
        return s, period * int(self._before[-1, s]) + int(self._before[offset, s])

    def samples_per_source(self, positions: int) -> list[int]:
        """How many of the first `positions` stream samples each source gave."""
        if len(self.sources) == 1:
            return [positions]
        period, offset = divmod(positions, BLEND_PERIOD)
        return (period * self._before[-1] + self._before[offset]).tolist()

    def batch(self, micro_step: int) -> torch.Tensor:
        """The (micro_batch, seq_len) int64 batch this rank trains on at global micro-step `micro_step`."""
        return self.at_sample(micro_step * self.samples_per_micro_step)

    def at_sample(self, position: int) -> torch.Tensor:
        """This rank's (micro_batch, seq_len) int64 slice of the global micro-batch starting at stream `position`."""
        start = position + self.dp_rank * self.micro_batch
        picks = [self.source_position(p) for p in range(start, start + self.micro_batch)]
        if len(self.sources) == 1:
            return self.sources[0][[self._orders[0].block(p) for _, p in picks]].long()
        rows = [self.sources[s][[self._orders[s].block(p)]] for s, p in picks]
        return torch.cat(rows).long()
