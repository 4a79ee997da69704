"""Activation checkpointing from the ds_config's `activation_checkpointing` section (its presence turns it on).

DeepSpeed does not apply it to a model by itself: it offers `deepspeed.checkpointing.checkpoint`, configured from
that section. We hand that function to the model through HF's own switch (`_set_gradient_checkpointing`, what
`gradient_checkpointing_enable` calls with torch's checkpoint), so every block's activations are recomputed in the
backward pass. moe/config/memory_saving.py refuses the options that need tensor parallelism.

`train.recompute` picks what is recomputed (selective activation checkpointing):
- `blocks`: every block's whole forward; each block keeps only its input. Most memory saved; the backward repeats
  attention, the router and, at EP > 1, the MoE layer's two all-to-alls.
- `mlp`: only the MLP interiors, the dense SwiGLUs and each MoE layer's experts (DeepSpeed's `Experts` container,
  after dispatch): their 4 x ff-wide activations (at capacity, padding included) are the largest part of a block's.
  Attention, the router, dispatch and the all-to-alls are not recomputed: about one MLP forward of extra FLOPs
  (~1/3 of the MLP's forward + backward) and no extra communication.
"""

from __future__ import annotations

from functools import partial

import deepspeed
import torch.utils.checkpoint


def enable_activation_checkpointing(model, ds_config: dict, recompute: str = "blocks") -> bool:
    """Turn it on for `model` when the ds_config asks for it, recomputing `recompute` (blocks | mlp, checked by
    resolve); returns whether it did."""
    if ds_config.get("activation_checkpointing") is None:
        return False
    if recompute == "blocks":
        deepspeed.checkpointing.configure(None, deepspeed_config=ds_config)
        model._set_gradient_checkpointing(enable=True, gradient_checkpointing_func=deepspeed.checkpointing.checkpoint)
        return True
    # mlp: torch's non-reentrant checkpoint. The interiors hold no randomness, so DeepSpeed's RNG-tracking wrapper
    # buys nothing, and nothing inside them has side effects to keep from repeating (moe/model/recompute.py).
    for block in model.layers:
        target = block.mlp.moe.deepspeed_moe.experts if block.is_moe else block.mlp
        target.forward = partial(torch.utils.checkpoint.checkpoint, target.forward, use_reentrant=False)
    return True
