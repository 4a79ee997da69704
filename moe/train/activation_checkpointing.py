"""Activation checkpointing from the ds_config's `activation_checkpointing` section (its presence turns it on).

DeepSpeed does not apply it to a model by itself: it offers `deepspeed.checkpointing.checkpoint`, configured from
that section. We hand that function to the model through HF's own switch (`_set_gradient_checkpointing`, what
`gradient_checkpointing_enable` calls with torch's checkpoint), so every block's activations are recomputed in the
backward pass. moe/config/memory_saving.py refuses the options that need tensor parallelism.
"""
from __future__ import annotations

import deepspeed


def enable_activation_checkpointing(model, ds_config: dict) -> bool:
    """Turn it on for every block of `model` when the ds_config asks for it; returns whether it did."""
    if ds_config.get("activation_checkpointing") is None:
        return False
    deepspeed.checkpointing.configure(None, deepspeed_config=ds_config)
    model._set_gradient_checkpointing(enable=True, gradient_checkpointing_func=deepspeed.checkpointing.checkpoint)
    return True
