"""Expert-aware gradient norm and clipping for DeepSpeed's plain fp32 path (ZeRO stage 0, no bf16/fp16).

Why our own: on that path DeepSpeed clips with `deepspeed.runtime.utils.clip_grad_norm_`, which takes each rank's
local norm and *averages* it over the data-parallel group. Under expert parallelism each rank holds only its own
experts, so that number is neither the global norm nor the same on every rank (the dense replicas then get clipped
by different factors and drift apart), and the engine never records it (`get_global_grad_norm()` stays None).
ZeRO-1/2 and the bf16 optimizer already reduce expert norms over the right groups, so they are left alone.

The replacement uses DeepSpeed's own helpers: dense gradients counted once, each expert group's gradients summed
over its expert-parallel group, which is the norm of the whole model as if it sat on one rank.
"""

from __future__ import annotations

from collections import defaultdict

import torch


def expert_aware_global_norm(parameters) -> torch.Tensor:
    """L2 norm over all gradients of the full (unsharded) model; every rank gets the same value."""
    from deepspeed.moe.utils import is_moe_param
    from deepspeed.runtime.utils import get_global_norm_of_tensors
    from deepspeed.utils import groups

    dense, experts = [], defaultdict(list)
    for p in parameters:
        if p.grad is None:
            continue
        (experts[p.group_name] if is_moe_param(p) else dense).append(p.grad)
    squared = torch.zeros((), dtype=torch.float32)
    if dense:
        squared += get_global_norm_of_tensors(dense).float().cpu() ** 2
    for group_name in sorted(experts):
        ep_group = groups._get_expert_parallel_group(group_name)
        squared += get_global_norm_of_tensors(experts[group_name], moe_ep_group=ep_group).float().cpu() ** 2
    return squared.sqrt()


def install_expert_aware_clipping(engine) -> None:
    """Replace the engine's fp32 ZeRO-0 clipping hook with the expert-aware one; records the norm it used."""
    if engine.zero_optimization() or engine.fp16_enabled() or engine.bfloat16_enabled():
        return
    from deepspeed.runtime.utils import clip_tensors_by_global_norm

    def clip_fp32_gradients() -> None:
        params = [p for p in engine.module.parameters() if p.grad is not None]
        norm = expert_aware_global_norm(params)
        clip_tensors_by_global_norm(
            [p.grad for p in params], max_norm=engine.gradient_clipping(), global_norm=norm.to(params[0].grad.device)
        )
        engine._global_grad_norm = float(norm)

    # Called from DeepSpeedEngine._take_model_step when gradient_clipping > 0 on this path.
    engine.clip_fp32_gradients = clip_fp32_gradients


def install_nonfinite_skip(engine) -> None:
    """Give the plain fp32 optimizer of ZeRO-0 the contract DeepSpeed's other optimizers keep: `overflow` is set
    and the update skipped when any gradient is inf or NaN on any rank. The engine then counts the skip and does
    not step the LR scheduler (DeepSpeedEngine._take_model_step reads `optimizer.overflow`). One norm per
    parameter (torch's fused foreach norm, as clip_grad_norm_ takes it) and one all-reduce of one flag a step."""
    if engine.zero_optimization() or engine.fp16_enabled() or engine.bfloat16_enabled():
        return
    import deepspeed.comm as dist

    optimizer = engine.optimizer
    step = optimizer.step

    def step_if_finite(*args, **kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        bad = torch.zeros((), dtype=torch.float32, device=engine.device)
        if grads:
            bad = (~torch.stack(torch._foreach_norm(grads)).isfinite()).any().float()
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        optimizer.overflow = bool(bad)
        if optimizer.overflow:
            engine._global_grad_norm = float("inf")
            return None
        return step(*args, **kwargs)

    optimizer.overflow = False
    optimizer.step = step_if_finite
