"""Model builders: the HF-compatible MoE GPT on deepspeed.moe.layer.MoE."""
from moe.model.build import build_model
from moe.model.configuration import MoEGPTConfig, config_from_recipe
from moe.model.modeling import MoEGPTForCausalLM

__all__ = ["MoEGPTConfig", "MoEGPTForCausalLM", "build_model", "config_from_recipe"]
