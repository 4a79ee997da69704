"""Router telemetry on a CUDA device runs without one host sync: torch's sync debug mode turns any sync into an
error (the CPU twin, which looks for syncing operators, is tests/model/test_no_host_sync.py)."""

import pytest
import torch

from moe.model.moe_layer import MoEMLP
from tests.model.test_model import tiny_config
from tests.model.test_no_host_sync import captured_gate_call

pytestmark = pytest.mark.gpu


def test_router_telemetry_hook_never_syncs_on_cuda():
    torch.manual_seed(0)
    layer = MoEMLP(tiny_config(num_experts_per_tok=2, capacity_factor=0.5, min_capacity=0)).cuda().train()
    inputs, output = captured_gate_call(layer, torch.randn(2, 16, 32, device="cuda"))
    stats = layer.router_stats
    stats.reset()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        stats._on_gate(layer.gate, inputs, output)
        stats.record_losses(layer.gate.last_losses, training=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    kept = output[3].flatten()
    assert stats.sums["kept"].sum().item() == (kept >= 0).sum().item()
