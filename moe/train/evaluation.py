"""Validation that measures: the same blocks in every run, whatever the ranks and the micro-batch, with a standard
error next to the mean.

An `EvalSet` is the whole validation split or a fixed sample of it (seeded by `EVAL_SAMPLE_SEED`, a data setting,
not the run's seed, so every run of a sweep scores the same blocks). Its blocks are dealt round-robin over the
data-parallel ranks; every rank runs the same number of forwards (expert-parallel all-to-alls and ZeRO-3 gathers
need all of them), and a rank whose share runs out fills its last micro-batch with weight-0 rows. Each block's
loss is the mean next-token cross-entropy of its positions, so the pass's mean is over blocks and its standard
error is std(block losses) / sqrt(blocks), from one all-reduce of (sum, sum of squares, count). The block losses
themselves come back too (one all-reduce of the set's length), in the set's order, so two runs can be compared
block by block: a paired difference has a far smaller standard error than either run's mean
(benchmarks/moe_vs_dense.py).

A pipeline engine returns one loss per micro-batch, already averaged over data-parallel ranks, so under a pipeline
the set is cut to whole global micro-batches and the standard error comes from the micro-batch means
(std(micro-batch means) / sqrt(micro-batches)), which estimates the same quantity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

EVAL_SAMPLE_SEED = 20_240_607


def eval_rows(n_blocks: int, count: int) -> np.ndarray:
    """The block indices a pass scores: all of them (count 0 or >= n_blocks), or a fixed sorted sample."""
    if not count or count >= n_blocks:
        return np.arange(n_blocks, dtype=np.int64)
    rng = np.random.default_rng(EVAL_SAMPLE_SEED)
    return np.sort(rng.choice(n_blocks, size=count, replace=False))


@dataclass
class EvalSet:
    blocks: object  # indexable by a list of rows -> (rows, seq_len) int64
    rows: np.ndarray  # (N,) block indices

    @classmethod
    def of(cls, blocks, count: int) -> EvalSet:
        return cls(blocks, eval_rows(len(blocks), count))

    def micro_batches(self, micro_batch: int, dp_rank: int, dp_size: int, whole_batches: bool = False):
        """This rank's (ids (B, T) int64, weights (B,) float) micro-batches; the same count on every rank."""
        rows = self.rows
        if whole_batches:
            rows = rows[: len(rows) // (micro_batch * dp_size) * micro_batch * dp_size]
        mine = rows[dp_rank::dp_size]
        per_rank = math.ceil(len(rows) / dp_size)
        for start in range(0, per_rank, micro_batch):
            take = mine[start : start + micro_batch]
            weights = torch.zeros(micro_batch)
            weights[: len(take)] = 1.0
            filler = np.full(micro_batch - len(take), rows[0], dtype=np.int64)
            yield self.blocks[np.concatenate([take, filler]).tolist()].long(), weights

    def positions(self, dp_rank: int, dp_size: int) -> np.ndarray:
        """Where this rank's scored blocks sit in `rows`, in the order micro_batches yields them (weight-1 rows)."""
        return np.arange(dp_rank, len(self.rows), dp_size)


def row_losses(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """logits (B, T, V), ids (B, T) -> (B,) fp32 mean next-token cross-entropy of each row, one row at a time (no
    (B, T, V) fp32 copy)."""
    return torch.stack([torch.nn.functional.cross_entropy(logits[b, :-1].float(), ids[b, 1:]) for b in range(len(ids))])


@dataclass
class EvalResult:
    loss: float
    stderr: float
    blocks: int
    block_losses: np.ndarray | None = None  # (blocks,) fp32, in the set's order; None under a pipeline

    @classmethod
    def from_sums(cls, total: float, squares: float, count: float, block_losses=None) -> EvalResult:
        mean = total / count
        variance = max(squares / count - mean * mean, 0.0) * count / max(count - 1, 1)
        return cls(mean, math.sqrt(variance / count), round(count), block_losses)
