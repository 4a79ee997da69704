"""Aux-loss-free balancing (DeepSeek-V3): after each optimizer step the trainer moves every bias-balanced gate's bias
by rate x sign(mean load - load) (moe/train/accumulate.py), here on one process, where the local load is the global
one; on 2 ranks, with the load summed over them, in tests/model/test_routing_ep.py."""

import pytest
import torch

from moe.train.accumulate import update_routing_biases
from tests.model.test_balance import gate_with_identity_router


def test_skewed_load_moves_the_bias_toward_balance():
    gate = gate_with_identity_router(4, k=1, drop_tokens=False, use_rts=False, bias_update_rate=0.05).train()
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0]]).repeat(8, 1)  # every token prefers expert 0
    gate(logits, sparse_routes=True)
    assert gate.selection_counts.tolist() == [8, 0, 0, 0]
    update_routing_biases(gate)  # a plain module, no process group: the local load is the global load
    assert gate.routing_bias.tolist() == pytest.approx([-0.05, 0.05, 0.05, 0.05])  # rate * sign(mean 2 - load)
    assert gate.selection_counts.tolist() == [0, 0, 0, 0]

    gate.routing_bias.zero_()
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(32, 4, generator=generator) * 0.5 + torch.tensor([2.0, 0, 0, 0])  # skewed, varied
    loads = []
    for _ in range(12):
        loads.append(gate(logits, sparse_routes=True)[6].tolist())
        update_routing_biases(gate)
    assert max(loads[0]) >= 30  # measured 31 of 32 tokens on expert 0 before any update
    assert max(max(load) for load in loads[8:]) < 0.6 * max(loads[0])  # measured <= 17 after 8 updates
    with torch.no_grad():
        gate.eval()(logits, sparse_routes=True)
    assert gate.selection_counts.sum() == 0  # evaluation does not count toward the load
