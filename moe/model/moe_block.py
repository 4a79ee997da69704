"""The MoE MLP: DeepSpeed's own `deepspeed.moe.layer.MoE` with a SwiGLU expert.

DeepSpeed owns routing (TopKGate), dispatch (all-to-all over the expert-parallel group) and the expert
parameter marking (`allreduce=False`, `group_name`), so the engine reduces expert gradients over the
expert-data-parallel group and writes per-expert checkpoint files.
"""
from __future__ import annotations

import torch
from deepspeed.moe.layer import MoE
from torch import nn

from moe.model.layers import SwiGLU
from moe.model.router_stats import RouterStats


class MoEMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.moe = MoE(
            hidden_size=config.d_model,
            expert=SwiGLU(config.d_model, config.expert_d_ff),
            num_experts=config.num_experts,
            ep_size=config.ep_size,
            k=config.num_experts_per_tok,
            capacity_factor=config.capacity_factor,
            eval_capacity_factor=config.eval_capacity_factor,
            min_capacity=config.min_capacity,
            use_residual=config.use_residual,
            noisy_gate_policy=config.noisy_gate_policy,
            drop_tokens=config.drop_tokens,
            use_rts=config.use_rts,
            top2_2nd_expert_sampling=config.top2_2nd_expert_sampling,
        )
        self.num_experts = config.num_experts
        self.train_sampling = (config.top2_2nd_expert_sampling, config.use_rts)
        self.router_stats = RouterStats(self.moe.deepspeed_moe.gate, config.num_experts, config.num_experts_per_tok)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, T, d) -> (output (B, T, d), aux loss scalar)."""
        # DeepSpeed's gate samples the 2nd expert (top-2) and the kept tokens (RTS) in eval mode too, which
        # makes validation and generate() random; they are training-time regularizers, so keep them to training.
        gate = self.moe.deepspeed_moe.gate
        gate.top2_2nd_expert_sampling, gate.use_rts = (s and self.training for s in self.train_sampling)
        out, aux_loss, _ = self.moe(x)
        self.router_stats.record_aux_loss(aux_loss)
        return out, aux_loss
