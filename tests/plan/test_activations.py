"""The activation model (moe/plan/activations.py) against the bytes autograd really saves in our GPT."""

import pytest
import torch

from moe.model import build_model
from moe.plan.activations import capacity, gpt_activations
from tests.model.test_model import tiny_config

B, T = 4, 16


def saved_activation_bytes(model, ids) -> int:
    """Distinct storages autograd saves during forward, parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(ids, labels=ids)
    return sum(seen.values())


@pytest.mark.parametrize(
    "kw",
    [
        {"moe_enabled": False},
        {},
        {"num_experts": 8, "num_experts_per_tok": 1},
        {"capacity_factor": 2.0},
        {"num_experts_per_tok": 3},
        {"n_kv_heads": 2, "moe_interval": 1},
        {"vocab_size": 512},
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_saved_bytes_match_autograd(kw, dtype):
    config = tiny_config(**{"min_capacity": 0, **kw})
    model = build_model(config, seed=0).to(dtype)
    ids = torch.randint(0, config.vocab_size, (B, T))
    estimate = gpt_activations(config, B, T, torch.finfo(dtype).bits // 8, cpu=True).saved
    assert estimate == pytest.approx(saved_activation_bytes(model, ids), rel=0.01)


def test_residual_moe_is_within_5_percent():  # its mixing coefficient's small tensors are not itemized
    config = tiny_config(use_residual=True, min_capacity=0)
    ids = torch.randint(0, config.vocab_size, (B, T))
    saved = saved_activation_bytes(build_model(config, seed=0), ids)
    assert gpt_activations(config, B, T, 4).saved == pytest.approx(saved, rel=0.05)


def test_capacity_follows_deepspeed_gating():
    assert capacity(64, 4, 1, 1.0, 4) == 16  # top-1: tokens / experts
    assert capacity(64, 4, 2, 1.25, 4) == 40  # top-k: x k x capacity factor
    assert capacity(8, 4, 1, 1.0, 4) == 4  # at least min_capacity


def test_checkpointing_keeps_less_and_capacity_buffers_grow_with_the_factor():
    config = tiny_config(n_layers=4)
    acts = gpt_activations(config, B, T, 4)
    assert acts.checkpointed < acts.full
    wider = gpt_activations(tiny_config(n_layers=4, capacity_factor=2.0), B, T, 4)
    assert wider.moe_buffers > acts.moe_buffers


@pytest.mark.parametrize("kw", [{}, {"moe_interval": 1, "capacity_factor": 2.0}])
def test_mlp_recompute_saves_what_the_plan_says(kw):
    """train.recompute=mlp: autograd keeps everything but the MLP / expert interiors (checkpoint keeps their input)."""
    from moe.train.activation_checkpointing import enable_activation_checkpointing

    config = tiny_config(**{"min_capacity": 0, **kw})
    model = build_model(config, seed=0).train()
    ids = torch.randint(0, config.vocab_size, (B, T))
    full = saved_activation_bytes(model, ids)
    assert enable_activation_checkpointing(
        model, {"train_micro_batch_size_per_gpu": B, "activation_checkpointing": {}}, "mlp"
    )
    saved = saved_activation_bytes(model, ids)
    acts = gpt_activations(config, B, T, 4)
    assert saved == pytest.approx(acts.saved - sum(acts.mlp_interior), rel=0.01)
    assert saved < 0.8 * full  # the interiors are the largest part of a block
    assert acts.checkpointed < acts.mlp_checkpointed < acts.full
