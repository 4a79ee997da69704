"""Router telemetry: tokens per expert, load imbalance, dropped routes, router entropy, and the router losses
(balance aux loss, z-loss, sequence-wise balance loss), per MoE layer.

Each layer keeps *named running sums* on its device (no collective and no host sync on the hot path):

    kept (E,)      routes each expert accepted (within capacity)
    requested ()   routing slots asked for (tokens x top-k)
    tokens ()      tokens routed
    entropy ()     sum over tokens of the router distribution's entropy (nats)
    top_prob ()    sum over tokens of the top expert's probability (native layers: top-1's combine weight)
    aux_loss (), z_loss (), seq_aux_loss ()   sums of each forward's loss
    losses ()      forwards whose losses were summed

Every sum is reduced over ranks by a sum (`REDUCTION`), so a whole model's telemetry is one all-reduce of named
tensors (moe.parallel.all_reduce_named). `summarize` turns one layer's summed values into metrics; a sum a path
does not keep (DeepSeek-V3 under AutoEP returns no router logits: no entropy or aux loss) gives no metric.

`RouterStats` fills them for one native layer from a forward hook on its gate (reusing the logits RouterGate keeps);
`GPTRouterTelemetry` gathers a model's layers, and moe/model/hf/autoep_stats.py does the same for AutoEP layers.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from moe.model.recompute import is_recomputing

REDUCTION = "sum"  # how every router sum combines over ranks
LOSS_NAMES = ("aux_loss", "z_loss", "seq_aux_loss")


def zero_sums(
    num_experts: int,
    device: torch.device | str = "cpu",
    losses: tuple[str, ...] = LOSS_NAMES,
    entropy: bool = True,
    top_prob: bool = False,
) -> dict[str, torch.Tensor]:
    """One layer's named sums, all zero (float64: counts stay exact)."""
    names = ["requested", "tokens", *(["entropy"] if entropy else []), *(["top_prob"] if top_prob else [])]
    names += [*losses, *(["losses"] if losses else [])]
    sums = {name: torch.zeros((), dtype=torch.float64, device=device) for name in names}
    sums["kept"] = torch.zeros(num_experts, dtype=torch.float64, device=device)
    return sums


def entropy_sum(logits: torch.Tensor, probs: torch.Tensor | None = None) -> torch.Tensor:
    """logits: (S, E) -> sum over the S tokens of the softmax distribution's entropy (nats), fp32. `probs`: that
    softmax when the caller has it already (RouterGate keeps it), which saves recomputing it every forward."""
    probs = F.softmax(logits.float(), dim=-1) if probs is None else probs  # (S, E)
    return torch.special.entr(probs).sum()  # entr(p) = -p log p, 0 at p = 0


def kept_per_expert(gate_output: tuple, num_experts: int) -> torch.Tensor:
    """(E,) routes each expert accepted (within capacity), from either of TopKGate's output forms."""
    if isinstance(gate_output[2], torch.Tensor):  # dense: (l_aux, combine (S, E, C), dispatch mask (S, E, C), counts)
        return gate_output[2].sum(dim=(0, 2)).double()
    # sparse routes: (l_aux, capacity, E, expert index per route, locations, gates, counts); index -1 = dropped.
    # Count into E + 1 bins, the first for drops, with a fixed-size scatter: boolean indexing (nonzero) and CUDA's
    # bincount (which reads the max index) would each stall the host until the device catches up, every layer.
    indices = gate_output[3].flatten().long() + 1  # (k * S,), 0 = dropped
    counts = torch.zeros(num_experts + 1, dtype=torch.float64, device=indices.device)
    return counts.scatter_add_(0, indices, torch.ones_like(indices, dtype=torch.float64))[1:]


def summarize(sums: dict[str, torch.Tensor]) -> dict:
    """Metrics of one layer from its (all-reduced) named sums: scalars, and tokens_per_expert as a list."""
    kept = sums["kept"]
    requested, tokens = float(sums["requested"]), float(sums["tokens"])
    mean_load = float(kept.mean())
    out = {
        "tokens_per_expert": [int(c) for c in kept.tolist()],
        "max_mean_load": float(kept.max()) / mean_load if mean_load else 0.0,
        "dropped_frac": 1.0 - float(kept.sum()) / requested if requested else 0.0,
    }
    if "entropy" in sums:
        entropy, experts = float(sums["entropy"]), kept.numel()
        out["router_entropy"] = entropy / tokens if tokens else 0.0  # nats; uniform routing = ln(E)
        out["router_entropy_norm"] = entropy / tokens / math.log(experts) if tokens and experts > 1 else 0.0
    if "top_prob" in sums:  # top-1 weighs its expert's output by this; 1/E at a uniform router
        out["top_prob"] = float(sums["top_prob"]) / tokens if tokens else 0.0
    forwards = float(sums["losses"]) if "losses" in sums else 0.0
    for name in LOSS_NAMES:
        if name in sums:
            out[name] = float(sums[name]) / forwards if forwards else 0.0
    return out


