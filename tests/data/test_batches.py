"""A run resumed with another data-parallel size or batch shape continues the sample stream where it stopped."""

import torch

from moe.data import BlockBatches


def test_at_sample_continues_the_stream_across_dp_size_and_micro_batch():
    blocks = torch.arange(50).repeat_interleave(4).view(50, 4)
    two_ranks = [BlockBatches(blocks, micro_batch=3, dp_rank=r, dp_size=2, seed=5) for r in range(2)]
    # 2 ranks x 3 sequences per micro-step, 10 micro-steps: 60 samples, into the second epoch's permutation
    stream = torch.cat([two_ranks[r].batch(m)[:, 0] for m in range(10) for r in range(2)])  # (60,)
    consumed = 18  # the 2-rank run stopped after 3 micro-steps
    one_rank = BlockBatches(blocks, micro_batch=7, dp_rank=0, dp_size=1, seed=5)
    resumed = torch.cat([one_rank.at_sample(consumed + 7 * k)[:, 0] for k in range(6)])  # (42,)
    assert torch.equal(resumed, stream[consumed : consumed + 42])
    assert torch.equal(two_ranks[1].at_sample(consumed), two_ranks[1].batch(3))  # the same addressing
