"""Parameter counts and training FLOPs per token of a MoEGPTConfig, for MFU and scaling studies.

Conventions (as in the PaLM / Megatron MFU accounting):
- a matmul with an (m x n) weight costs 2·m·n FLOPs per token forward and 4·m·n backward, so 6·N_active in all;
- attention scores and the weighted sum cost 2·2·T·d per token per layer forward; causal masking halves the
  useful part, so training costs 6·T·d per token per layer (T = sequence length);
- embedding lookups, norms, softmax and rotary are not counted; the router matmul and the LM head are;
- MoE counts only the top_k experts a token is sent to (capacity padding and dropped tokens are ignored).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelCost:
    total_params: int      # every parameter, embeddings included
    active_params: int     # parameters one token passes through, embeddings included
    active_matmul_params: int  # weights of the matmuls one token passes through (LM head included)
    attention_flops_per_token: float  # training FLOPs in attention scores + weighted sums

    def train_flops_per_token(self) -> float:
        return 6.0 * self.active_matmul_params + self.attention_flops_per_token


def model_cost(config, seq_len: int) -> ModelCost:
    d, layers = config.d_model, config.n_layers
    head_dim = d // config.n_heads
    attention = d * d * 2 + 2 * d * head_dim * config.n_kv_heads  # q, o and k, v projections
    dense_mlp = 3 * d * config.d_ff
    expert = 3 * d * config.expert_d_ff
    embed = config.vocab_size * d
    lm_head = 0 if config.tie_word_embeddings else config.vocab_size * d
    norms = d * (2 * layers + 1)

    total = active_matmul = 0
    for layer in range(layers):
        total += attention
        active_matmul += attention
        if config.is_moe_layer(layer):
            num_experts = config.experts_in_layer(layer)  # PR-MoE pyramids differ per layer
            router = d * num_experts
            residual = dense_mlp + 2 * d + 2 if config.use_residual else 0  # Residual-MoE: dense MLP + 2-way mix (bias)
            total += num_experts * expert + router + residual
            active_matmul += config.num_experts_per_tok * expert + router + residual
        else:
            total += dense_mlp
            active_matmul += dense_mlp
    active_matmul += config.vocab_size * d  # LM head matmul (tied or not)
    total += embed + lm_head + norms
    active = active_matmul - config.vocab_size * d + embed + lm_head + norms
    return ModelCost(total_params=total, active_params=active, active_matmul_params=active_matmul,
                     attention_flops_per_token=6.0 * layers * seq_len * d)
