"""Router telemetry against hand-computed values on a real DeepSpeed MoE layer (top-1, capacity formula)."""

import math

import pytest
import torch

from moe.model.moe_layer import MoEMLP
from moe.model.router_stats import summarize
from tests.model.test_model import tiny_config


def layer_routing_everything_to(expert: int, top_k: int = 1, capacity_factor: float = 1.0) -> MoEMLP:
    config = tiny_config(
        num_experts_per_tok=top_k, capacity_factor=capacity_factor, min_capacity=0, top2_2nd_expert_sampling=False
    )
    layer = MoEMLP(config).train()
    with torch.no_grad():
        wg = layer.moe.deepspeed_moe.gate.wg.weight  # (E, d)
        wg.zero_()
        wg[expert, 0] = 10.0  # positive first feature -> a large logit for `expert`
        wg[(expert + 1) % 4, 0] = 5.0  # and the second choice
    return layer


def test_top1_collapsed_routing_counts_capacity_drops_and_load():
    layer = layer_routing_everything_to(expert=2)
    x = torch.zeros(1, 16, 32)
    x[..., 0] = 1.0  # every token prefers expert 2; capacity = ceil(16 tokens / 4 experts * 1.0) = 4
    layer(x)
    stats = summarize(layer.router_stats.sums)
    assert stats["tokens_per_expert"] == [0, 0, 4, 0]
    assert stats["dropped_frac"] == pytest.approx(12 / 16)
    assert stats["max_mean_load"] == pytest.approx(4.0)
    probs = torch.softmax(torch.tensor([0.0, 0.0, 10.0, 5.0]), dim=0)
    assert stats["router_entropy"] == pytest.approx(float(-(probs * probs.log()).sum()), rel=1e-5)
    assert stats["top_prob"] == pytest.approx(float(probs.max()), rel=1e-5)  # top-1's combine weight
    assert stats["aux_loss"] > 0


def test_top2_counts_both_choices_and_uniform_router_has_max_entropy():
    layer = layer_routing_everything_to(expert=0, top_k=2, capacity_factor=4.0)  # capacity 2*16/4*4 = 32: no drops
    x = torch.zeros(2, 8, 32)
    x[..., 0] = 1.0
    layer(x)
    stats = summarize(layer.router_stats.sums)
    assert stats["tokens_per_expert"] == [16, 16, 0, 0] and stats["dropped_frac"] == 0.0

    layer.router_stats.reset()
    layer(torch.zeros(1, 8, 32))  # all-zero logits: uniform router
    stats = summarize(layer.router_stats.sums)
    assert stats["router_entropy"] == pytest.approx(math.log(4)) and stats["router_entropy_norm"] == pytest.approx(1)
    assert stats["top_prob"] == pytest.approx(1 / 4)


def test_eval_and_disabled_stats_record_nothing():
    layer = layer_routing_everything_to(expert=1)
    layer.eval()
    with torch.no_grad():
        layer(torch.randn(1, 8, 32))
    layer.train()
    layer.router_stats.enabled = False
    layer(torch.randn(1, 8, 32))
    assert all(float(v.abs().sum()) == 0.0 for v in layer.router_stats.sums.values())
