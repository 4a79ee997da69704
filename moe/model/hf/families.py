"""Stock Hugging Face MoE families trained through DeepSpeed AutoEP (`moe.impl: autoep`).

The recipe's shape fields become the family's own config class, and the model is the stock HF class (random init
from the seed, or `model.init_from` weights). Inside `deepspeed.initialize`, AutoEP (the ds_config
`expert_parallel` section, written by the resolve step: moe/config/moe_paths.py) swaps every HF sparse-MoE block for
its dropless, grouped-GEMM, all-to-all expert-parallel layer. Attention, norms, routing scores and the HF aux loss stay
the stock code, so an exported checkpoint is a plain `from_pretrained` folder of the same family.
"""

from __future__ import annotations

import torch

from moe.config.autoep_families import FAMILIES
from moe.model.configuration import default_d_ff


def _transformers_class(name: str):
    import transformers

    return getattr(transformers, name)


def hf_config_kwargs(recipe, vocab_size: int) -> dict:
    """The HF config fields that the recipe determines; `model.hf_config` adds or overrides the rest."""
    m, e = recipe.model, recipe.moe
    family = FAMILIES[m.family]
    head_dim = m.d_model // m.n_heads
    d_ff = m.d_ff or default_d_ff(m.d_model)
    kwargs = {
        "vocab_size": m.vocab_size or vocab_size,
        "hidden_size": m.d_model,
        "num_hidden_layers": m.n_layers,
        "num_attention_heads": m.n_heads,
        "num_key_value_heads": m.n_kv_heads or m.n_heads,
        "max_position_embeddings": m.max_seq_len,
        "rms_norm_eps": m.norm_eps,
        "initializer_range": m.init_std,
        "tie_word_embeddings": m.tie_embeddings,
        "num_experts_per_tok": e.top_k,
        family.num_experts_key: e.num_experts,
        "rope_parameters": {"rope_type": "default", "rope_theta": m.rope_theta},
        "attention_dropout": 0.0,
    }
    if family.aux_loss:
        kwargs.update(output_router_logits=True, router_aux_loss_coef=e.aux_loss_coef)
    if m.family == "mixtral":  # every layer is MoE; experts are intermediate_size wide
        kwargs.update(intermediate_size=e.expert_d_ff or d_ff, head_dim=head_dim)
    elif m.family == "qwen3_moe":
        kwargs.update(
            intermediate_size=d_ff,
            moe_intermediate_size=e.expert_d_ff or d_ff,
            head_dim=head_dim,
            decoder_sparse_step=e.interval,
            mlp_only_layers=[],
            norm_topk_prob=True,
        )
    elif m.family == "deepseek_v3":  # multi-head latent attention dims scale with the head size
        kwargs.update(
            intermediate_size=d_ff,
            moe_intermediate_size=e.expert_d_ff or d_ff,
            q_lora_rank=None,
            kv_lora_rank=max(16, m.d_model // 4),
            qk_nope_head_dim=head_dim,
            qk_rope_head_dim=max(2, head_dim // 2 // 2 * 2),
            v_head_dim=head_dim,
            n_group=1,
            topk_group=1,
            first_k_dense_replace=0,
        )
    kwargs.update(m.hf_config)
    return kwargs


def unknown_hf_config_keys(family: str, keys) -> list[str]:
    """Keys of `model.hf_config` that the family's config class does not have (HF would accept them silently)."""
    defaults = _transformers_class(FAMILIES[family].config_class)()
    return [k for k in keys if not hasattr(defaults, k)]


def build_hf_config(recipe, vocab_size: int):
    return _transformers_class(FAMILIES[recipe.model.family].config_class)(**hf_config_kwargs(recipe, vocab_size))


def build_hf_model(recipe, vocab_size: int, seed: int) -> torch.nn.Module:
    """The stock HF model with HF's own init drawn from `seed` (`model.init_from` weights: moe/checkpoint/hf_import.py).

    Every rank builds the whole model from the same seed and AutoEP keeps each rank's expert slice, so the
    initialization is the same under every expert-parallel size.
    """
    model_class = _transformers_class(FAMILIES[recipe.model.family].model_class)
    torch.manual_seed(seed)
    return model_class(build_hf_config(recipe, vocab_size))


def init_from_mismatches(recipe, saved: dict, vocab_size: int | None = None) -> list[str]:
    """`field: checkpoint value != recipe value` for every shape field the `model.init_from` checkpoint (its
    config.json, `saved`) and the recipe disagree on."""
    wanted = hf_config_kwargs(recipe, vocab_size or saved.get("vocab_size", 0))
    if saved.get("model_type") != FAMILIES[recipe.model.family].model_type:
        return [f"model_type: checkpoint {saved.get('model_type')} != model.family {recipe.model.family}"]
    shape_keys = [
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "intermediate_size",
        "moe_intermediate_size",
        "num_experts_per_tok",
        "head_dim",
        FAMILIES[recipe.model.family].num_experts_key,
        "decoder_sparse_step",
        "kv_lora_rank",
        "qk_nope_head_dim",
        "qk_rope_head_dim",
        "v_head_dim",
        "first_k_dense_replace",
    ]
    if recipe.model.vocab_size:
        shape_keys.append("vocab_size")
    return [
        f"{k}: checkpoint {saved[k]} != recipe {wanted[k]}"
        for k in shape_keys
        if k in wanted and k in saved and saved[k] != wanted[k]
    ]
