"""The stock Hugging Face MoE families that `moe.impl: autoep` trains, and what each supports.

A table of facts, not code that touches transformers: the resolve step checks recipes against it, and
moe/model/hf/families.py builds the models from it (the class names are imported there, lazily).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    config_class: str  # transformers class names
    model_class: str
    model_type: str  # config.json "model_type" of this family
    num_experts_key: str  # the config field that holds the routed-expert count
    aux_loss: bool  # does the HF model compute a load-balancing aux loss from router logits?
    any_interval: bool  # can MoE layers be interleaved with dense ones (moe.interval > 1)?


FAMILIES = {
    "mixtral": Family("MixtralConfig", "MixtralForCausalLM", "mixtral", "num_local_experts", True, False),
    "qwen3_moe": Family("Qwen3MoeConfig", "Qwen3MoeForCausalLM", "qwen3_moe", "num_experts", True, True),
    # DeepSeek-V3 routes with sigmoid scores and a per-expert selection bias (auxiliary-loss-free); HF computes no
    # aux loss for it. Its first `first_k_dense_replace` layers are dense (set through model.hf_config).
    "deepseek_v3": Family("DeepseekV3Config", "DeepseekV3ForCausalLM", "deepseek_v3", "n_routed_experts", False, False),
}
