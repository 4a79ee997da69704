"""Router telemetry adds no host sync to the training step.

A host sync (the CPU waiting for the GPU to finish, to read a value) stalls the kernel queue once per MoE layer
per micro-batch. It cannot be observed on CPU, but the operators that cause it can: every op the telemetry issues
is recorded with a TorchDispatchMode, and none may be one that reads device data to the host (`.item()`,
`nonzero`, boolean-mask indexing, `bincount`, `unique`, a copy to the CPU). The same hook on a CUDA device runs
under `torch.cuda.set_sync_debug_mode("error")` in tests/model/test_no_host_sync_gpu.py.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from moe.model.moe_layer import MoEMLP
from moe.model.router_stats import summarize
from tests.model.test_model import tiny_config

aten = torch.ops.aten
SYNCING = {
    aten._local_scalar_dense.default,
    aten.nonzero.default,
    aten.masked_select.default,
    aten.bincount.default,
    aten._unique2.default,
    aten.unique_consecutive.default,
    aten.item.default,
}


class SyncingOps(TorchDispatchMode):
    """Records every op that makes the host wait for the device's data."""

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        bool_index = func is aten.index.Tensor and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else ())
        )
        to_host = (
            func is aten._to_copy.default
            and kwargs.get("device") == torch.device("cpu")
            and args[0].device.type != "cpu"
        )
        if func in SYNCING or bool_index or to_host:
            self.found.append(str(func))
        return func(*args, **(kwargs or {}))


def captured_gate_call(layer: MoEMLP, x: torch.Tensor) -> tuple:
    """(gate inputs, gate output) of one real forward of the layer."""
    seen = {}
    handle = layer.gate.register_forward_hook(lambda m, i, o: seen.update(inputs=i, output=o))
    layer(x)
    handle.remove()
    return seen["inputs"], seen["output"]


def test_router_telemetry_issues_no_syncing_op_and_still_counts():
    torch.manual_seed(0)
    layer = MoEMLP(tiny_config(num_experts_per_tok=2, capacity_factor=0.5, min_capacity=0)).train()
    x = torch.randn(2, 16, 32)
    inputs, output = captured_gate_call(layer, x)  # top-2 with capacity 0.5: some routes are dropped
    stats = layer.router_stats
    stats.reset()
    spy = SyncingOps()
    with spy:
        stats._on_gate(layer.gate, inputs, output)
        stats.record_losses(layer.gate.last_losses, training=True)
    assert spy.found == []
    kept = output[3].flatten()  # expert index per route, -1 = dropped
    expected = torch.bincount(kept[kept >= 0], minlength=4).double()
    assert torch.equal(stats.sums["kept"], expected) and 0 < expected.sum() < kept.numel()
    assert summarize(stats.sums)["dropped_frac"] == (kept < 0).float().mean().item()


def test_the_spy_sees_a_boolean_mask_count():
    """The detector itself: the counting it replaced (boolean indexing + bincount) is caught."""
    indices = torch.tensor([0, -1, 2, 2])
    spy = SyncingOps()
    with spy:
        torch.bincount(indices[indices >= 0], minlength=4)
    assert spy.found
