"""Parameter and FLOP accounting in moe/cost.py against the real model."""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from moe.cost import model_cost
from moe.model import build_model
from tests.model.test_model import tiny_config


@pytest.mark.parametrize("kw", [
    {}, {"moe_enabled": False}, {"num_experts_per_tok": 1}, {"use_residual": True},
    {"tie_word_embeddings": True}, {"n_kv_heads": 2, "moe_interval": 1, "expert_d_ff": 48},
])
def test_total_params_match_the_built_model(kw):
    config = tiny_config(**kw)
    model = build_model(config, seed=0)
    assert model_cost(config, seq_len=16).total_params == sum(p.numel() for p in model.parameters())


def test_active_params_count_top_k_experts_only():
    config = tiny_config(num_experts=8, num_experts_per_tok=2)
    cost = model_cost(config, seq_len=16)
    expert = 3 * config.d_model * config.expert_d_ff
    moe_layers = sum(config.is_moe_layer(i) for i in range(config.n_layers))
    assert cost.total_params - cost.active_params == moe_layers * (8 - 2) * expert


def test_dense_train_flops_match_torch_flop_counter():
    # The math SDPA backend is plain bmm, which FlopCounterMode counts in full: twice our causal count.
    config = tiny_config(moe_enabled=False)
    model = build_model(config, seed=0)
    batch, seq = 2, 16
    ids = torch.randint(0, config.vocab_size, (batch, seq))
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        model(ids, labels=ids).loss.backward()
    cost = model_cost(config, seq_len=seq)
    expected = (6 * cost.active_matmul_params + 2 * cost.attention_flops_per_token) * batch * seq
    assert counter.get_total_flops() == pytest.approx(expected, rel=1e-9)
