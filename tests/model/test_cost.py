"""Parameter and FLOP accounting in moe/model/cost.py against the real model."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from moe.model import build_model
from moe.model.cost import model_cost
from tests.model.test_model import tiny_config


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"moe_enabled": False},
        {"num_experts_per_tok": 1},
        {"use_residual": True},
        {"tie_word_embeddings": True},
        {"n_kv_heads": 2, "moe_interval": 1, "expert_d_ff": 48},
    ],
)
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


def test_train_flops_per_token_against_a_hand_count():
    # d=32, 2 layers (layer 1 MoE: 4 experts, top-2), d_ff=expert_d_ff=64, 4 heads, vocab 97, T=16
    config = tiny_config(d_ff=64)
    d, ff, vocab, T = 32, 64, 97, 16
    attention = 4 * d * d  # q, k, v, o
    dense_layer = attention + 3 * d * ff
    moe_layer = attention + 2 * 3 * d * ff + d * 4  # two experts + router
    matmul = dense_layer + moe_layer + vocab * d  # + LM head
    hand = 6 * matmul + 2 * 6 * T * d  # + causal attention, 6·T·d per layer
    assert hand == 6 * (10240 + 16512 + 3104) + 6144 == 185280
    assert model_cost(config, seq_len=T).train_flops_per_token() == hand


HF_FAMILIES = [
    ("MixtralConfig", "MixtralForCausalLM", {"num_local_experts": 4, "num_key_value_heads": 2}),
    (
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        {"num_experts": 4, "decoder_sparse_step": 2, "moe_intermediate_size": 48},
    ),
    (
        "DeepseekV3Config",
        "DeepseekV3ForCausalLM",
        {
            "n_routed_experts": 4,
            "q_lora_rank": None,
            "kv_lora_rank": 16,
            "qk_nope_head_dim": 16,
            "qk_rope_head_dim": 8,
            "v_head_dim": 16,
            "first_k_dense_replace": 1,
            "moe_intermediate_size": 48,
        },
    ),
    (
        "DeepseekV3Config",
        "DeepseekV3ForCausalLM",
        {
            "n_routed_experts": 4,
            "q_lora_rank": 32,
            "kv_lora_rank": 16,
            "qk_nope_head_dim": 16,
            "qk_rope_head_dim": 8,
            "v_head_dim": 16,
            "first_k_dense_replace": 1,
            "moe_intermediate_size": 48,
            "n_shared_experts": 2,
        },
    ),
]


@pytest.mark.parametrize("config_class, model_class, kw", HF_FAMILIES)
def test_hf_family_params_match_the_stock_model(config_class, model_class, kw):
    import transformers

    from moe.model.cost import hf_model_cost

    config = getattr(transformers, config_class)(
        vocab_size=100,
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=96,
        num_experts_per_tok=2,
        **kw,
    )
    with torch.device("meta"):
        model = getattr(transformers, model_class)(config)
    params = dict(model.named_parameters())
    cost = hf_model_cost(config, seq_len=16)
    assert cost.total_params == sum(p.numel() for p in params.values())
    assert cost.expert_params == sum(p.numel() for n, p in params.items() if ".experts." in n)
    top_2_of_4 = cost.expert_params * (1 - config.num_experts_per_tok / 4)
    assert cost.total_params - cost.active_params == top_2_of_4
