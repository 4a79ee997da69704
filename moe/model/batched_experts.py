"""DeepSpeed's `Experts` container, run as three batched matmuls instead of a Python loop over local experts.

`deepspeed.moe.experts.Experts.forward` chunks the dispatched tokens (ep, E_local, C, d) by expert and calls each
expert in turn: 3 matmuls per expert, each launched separately. Every expert's buffer has the same capacity C, so
the E_local experts are one batched GEMM per projection (`torch.bmm`). The weights stay one SwiGLU module per expert
(the parameters DeepSpeed marks for the expert-data-parallel group and writes into per-expert checkpoint files, so
checkpoints are the same with and without this); the forward stacks them, one copy of the local expert weights
per call. `moe.batched_experts` turns it on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from deepspeed.moe.experts import Experts


class BatchedExperts(Experts):
    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """inputs: (ep, E_local, C, d) tokens dispatched to this rank's experts -> (ep, E_local, C, d)."""
        ep, E, C, d = inputs.shape
        experts = self.deepspeed_experts
        ff = experts[0].gate_proj.out_features
        x = inputs.transpose(0, 1).reshape(E, ep * C, d)  # (E, R, d): each expert's rows from every EP rank
        gate_up = torch.stack([w for e in experts for w in (e.gate_proj.weight, e.up_proj.weight)])  # (2E, ff, d)
        gate_up = gate_up.view(E, 2 * ff, d)  # per expert: the gate rows, then the up rows
        down = torch.stack([e.down_proj.weight for e in experts])  # (E, d, ff)
        g, u = torch.bmm(x, gate_up.transpose(1, 2)).split(ff, dim=-1)  # (E, R, ff) each
        out = torch.bmm(F.silu(g) * u, down.transpose(1, 2))  # (E, R, d)
        return out.view(E, ep, C, d).transpose(0, 1)


def use_batched_experts(moe_layer) -> None:
    """Swap a `deepspeed.moe.layer.MoE`'s expert container for BatchedExperts, keeping its modules and parameters."""
    experts = moe_layer.deepspeed_moe.experts
    batched = BatchedExperts.__new__(BatchedExperts)
    batched.__dict__.update(experts.__dict__)  # the same ModuleList, parameters and expert-group marks
    moe_layer.deepspeed_moe.experts = batched
