"""The Hugging Face config class of our MoE GPT, so that save_pretrained / from_pretrained / generate work."""

from __future__ import annotations

from transformers import PretrainedConfig


class MoEGPTConfig(PretrainedConfig):
    model_type = "moe_gpt"

    def __init__(
        self,
        vocab_size: int = 8192,
        d_model: int = 256,
        n_layers: int = 4,
        n_heads: int = 4,
        n_kv_heads: int | None = None,
        d_ff: int | None = None,
        max_seq_len: int = 256,
        rope_theta: float = 10000.0,
        norm_eps: float = 1e-5,
        init_std: float = 0.02,
        moe_enabled: bool = True,
        num_experts: int = 4,
        num_experts_per_tok: int = 2,
        moe_interval: int = 2,
        expert_d_ff: int | None = None,
        ep_size: int = 1,
        capacity_factor: float = 1.0,
        eval_capacity_factor: float = 1.0,
        min_capacity: int = 4,
        drop_tokens: bool = True,
        use_rts: bool = True,
        noisy_gate_policy: str | None = None,
        use_residual: bool = False,
        top2_2nd_expert_sampling: bool = True,
        aux_loss_coef: float = 0.01,
        routed_scaling_factor: float = 1.0,
        z_loss_coef: float = 0.0,
        seq_aux_loss_coef: float = 0.0,
        bias_update_rate: float = 0.0,
        batched_experts: bool = False,
        tie_word_embeddings: bool = False,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads or n_heads
        self.d_ff = d_ff or default_d_ff(d_model)
        self.max_seq_len = max_seq_len
        self.rope_theta = rope_theta
        self.norm_eps = norm_eps
        self.init_std = init_std
        self.moe_enabled = moe_enabled
        self.num_experts = num_experts  # an int, or one count per MoE layer (PR-MoE pyramid)
        self.num_experts_per_tok = num_experts_per_tok
        self.moe_interval = moe_interval
        self.expert_d_ff = expert_d_ff or self.d_ff
        self.ep_size = ep_size
        self.capacity_factor = capacity_factor
        self.eval_capacity_factor = eval_capacity_factor
        self.min_capacity = min_capacity
        self.drop_tokens = drop_tokens
        self.use_rts = use_rts
        self.noisy_gate_policy = noisy_gate_policy
        self.use_residual = use_residual
        self.top2_2nd_expert_sampling = top2_2nd_expert_sampling
        self.aux_loss_coef = aux_loss_coef
        self.routed_scaling_factor = routed_scaling_factor
        self.z_loss_coef = z_loss_coef
        self.seq_aux_loss_coef = seq_aux_loss_coef
        self.bias_update_rate = bias_update_rate
        self.batched_experts = batched_experts  # speed only: the same math and parameters as DeepSpeed's loop
        # HF generic names, read by generate() and friends
        self.hidden_size = d_model
        self.num_hidden_layers = n_layers
        self.num_attention_heads = n_heads
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)

    def is_moe_layer(self, layer_idx: int) -> bool:
        """Every `moe_interval`-th MLP is a MoE layer: layers interval-1, 2*interval-1, ..."""
        return self.moe_enabled and (layer_idx + 1) % self.moe_interval == 0

    def moe_layer_ids(self) -> list[int]:
        return [i for i in range(self.n_layers) if self.is_moe_layer(i)]

    def experts_in_layer(self, layer_idx: int) -> int:
        """Number of experts of MoE layer `layer_idx`: `num_experts`, or its entry in the per-MoE-layer list."""
        if isinstance(self.num_experts, int):
            return self.num_experts
        return self.num_experts[self.moe_layer_ids().index(layer_idx)]


def default_d_ff(d_model: int) -> int:
    """SwiGLU keeps the parameter count of a 4x GELU MLP: 8/3 * d, rounded up to a multiple of 64."""
    return ((8 * d_model // 3) + 63) // 64 * 64


def config_from_recipe(recipe, vocab_size: int) -> MoEGPTConfig:
    m, e = recipe.model, recipe.moe
    return MoEGPTConfig(
        vocab_size=m.vocab_size or vocab_size,
        d_model=m.d_model,
        n_layers=m.n_layers,
        n_heads=m.n_heads,
        n_kv_heads=m.n_kv_heads,
        d_ff=m.d_ff,
        max_seq_len=m.max_seq_len,
        rope_theta=m.rope_theta,
        norm_eps=m.norm_eps,
        init_std=m.init_std,
        moe_enabled=e.enabled,
        num_experts=e.num_experts,
        num_experts_per_tok=e.top_k,
        moe_interval=e.interval,
        expert_d_ff=e.expert_d_ff,
        ep_size=e.ep_size,
        capacity_factor=e.capacity_factor,
        eval_capacity_factor=e.eval_capacity_factor,
        min_capacity=e.min_capacity,
        drop_tokens=e.drop_tokens,
        use_rts=e.use_rts,
        noisy_gate_policy=e.noisy_gate_policy,
        use_residual=e.use_residual,
        top2_2nd_expert_sampling=e.top2_2nd_expert_sampling,
        aux_loss_coef=e.aux_loss_coef,
        routed_scaling_factor=e.routed_scaling_factor,
        z_loss_coef=e.z_loss_coef,
        seq_aux_loss_coef=e.seq_aux_loss_coef,
        bias_update_rate=e.bias_update_rate,
        batched_experts=e.batched_experts,
        tie_word_embeddings=m.tie_embeddings,
    )
