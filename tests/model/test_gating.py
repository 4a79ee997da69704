"""DeepSpeed's gating functions (what moe.impl=deepspeed routes with) against hand-computed values.

Tiny fixed logits (4-16 tokens, 3-4 experts): combine weights, dispatch mask, dropped tokens, and DeepSpeed's
capacity formula capacity = max(ceil(tokens / E * capacity_factor * k'), min_capacity), where k' = 1 for top-1,
2 for top-2 and k for top-k (sharded_moe._capacity with capacity_factor * 2 or * k).
"""

import math

import pytest
import torch
from deepspeed.moe.sharded_moe import top1gating, top2gating, topkgating


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def test_top1_weights_are_the_raw_probability_and_capacity_drops_the_overflow():
    # 6 tokens, 3 experts; first choices 0, 0, 0, 1, 0, 2. capacity = max(ceil(6 / 3 * 1.0), 0) = 2.
    logits = torch.tensor([[2.0, 0, 0], [2.0, 0, 0], [2.0, 0, 0], [0.0, 1, 0], [2.0, 0, 0], [0.0, 0, 3]])
    l_aux, combine, dispatch, counts = top1gating(logits, capacity_factor=1.0, min_capacity=0, use_rts=False)
    assert combine.shape == (6, 3, 2)
    assert counts.tolist() == [4, 1, 1]  # routes requested, before the capacity limit
    kept = dispatch.any(dim=2)  # (S, E)
    assert kept[:, 0].sum() == 2 and kept[:, 1].tolist() == [0, 0, 0, 1, 0, 0] and kept[5, 2]
    assert not kept[[0, 1, 2, 4]][:, 1:].any()  # an overflowing expert-0 token goes nowhere else
    p_e0 = math.exp(2) / (math.exp(2) + 2)
    for token in kept[:, 0].nonzero().flatten().tolist():
        assert combine[token, 0].sum() == pytest.approx(p_e0)
    assert combine[3, 1, 0] == pytest.approx(math.e / (math.e + 2))  # first slot of expert 1
    assert combine[5, 2, 0] == pytest.approx(math.exp(3) / (math.exp(3) + 2))
    assert torch.equal(dispatch, combine > 0)
    # slots: the kept expert-0 tokens fill slots 0 and 1
    assert sorted(dispatch[:, 0].nonzero()[:, 1].tolist()) == [0, 1]
    # l_aux = E * sum_e mean_prob_e * fraction_of_tokens_e
    me = torch.softmax(logits, dim=1).mean(0)
    assert float(l_aux) == pytest.approx(float(3 * (me * torch.tensor([4, 1, 1]) / 6).sum()), rel=1e-6)


def test_top2_renormalizes_over_the_kept_pair_and_drops_by_position():
    # 4 tokens, 3 experts; every first choice is expert 0. capacity = ceil(4 / 3 * 1.0 * 2) = 3, so token 3's
    # first route (slot 3) is dropped; second choices 1, 1, 2, 1 fit (slots after expert 1's first routes: none).
    logits = torch.tensor([[3.0, 1, 0], [3.0, 1, 0], [3.0, 0, 1], [3.0, 1, 0]])
    l_aux, combine, dispatch, counts = top2gating(
        logits.clone(), capacity_factor=1.0, min_capacity=0, top2_2nd_expert_sampling=False
    )
    assert combine.shape == (4, 3, 3) and counts.tolist() == [4, 3, 1]
    first, second = sigmoid(2.0), sigmoid(-2.0)  # e^3 / (e^3 + e^1) and e^1 / (e^3 + e^1)
    expected = torch.zeros(4, 3, 3)
    expected[0, 0, 0], expected[0, 1, 0] = first, second
    expected[1, 0, 1], expected[1, 1, 1] = first, second
    expected[2, 0, 2], expected[2, 2, 0] = first, second
    expected[3, 1, 2] = 1.0  # first route dropped: the kept second route carries the whole weight
    torch.testing.assert_close(combine, expected)
    assert torch.equal(dispatch, expected > 0)
    # top-2 l_aux: E^2 * mean_e(mean_prob_e * first-choice fraction_e)
    me = torch.softmax(logits, dim=1).mean(0)
    assert float(l_aux) == pytest.approx(float(9 * (me * torch.tensor([1.0, 0, 0])).mean()), rel=1e-6)


