"""The model a resolved recipe builds, without building it: its cost (moe/model/cost.py) and activation model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from moe.model.cost import ModelCost, hf_model_cost, model_cost
from moe.plan.activations import Activations, gpt_activations, hf_activations


@dataclass(frozen=True)
class ModelShape:
    cost: ModelCost
    largest_layer_params: int  # one block's parameters (ZeRO-3 gathers a block at a time)
    activations: Callable[[int], Activations]  # micro-batch size -> activations of one micro-batch


def vocab_size(recipe) -> int:
    """The trainer pads the tokenizer's length up to a multiple of 64; a BPE of data.vocab_size has at most that."""
    if recipe.model.vocab_size:
        return recipe.model.vocab_size
    size = recipe.data.vocab_size
    if recipe.data.tokenizer != "bpe":
        from transformers import AutoTokenizer

        size = len(AutoTokenizer.from_pretrained(recipe.data.tokenizer))
    return (size + 63) // 64 * 64


def model_shape(recipe, dtype_bytes: int, cpu: bool = False) -> ModelShape:
    """`cpu`: the ranks are CPU processes (our GPT then runs attention in fp32)."""
    seq_len, vocab = recipe.data.seq_len, vocab_size(recipe)
    if recipe.moe.impl == "autoep":
        from moe.model.hf.families import build_hf_config

        config = build_hf_config(recipe, vocab)
        cost = hf_model_cost(config, seq_len)
        activations = partial(_hf, config, seq_len, dtype_bytes)
        layers = config.num_hidden_layers
    else:
        config = GptShape.of(recipe, vocab)
        cost = model_cost(config, seq_len)
        activations = partial(_gpt, config, seq_len, dtype_bytes, cpu)
        layers = config.n_layers
    embeddings = vocab * recipe.model.d_model * (1 if recipe.model.tie_embeddings else 2)
    # MoE layers are the biggest blocks; spread the experts over the MoE layers only (an upper bound otherwise)
    moe_layers = max(1, sum(1 for i in range(layers) if _is_moe(config, i)))
    dense_per_layer = (cost.total_params - cost.expert_params - embeddings) / layers
    return ModelShape(cost, int(dense_per_layer + cost.expert_params / moe_layers), activations)


@dataclass(frozen=True)
class GptShape:
    """The fields of MoEGPTConfig (moe/model/configuration.py) that cost and activations read, filled the same way.

    Why not MoEGPTConfig itself: it subclasses transformers' PretrainedConfig, whose import alone takes seconds,
    and preflight runs this before every launch. tests/plan/test_planner.py checks both agree on every recipe."""

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_ff: int
    expert_d_ff: int
    moe_enabled: bool
    num_experts: int | list[int]
    num_experts_per_tok: int
    moe_interval: int
    capacity_factor: float
    min_capacity: int
    use_residual: bool
    tie_word_embeddings: bool

    @classmethod
    def of(cls, recipe, vocab: int) -> GptShape:
        m, e = recipe.model, recipe.moe
        d_ff = m.d_ff or ((8 * m.d_model // 3) + 63) // 64 * 64  # configuration.default_d_ff
        return cls(
            vocab_size=m.vocab_size or vocab,
            d_model=m.d_model,
            n_layers=m.n_layers,
            n_heads=m.n_heads,
            n_kv_heads=m.n_kv_heads or m.n_heads,
            d_ff=d_ff,
            expert_d_ff=e.expert_d_ff or d_ff,
            moe_enabled=e.enabled,
            num_experts=e.num_experts,
            num_experts_per_tok=e.top_k,
            moe_interval=e.interval,
            capacity_factor=e.capacity_factor,
            min_capacity=e.min_capacity,
            use_residual=e.use_residual,
            tie_word_embeddings=m.tie_embeddings,
        )

    def is_moe_layer(self, layer_idx: int) -> bool:
        return self.moe_enabled and (layer_idx + 1) % self.moe_interval == 0

    def experts_in_layer(self, layer_idx: int) -> int:
        if isinstance(self.num_experts, int):
            return self.num_experts
        return self.num_experts[[i for i in range(self.n_layers) if self.is_moe_layer(i)].index(layer_idx)]


def _is_moe(config, layer: int) -> bool:
    if hasattr(config, "is_moe_layer"):
        return config.is_moe_layer(layer)
    from moe.model.cost import hf_moe_layer_ids

    return layer in hf_moe_layer_ids(config)


def _gpt(config, seq_len: int, dtype_bytes: int, cpu: bool, micro_batch: int) -> Activations:
    return gpt_activations(config, micro_batch, seq_len, dtype_bytes, cpu)


def _hf(config, seq_len: int, dtype_bytes: int, micro_batch: int) -> Activations:
    return hf_activations(config, micro_batch, seq_len, dtype_bytes)
