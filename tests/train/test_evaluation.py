"""The validation pass covers its configured set whatever the ranks and the micro-batch, with the right standard
error."""

import math

import numpy as np
import pytest
import torch

from moe.train.evaluation import EvalResult, EvalSet, eval_rows, row_losses


@pytest.mark.parametrize(("dp_size", "micro_batch"), [(1, 4), (2, 4), (2, 7), (3, 5), (4, 16)])
def test_every_block_is_scored_once_whatever_the_layout(dp_size, micro_batch):
    blocks = torch.arange(41).view(41, 1)
    eval_set = EvalSet.of(blocks, 0)
    per_rank = [list(eval_set.micro_batches(micro_batch, r, dp_size)) for r in range(dp_size)]
    assert len({len(batches) for batches in per_rank}) == 1  # the same number of forwards on every rank
    scored = [int(i) for batches in per_rank for ids, w in batches for i, wi in zip(ids[:, 0], w) if wi]
    assert sorted(scored) == list(range(41))
    assert all(ids.shape == (micro_batch, 1) for batches in per_rank for ids, _ in batches)


def test_a_sample_is_fixed_and_the_same_in_every_run():
    assert np.array_equal(eval_rows(1000, 100), eval_rows(1000, 100))
    assert len(set(eval_rows(1000, 100).tolist())) == 100
    assert np.array_equal(eval_rows(50, 100), np.arange(50))  # larger than the split: the whole split


def test_standard_error_and_row_losses():
    losses = np.array([1.0, 2.0, 4.0, 5.0])
    r = EvalResult.from_sums(losses.sum(), (losses**2).sum(), len(losses))
    assert r.loss == 3.0 and r.stderr == pytest.approx(losses.std(ddof=1) / math.sqrt(4))
    logits, ids = torch.randn(3, 5, 11), torch.randint(0, 11, (3, 5))
    expect = [torch.nn.functional.cross_entropy(logits[b, :-1], ids[b, 1:]) for b in range(3)]
    assert torch.allclose(row_losses(logits, ids), torch.stack(expect))


@pytest.mark.parametrize(("dp_size", "micro_batch"), [(1, 4), (2, 7), (3, 5)])
def test_positions_place_each_ranks_blocks_in_the_sets_order(dp_size, micro_batch):
    blocks = torch.arange(100).view(100, 1) * 10
    eval_set = EvalSet.of(blocks, 37)  # a fixed sample: the order is the sample's, not the split's
    placed = np.full(len(eval_set.rows), -1)
    for rank in range(dp_size):
        scored = [
            int(i) for ids, w in eval_set.micro_batches(micro_batch, rank, dp_size) for i in ids[: int(w.sum()), 0]
        ]
        placed[eval_set.positions(rank, dp_size)] = scored
    assert np.array_equal(placed, eval_set.rows * 10)  # every position filled once, with its own block
