"""The MoE MLP: DeepSpeed's own `deepspeed.moe.layer.MoE` with a SwiGLU expert and our RouterGate.

DeepSpeed owns dispatch (all-to-all over the expert-parallel group), capacity and the expert parameter marking
(`allreduce=False`, `group_name`), so the engine reduces expert gradients over the expert-data-parallel group
and writes per-expert checkpoint files. The gate is DeepSpeed's TopKGate extended in moe/model/gate.py.
"""

from __future__ import annotations

import torch
from deepspeed.moe.layer import MoE
from torch import nn

from moe.model.batched_experts import use_batched_experts
from moe.model.gate import RouterGate, RouterLosses
from moe.model.layers import SwiGLU
from moe.model.router_stats import RouterStats


class MoEMLP(nn.Module):
    def __init__(self, config, num_experts: int | None = None):
        """num_experts: this layer's count (PR-MoE layers differ); None = config.num_experts."""
        super().__init__()
        num_experts = config.num_experts if num_experts is None else num_experts
        gate_args = dict(
            k=config.num_experts_per_tok,
            capacity_factor=config.capacity_factor,
            eval_capacity_factor=config.eval_capacity_factor,
            min_capacity=config.min_capacity,
            noisy_gate_policy=config.noisy_gate_policy,
            drop_tokens=config.drop_tokens,
            use_rts=config.use_rts,
            top2_2nd_expert_sampling=config.top2_2nd_expert_sampling,
        )
        self.moe = MoE(
            hidden_size=config.d_model,
            expert=SwiGLU(config.d_model, config.expert_d_ff),
            num_experts=num_experts,
            ep_size=config.ep_size,
            use_residual=config.use_residual,
            **gate_args,
        )
        # MoE() always builds a plain TopKGate; swap in ours (same arguments, same `wg` name) before DeepSpeed
        # hands the gate its expert-parallel group in deepspeed.initialize.
        self.moe.deepspeed_moe.gate = RouterGate(
            config.d_model,
            num_experts,
            **gate_args,
            z_loss_coef=config.z_loss_coef,
            seq_aux_loss_coef=config.seq_aux_loss_coef,
            bias_update_rate=config.bias_update_rate,
        )
        if config.batched_experts:
            use_batched_experts(self.moe)
        self.num_experts = num_experts
        self.routed_scaling_factor = getattr(config, "routed_scaling_factor", 1.0)  # configs saved before it: 1
        self.train_sampling = (config.top2_2nd_expert_sampling, config.use_rts)
        self.router_stats = RouterStats(self.moe.deepspeed_moe.gate, num_experts, config.num_experts_per_tok)

    @property
    def gate(self) -> RouterGate:
        return self.moe.deepspeed_moe.gate

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RouterLosses]:
        """x: (B, T, d) -> (output (B, T, d), this layer's RouterLosses (scalars))."""
        gate = self.gate
        # DeepSpeed's gate samples the 2nd expert (top-2) and the kept tokens (RTS) in eval mode too, which
        # makes validation and generate() random; they are training-time regularizers, so keep them to training.
        gate.top2_2nd_expert_sampling, gate.use_rts = (s and self.training for s in self.train_sampling)
        gate.tokens_per_sequence = x.shape[1]
        out, _, _ = self.moe(x)  # (B, T, d): sum over a token's kept routes of weight x expert output
        if self.routed_scaling_factor != 1.0:
            out = out * self.routed_scaling_factor
        losses = gate.last_losses
        self.router_stats.record_losses(losses, self.training)
        return out, losses