def test_top3_renormalizes_over_three_and_drops_the_lowest_probability_route():
    # 5 tokens, 4 experts, k=3; every token ranks expert 0 first. capacity = ceil(5 / 4 * 1.0 * 3) = 4, so expert 0
    # keeps its 4 highest-probability tokens ("probs" policy): token 4, whose expert-0 logit is lowest, loses it.
    logits = torch.tensor([[4.0, 2, 1, 0], [4.0, 1, 2, 0], [4.0, 2, 0, 1], [4.0, 0, 1, 2], [2.5, 2, 1, 0]])
    l_aux, combine, dispatch, counts = topkgating(logits, k=3, capacity_factor=1.0, min_capacity=0)
    assert combine.shape[2] == 4
    assert counts.tolist() == [5, 4, 4, 2]
    kept = dispatch.any(dim=2)
    assert kept.sum(dim=1).tolist() == [3, 3, 3, 3, 2] and not kept[4, 0]
    p = torch.softmax(logits, dim=1)
    token0 = p[0, :3] / p[0, :3].sum()
    torch.testing.assert_close(combine[0].sum(dim=1)[:3], token0)
    token4 = p[4, 1:3] / p[4, 1:3].sum()  # renormalized over the two routes it kept
    torch.testing.assert_close(combine[4].sum(dim=1), torch.cat([torch.zeros(1), token4, torch.zeros(1)]))
    assert float(l_aux) == pytest.approx(
        float((p.mean(0) * torch.tensor([5.0, 4, 4, 2]) / 5).mean() * 16 / 3), rel=1e-6
    )


def collapsed_logits(tokens: int, experts: int) -> torch.Tensor:
    """Every token ranks the experts 0 > 1 > 2 > ...: the worst case for capacity."""
    return torch.arange(experts, 0, -1, dtype=torch.float32).repeat(tokens, 1)  # (S, E)


def capacity_formula(tokens: int, experts: int, capacity_factor: float, k: int, min_capacity: int) -> int:
    return max(math.ceil(tokens / experts * capacity_factor * k), min_capacity)


@pytest.mark.parametrize(
    "k, tokens, experts, capacity_factor, min_capacity",
    [
        (1, 16, 4, 1.0, 0),
        (1, 6, 4, 1.5, 0),
        (1, 6, 4, 1.0, 4),
        (1, 8, 4, 0.5, 1),
        (2, 6, 4, 1.0, 0),
        (2, 6, 4, 1.25, 0),
        (2, 4, 4, 0.5, 3),
        (3, 10, 8, 1.0, 0),
        (3, 6, 4, 0.5, 0),
    ],
)
def test_capacity_and_drop_counts_follow_deepspeeds_formula(k, tokens, experts, capacity_factor, min_capacity):
    logits = collapsed_logits(tokens, experts)
    if k == 1:
        out = top1gating(logits, capacity_factor, min_capacity, use_rts=False, sparse_routes=True)
    elif k == 2:
        out = top2gating(
            logits.clone(), capacity_factor, min_capacity, top2_2nd_expert_sampling=False, sparse_routes=True
        )
    else:
        out = topkgating(logits, k, capacity_factor, min_capacity, sparse_routes=True)
    capacity = capacity_formula(tokens, experts, capacity_factor, k, min_capacity)
    assert int(out[1]) == capacity
    indices = out[3]  # (k, S) expert per route, -1 = dropped
    # each of the k chosen experts receives every token and keeps min(capacity, tokens) of them
    assert int((indices < 0).sum()) == k * max(0, tokens - capacity)
    for e in range(k):
        assert int((indices == e).sum()) == min(capacity, tokens)


def test_dropless_capacity_is_the_busiest_expert_and_nothing_drops():
    logits = collapsed_logits(6, 4)
    for k, out in [
        (1, top1gating(logits, 1.0, 0, drop_tokens=False, use_rts=False, sparse_routes=True)),
        (2, top2gating(logits.clone(), 1.0, 0, drop_tokens=False, top2_2nd_expert_sampling=False, sparse_routes=True)),
        (3, topkgating(logits, 3, 1.0, 0, drop_tokens=False, sparse_routes=True)),
    ]:
        assert int(out[1]) == 6, k  # all 6 tokens chose expert 0
        assert int((out[3] < 0).sum()) == 0, k


def kept_tokens_with_rts(seed: int) -> frozenset:
    torch.manual_seed(seed)
    out = top1gating(collapsed_logits(16, 4), 1.0, 0, use_rts=True, sparse_routes=True)  # capacity 4 of 16
    return frozenset((out[3][0] >= 0).nonzero().flatten().tolist())


def test_random_token_selection_is_seeded():
    kept = kept_tokens_with_rts(0)
    assert len(kept) == 4 and kept_tokens_with_rts(0) == kept
    assert len({kept_tokens_with_rts(seed) for seed in range(6)}) > 1  # C(16, 4) = 1820 possible choices
