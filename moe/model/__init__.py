"""The model: our MoE GPT (a transformers PreTrainedModel) whose MoE layers are DeepSpeed's `deepspeed.moe.layer.MoE`
with our router, plus what is known about a model from its config alone (cost.py) and the HF side (hf/).

configuration.py (MoEGPTConfig), layers.py (attention, RoPE, SwiGLU), modeling.py (blocks, the LM), moe_layer.py
(MoEMLP), gate.py (RouterGate: z-loss, sequence-wise balance loss, aux-loss-free bias routing), router_stats.py
(router telemetry), reference.py (the plain loop over experts every fast path is tested against), build.py
(layout-independent init by global name, global_names.py), batched_experts.py, recompute.py, cost.py (params and
FLOPs). hf/: GPT <-> HF weight names (names.py), the stock class that computes our GPT (stock.py), the AutoEP
families (families.py) and their router telemetry (autoep_stats.py).

The names below load on first use: importing a light submodule (cost.py, global_names.py) does not import
transformers, which the preflight before every launch would otherwise pay for.
"""

import importlib

_EXPORTS = {
    "MoEGPTConfig": "configuration",
    "config_from_recipe": "configuration",
    "MoEGPTForCausalLM": "modeling",
    "build_model": "build",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"moe.model.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'moe.model' has no attribute {name!r}")
