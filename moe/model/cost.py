"""Parameter counts and training FLOPs per token of a MoEGPTConfig, for MFU and scaling studies.

Conventions (as in the PaLM / Megatron MFU accounting):
- a matmul with an (m x n) weight costs 2·m·n FLOPs per token forward and 4·m·n backward, so 6·N_active in all;
- attention scores and the weighted sum cost 2·2·T·d per token per layer forward; causal masking halves the
  useful part, so training costs 6·T·d per token per layer (T = sequence length);
- embedding lookups, norms, softmax and rotary are not counted; the router matmul and the LM head are;
- MoE counts only the top_k experts a token is sent to (capacity padding and dropped tokens are ignored);
  shared experts (DeepSeek-V3) are dense MLPs every token passes through.

`model_cost` reads our GPT's MoEGPTConfig; `hf_model_cost` reads the HF config of an AutoEP family (Mixtral,
Qwen3-MoE, DeepSeek-V3 with multi-head latent attention). Both count exactly what the built model holds
(tests/model/test_cost.py builds each on the meta device), except that attention biases (attention_bias=true) are
not counted and DeepSeek-V3's multi-token-prediction layers, which HF does not build, are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

from moe.config.autoep_families import FAMILIES


@dataclass(frozen=True)
class ModelCost:
    total_params: int  # every parameter, embeddings included
    active_params: int  # parameters one token passes through, embeddings included
    active_matmul_params: int  # weights of the matmuls one token passes through (LM head included)
    attention_flops_per_token: float  # training FLOPs in attention scores + weighted sums
    expert_params: int = 0  # routed-expert weights (all layers): what expert parallelism splits over moe.ep_size

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

    total = active_matmul = experts = 0
    for layer in range(layers):
        total += attention
        active_matmul += attention
        if config.is_moe_layer(layer):
            num_experts = config.experts_in_layer(layer)  # PR-MoE pyramids differ per layer
            router = d * num_experts
            residual = dense_mlp + 2 * d + 2 if config.use_residual else 0  # Residual-MoE: dense MLP + 2-way mix (bias)
            total += num_experts * expert + router + residual
            experts += num_experts * expert
            active_matmul += config.num_experts_per_tok * expert + router + residual
        else:
            total += dense_mlp
            active_matmul += dense_mlp
    active_matmul += config.vocab_size * d  # LM head matmul (tied or not)
    total += embed + lm_head + norms
    active = active_matmul - config.vocab_size * d + embed + lm_head + norms
    return ModelCost(
        total_params=total,
        active_params=active,
        active_matmul_params=active_matmul,
        attention_flops_per_token=attention_train_flops(layers, seq_len, d, d),
        expert_params=experts,
    )


def attention_train_flops(layers: int, seq_len: int, qk_width: int, v_width: int) -> float:
    """Scores (2·T·qk_width) plus weighted sum (2·T·v_width) per token forward, halved by the causal mask, times 3
    for forward + backward: 3·T·(qk_width + v_width) per layer (= 6·T·d when both widths are d)."""
    return 3.0 * layers * seq_len * (qk_width + v_width)


def hf_moe_layer_ids(config) -> list[int]:
    """MoE layers of an HF family config, by the family's own rule."""
    layers = range(config.num_hidden_layers)
    if config.model_type == "qwen3_moe":
        dense = set(config.mlp_only_layers or [])
        return [i for i in layers if i not in dense and (i + 1) % config.decoder_sparse_step == 0]
    if config.model_type == "deepseek_v3":
        return [i for i in layers if i >= config.first_k_dense_replace]
    return list(layers)  # mixtral: every layer


def _hf_attention(config) -> tuple[int, int, int]:
    """(weights, q·k width, v width) of one attention layer; DeepSeek-V3 is multi-head latent attention (MLA)."""
    d, heads = config.hidden_size, config.num_attention_heads
    if config.model_type == "deepseek_v3":
        qk_head = config.qk_nope_head_dim + config.qk_rope_head_dim
        if config.q_lora_rank:  # q: d -> q_lora (normed) -> heads
            q = d * config.q_lora_rank + config.q_lora_rank + config.q_lora_rank * heads * qk_head
        else:
            q = d * heads * qk_head
        kv = (
            d * (config.kv_lora_rank + config.qk_rope_head_dim)
            + config.kv_lora_rank  # kv_a_proj_with_mqa + norm
            + config.kv_lora_rank * heads * (config.qk_nope_head_dim + config.v_head_dim)
        )  # kv_b_proj
        o = heads * config.v_head_dim * d
        return q + kv + o, heads * qk_head, heads * config.v_head_dim
    head_dim = getattr(config, "head_dim", None) or d // heads
    weights = 2 * d * heads * head_dim + 2 * d * config.num_key_value_heads * head_dim  # q, o and k, v
    if config.model_type == "qwen3_moe":
        weights += 2 * head_dim  # per-head q and k RMSNorms
    return weights, heads * head_dim, heads * head_dim


def hf_experts(config) -> tuple[int, int]:
    """(experts per MoE layer, each expert's SwiGLU width) of an HF Mixtral / Qwen3-MoE / DeepSeek-V3 config."""
    num_experts = getattr(config, FAMILIES[config.model_type].num_experts_key)
    expert_ff = config.intermediate_size if config.model_type == "mixtral" else config.moe_intermediate_size
    return num_experts, expert_ff


def hf_model_cost(config, seq_len: int) -> ModelCost:
    """ModelCost of an HF Mixtral / Qwen3-MoE / DeepSeek-V3 config (moe.impl=autoep)."""
    d, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    attention, qk_width, v_width = _hf_attention(config)
    num_experts, expert_ff = hf_experts(config)
    expert = 3 * d * expert_ff
    shared = 3 * d * expert_ff * (getattr(config, "n_shared_experts", None) or 0)  # DeepSeek-V3: dense, every token
    dense_mlp = 3 * d * config.intermediate_size
    moe_layers = set(hf_moe_layer_ids(config))
    total = active_matmul = experts = 0
    for layer in range(layers):
        total += attention + 2 * d  # + input and post-attention norms
        active_matmul += attention
        if layer in moe_layers:
            router = d * num_experts
            total += num_experts * expert + router + shared
            active_matmul += config.num_experts_per_tok * expert + router + shared
            experts += num_experts * expert
        else:
            total += dense_mlp
            active_matmul += dense_mlp
    embed = vocab * d
    lm_head = 0 if config.tie_word_embeddings else vocab * d
    total += embed + lm_head + d  # final norm
    active = total - experts + sum(config.num_experts_per_tok * expert for _ in moe_layers)
    return ModelCost(
        total_params=total,
        active_params=active,
        active_matmul_params=active_matmul + vocab * d,
        attention_flops_per_token=attention_train_flops(layers, seq_len, qk_width, v_width),
        expert_params=experts,
    )


def config_cost(config, seq_len: int) -> ModelCost:
    """ModelCost of a built model's config: our GPT's MoEGPTConfig, or an AutoEP family's HF config."""
    return model_cost(config, seq_len) if config.model_type == "moe_gpt" else hf_model_cost(config, seq_len)
