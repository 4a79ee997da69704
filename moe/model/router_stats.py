"""Router telemetry of one MoE layer: tokens per expert, load imbalance, dropped tokens, router entropy, aux loss.

Collected by a forward hook on DeepSpeed's TopKGate from what the gate already returns (the dispatch mask) plus
a recomputed softmax of the router logits (an S x d x E matmul, small next to the experts). Sums stay on this
rank and on the layer's device (no collective and no host sync on the hot path); the trainer all-reduces every
layer's sums in one call per log step.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class RouterStats:
    def __init__(self, gate: torch.nn.Module, num_experts: int, top_k: int):
        self.num_experts, self.top_k = num_experts, top_k
        self.enabled = True
        # [kept tokens per expert (E) | entropy sum | tokens | routing slots requested | aux sum | aux count]
        self.sums = torch.zeros(num_experts + 5, dtype=torch.float64)
        gate.register_forward_hook(self._on_gate)

    def reset(self) -> None:
        self.sums.zero_()

    @torch.no_grad()
    def _on_gate(self, gate, inputs, output) -> None:
        if not (self.enabled and gate.training):
            return
        x = inputs[0].reshape(-1, inputs[0].shape[-1])  # (S, d)
        probs = F.softmax(F.linear(x.float(), gate.wg.weight.float()), dim=-1)  # (S, E)
        entropy = -(probs * probs.clamp_min(1e-20).log()).sum()
        if self.sums.device != x.device:
            self.sums = self.sums.to(x.device)
        E = self.num_experts
        self.sums[:E] += kept_per_expert(output, E)
        self.sums[E] += entropy
        self.sums[E + 1] += x.shape[0]
        self.sums[E + 2] += x.shape[0] * self.top_k

    def record_aux_loss(self, aux_loss: torch.Tensor) -> None:
        if self.enabled and torch.is_grad_enabled():
            self.sums[-2] += aux_loss.detach()
            self.sums[-1] += 1


def kept_per_expert(gate_output: tuple, num_experts: int) -> torch.Tensor:
    """(E,) routes each expert accepted (within capacity), from either of TopKGate's output forms."""
    if isinstance(gate_output[2], torch.Tensor):  # dense: (l_aux, combine (S, E, C), dispatch mask (S, E, C), counts)
        return gate_output[2].sum(dim=(0, 2))
    # sparse routes: (l_aux, capacity, E, expert index per route, locations, gates, counts); index -1 = dropped
    indices = gate_output[3].flatten().long()
    return torch.bincount(indices[indices >= 0], minlength=num_experts)


def summarize(sums: torch.Tensor, num_experts: int) -> dict:
    """Metrics from (all-reduced) sums: a dict of scalars plus tokens_per_expert as a list."""
    kept = sums[:num_experts]
    entropy, tokens, requested, aux_sum, aux_count = sums[num_experts:].tolist()
    mean_load = float(kept.mean())
    return {
        "tokens_per_expert": [int(c) for c in kept.tolist()],
        "max_mean_load": float(kept.max()) / mean_load if mean_load else 0.0,
        "dropped_frac": 1.0 - float(kept.sum()) / requested if requested else 0.0,
        "router_entropy": entropy / tokens if tokens else 0.0,  # nats; uniform routing = ln(E)
        "router_entropy_norm": entropy / tokens / math.log(num_experts) if tokens and num_experts > 1 else 0.0,
        "aux_loss": aux_sum / aux_count if aux_count else 0.0,
    }