class RouterStats:
    """The named sums of one native MoE layer, filled by a forward hook on its gate and by `record_losses`."""

    def __init__(self, gate: torch.nn.Module, num_experts: int, top_k: int):
        self.num_experts, self.top_k = num_experts, top_k
        self.enabled = True
        self._sums = zero_sums(num_experts, top_prob=True)
        self.pending_tokens = 0  # tokens routed since the sums were last read
        self.pending_losses: list[tuple] = []  # each forward's detached router losses since then
        gate.register_forward_hook(self._on_gate)

    @property
    def sums(self) -> dict[str, torch.Tensor]:
        s = self._sums
        if self.pending_tokens:
            s["tokens"] += self.pending_tokens
            s["requested"] += self.pending_tokens * self.top_k
            self.pending_tokens = 0
        if self.pending_losses:
            per_forward = [torch.stack([loss.double() for loss in losses]) for losses in self.pending_losses]
            self._move_to(per_forward[0].device)
            totals = torch.stack(per_forward).sum(dim=0)  # (3,): balance, z, seq_aux
            for name, total in zip(LOSS_NAMES, totals):
                s[name] += total
            s["losses"] += len(self.pending_losses)
            self.pending_losses = []
        return s

    def reset(self) -> None:
        self.pending_tokens, self.pending_losses = 0, []
        for value in self._sums.values():
            value.zero_()

    def _move_to(self, device: torch.device) -> None:
        if self._sums["kept"].device != device:
            self._sums = {k: v.to(device) for k, v in self._sums.items()}

    @torch.no_grad()
    def _on_gate(self, gate, inputs, output) -> None:
        if not (self.enabled and gate.training) or is_recomputing():
            return
        x = inputs[0].reshape(-1, inputs[0].shape[-1])  # (S, d)
        logits = getattr(gate, "last_logits", None)  # RouterGate keeps this forward's logits and softmax
        probs = getattr(gate, "last_probs", None)
        if logits is None or logits.shape[0] != x.shape[0]:
            logits, probs = F.linear(x.float(), gate.wg.weight.float()), None
        probs = F.softmax(logits.float(), dim=-1) if probs is None else probs  # (S, E)
        self._move_to(x.device)
        s = self._sums
        s["kept"] += kept_per_expert(output, self.num_experts)
        s["entropy"] += entropy_sum(logits, probs)
        s["top_prob"] += probs.amax(dim=-1).sum()
        self.pending_tokens += x.shape[0]  # host counts: no tensor op per forward; folded into the sums when read

    def record_losses(self, losses, training: bool) -> None:
        """losses: a RouterLosses (balance, z, seq_aux) of one forward; recorded for training forwards only, once
        (an activation-checkpointing recompute is skipped, as in the gate hook). Kept as a list and summed when the
        sums are read: no tensor op per forward."""
        if self.enabled and training and not is_recomputing():
            self.pending_losses.append(tuple(loss.detach() for loss in losses))  # detached: frees the graph


class GPTRouterTelemetry:
    """Router telemetry of our GPT: every MoE layer of the config by index, the ones this rank holds from their
    RouterStats, the others (on another pipeline stage) as zeros, so every rank reduces the same named tensors."""

    def __init__(self, config, local: dict[int, RouterStats], enabled: bool = True):
        self.config, self.local = config, local
        for stats in local.values():
            stats.enabled = enabled
        self.enabled = enabled

    def record(self, output) -> None:
        """Nothing to do: the gate hooks record during the forward."""

    def paused(self):
        return nullcontext()  # the hooks count training forwards only

    def sums(self) -> dict[int, dict[str, torch.Tensor]]:
        """{MoE layer index: its named sums} for every MoE layer of the model."""
        if not self.enabled:
            return {}
        return {
            layer: self.local[layer].sums
            if layer in self.local
            else zero_sums(self.config.experts_in_layer(layer), top_prob=True)
            for layer in self.config.moe_layer_ids()
        }

    def reset(self) -> None:
        for stats in self.local.values():
            stats.reset()
