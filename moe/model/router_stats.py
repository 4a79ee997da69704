"""Router telemetry of one MoE layer: tokens per expert, load imbalance, dropped tokens, router entropy, and the
router losses (balance aux loss, z-loss, sequence-wise balance loss).

Collected by a forward hook on the gate from what it already returns (the dispatch mask) and the router logits
it keeps (RouterGate's `last_logits`; a plain TopKGate's are recomputed). Sums stay on this
rank and on the layer's device (no collective and no host sync on the hot path); the trainer all-reduces every
layer's sums in one call per log step.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from moe.model.replay import is_replaying


class RouterStats:
    def __init__(self, gate: torch.nn.Module, num_experts: int, top_k: int):
        self.num_experts, self.top_k = num_experts, top_k
        self.enabled = True
        # [kept tokens per expert (E) | entropy sum | tokens | routing slots requested | aux sum | loss count |
        #  z-loss sum | seq-aux sum]; the layers of a PR-MoE model have different E, hence different widths
        self.sums = torch.zeros(num_experts + 7, dtype=torch.float64)
        gate.register_forward_hook(self._on_gate)

    def reset(self) -> None:
        self.sums.zero_()

    @torch.no_grad()
    def _on_gate(self, gate, inputs, output) -> None:
        if not (self.enabled and gate.training) or is_replaying():
            return
        x = inputs[0].reshape(-1, inputs[0].shape[-1])  # (S, d)
        logits = getattr(gate, "last_logits", None)  # RouterGate keeps this forward's logits
        if logits is None or logits.shape[0] != x.shape[0]:
            logits = F.linear(x.float(), gate.wg.weight.float())
        probs = F.softmax(logits, dim=-1)  # (S, E)
        entropy = -(probs * probs.clamp_min(1e-20).log()).sum()
        self._move_to(x.device)
        E = self.num_experts
        self.sums[:E] += kept_per_expert(output, E)
        self.sums[E] += entropy
        self.sums[E + 1] += x.shape[0]
        self.sums[E + 2] += x.shape[0] * self.top_k

    def _move_to(self, device: torch.device) -> None:
        if self.sums.device != device:  # a meta tensor (built by from_pretrained) holds no sums yet
            self.sums = torch.zeros_like(self.sums, device=device) if self.sums.is_meta else self.sums.to(device)

    def record_losses(self, losses, training: bool) -> None:
        """losses: a RouterLosses (balance, z, seq_aux) of one forward; recorded for training forwards only, once
        (an activation-checkpointing recompute is skipped, as in the gate hook)."""
        if self.enabled and training and not is_replaying():
            E = self.num_experts
            self._move_to(losses.balance.device)
            self.sums[E + 3] += losses.balance.detach()
            self.sums[E + 4] += 1
            self.sums[E + 5] += losses.z.detach()
            self.sums[E + 6] += losses.seq_aux.detach()


def kept_per_expert(gate_output: tuple, num_experts: int) -> torch.Tensor:
    """(E,) routes each expert accepted (within capacity), from either of TopKGate's output forms."""
    if isinstance(gate_output[2], torch.Tensor):  # dense: (l_aux, combine (S, E, C), dispatch mask (S, E, C), counts)
        return gate_output[2].sum(dim=(0, 2))
    # sparse routes: (l_aux, capacity, E, expert index per route, locations, gates, counts); index -1 = dropped.
    # Count into E + 1 bins, the first for drops, with a fixed-size scatter: boolean indexing (nonzero) and CUDA's
    # bincount (which reads the max index) would each stall the host until the device catches up, every layer.
    indices = gate_output[3].flatten().long() + 1  # (k * S,), 0 = dropped
    counts = torch.zeros(num_experts + 1, dtype=torch.float64, device=indices.device)
    return counts.scatter_add_(0, indices, torch.ones_like(indices, dtype=torch.float64))[1:]


def summarize(sums: torch.Tensor, num_experts: int) -> dict:
    """Metrics from (all-reduced) sums of width E + 5, or E + 7 with the z-loss and seq-aux sums (RouterStats):
    a dict of scalars plus tokens_per_expert as a list."""
    kept = sums[:num_experts]
    entropy, tokens, requested, aux_sum, aux_count, *loss_sums = sums[num_experts:].tolist()
    mean_load = float(kept.mean())
    out = {
        "tokens_per_expert": [int(c) for c in kept.tolist()],
        "max_mean_load": float(kept.max()) / mean_load if mean_load else 0.0,
        "dropped_frac": 1.0 - float(kept.sum()) / requested if requested else 0.0,
        "router_entropy": entropy / tokens if tokens else 0.0,  # nats; uniform routing = ln(E)
        "router_entropy_norm": entropy / tokens / math.log(num_experts) if tokens and num_experts > 1 else 0.0,
        "aux_loss": aux_sum / aux_count if aux_count else 0.0,
    }
    for name, total in zip(("z_loss", "seq_aux_loss"), loss_sums):
        out[name] = total / aux_count if aux_count else 0.0
    return out
