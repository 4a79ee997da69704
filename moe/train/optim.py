"""Optimizer parameter groups, marked for DeepSpeed MoE."""

from __future__ import annotations

from deepspeed.moe.utils import split_params_into_different_moe_groups_for_optimizer
from torch import nn


def no_decay(name: str, param) -> bool:
    """Norms, biases and the router take no weight decay."""
    return param.dim() < 2 or ".gate.wg." in name


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay / no-decay groups, then DeepSpeed's split so every expert parameter sits in a group with
    `moe: True` and its expert group name: the engine reduces those over the expert-data-parallel group."""
    decay = [p for n, p in model.named_parameters() if p.requires_grad and not no_decay(n, p)]
    plain = [p for n, p in model.named_parameters() if p.requires_grad and no_decay(n, p)]
    groups = [
        {"name": "decay", "params": decay, "weight_decay": weight_decay},
        {"name": "no_decay", "params": plain, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    return split_params_into_different_moe_groups_for_optimizer(groups)
