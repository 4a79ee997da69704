"""The planner's printout: params, FLOPs, per-rank memory by component, the verdict."""

from __future__ import annotations

from moe.plan.budget import Plan

GB = 1e9


def _gb(x: float) -> str:
    return f"{x / GB:8.2f} GB"


def format_plan(plan: Plan, title: str) -> str:
    c, L, m = plan.shape.cost, plan.layout, plan.memory
    acts = m.activations
    offload = " offload_optimizer" if L.offload_optimizer else ""
    lines = [
        title,
        f"params           total {c.total_params / 1e6:,.1f} M, active {c.active_params / 1e6:,.1f} M per token "
        f"(routed experts {c.expert_params / 1e6:,.1f} M)",
        f"FLOPs per token  {c.train_flops_per_token() / 1e9:,.3f} GFLOP (training: forward + backward)",
        f"layout           {L.world_size} ranks: dp {L.dp}, ep {L.ep}, expert-dp {L.expert_dp}, pipeline {L.stages}, "
        f"ZeRO-{L.zero_stage}, {L.precision}{offload}; micro-batch {L.micro_batch} x {L.seq_len} tokens",
        "memory per rank",
        f"  params             {_gb(m.params)}",
        f"  grads              {_gb(m.grads)}",
        f"  fp32 master        {_gb(m.master_params)}",
        f"  optimizer states   {_gb(m.optimizer_states)}",
        f"  optimizer step tmp {_gb(m.step_workspace)}",
        f"  activations        {_gb(acts.full)}   (with checkpointing {_gb(acts.checkpointed).strip()}, "
        f"train.recompute=mlp {_gb(acts.mlp_checkpointed).strip()})"
        + (f"   <- ds_config activation_checkpointing, recompute={m.recompute}" if m.checkpointing else ""),
        f"    MoE capacity buffers {_gb(acts.moe_buffers)}",
        f"    logits + loss        {_gb(acts.head + acts.logits_workspace)}",
        f"  peak               {_gb(m.peak)}   (without checkpointing {_gb(m.with_checkpointing(False).peak).strip()}, "
        f"with {_gb(m.with_checkpointing().peak).strip()})",
    ]
    if m.host:
        lines.append(f"  host (offloaded)   {_gb(m.host)}")
    lines.append(f"device budget      {_gb(plan.budget)}, usable {_gb(plan.usable).strip()} (10% kept free)")
    verdict = "FITS" if plan.fits else "DOES NOT FIT"
    if plan.suggested_micro_batch:
        suggestion = f"largest micro-batch that fits: {plan.suggested_micro_batch}"
    else:
        suggestion = "even micro-batch 1 does not fit"
    if not plan.fits and plan.fits_with_checkpointing:
        suggestion += "; fits with activation checkpointing (an activation_checkpointing section in the ds_config)"
    lines.append(f"verdict            {verdict}; {suggestion}")
    return "\n".join(lines)
