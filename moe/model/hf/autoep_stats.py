"""Router telemetry for AutoEP layers (`moe.impl: autoep`), in the named sums of moe/model/router_stats.py.

Tokens per expert come from the `tokens_per_expert` buffer that every AutoEP layer already accumulates on device
(no extra work on the hot path). Router entropy and the per-layer aux loss come from the router logits that the HF
model returns when it computes its aux loss (Mixtral, Qwen3-MoE); DeepSeek-V3 returns none, so its layers keep no
entropy or loss sums and report counts and load only. AutoEP is dropless, so nothing is ever dropped.
"""

from __future__ import annotations

import re
from contextlib import contextmanager

import torch

from moe.model.router_stats import entropy_sum, zero_sums


def autoep_layers(module: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(name, layer) of every AutoEP MoE layer that deepspeed.initialize swapped in, in model order."""
    return [(name, m) for name, m in module.named_modules() if type(m).__name__ == "AutoEPMoELayer"]


class AutoEPRouterTelemetry:
    def __init__(
        self,
        named_layers: list[tuple[str, torch.nn.Module]],
        num_experts: int,
        top_k: int,
        has_logits: bool,
        enabled: bool = True,
    ):
        """named_layers: (module name, AutoEP layer) pairs, e.g. ("model.layers.3.mlp", layer)."""
        self.layers = [layer for _, layer in named_layers]
        self.layer_ids = [int(re.search(r"layers\.(\d+)\.", name).group(1)) for name, _ in named_layers]
        self.num_experts, self.top_k = num_experts, top_k
        self.has_logits = has_logits  # False: entropy and aux are not known, and are not reported
        self.enabled = enabled
        # per layer, from the router logits: entropy, tokens those logits covered, aux loss, forwards
        self.logit_sums = [self._zero_logit_sums() for _ in self.layers]

    def _zero_logit_sums(self) -> dict[str, torch.Tensor]:
        return {name: torch.zeros((), dtype=torch.float64) for name in ("entropy", "tokens", "aux_loss", "losses")}

    @torch.no_grad()
    def record(self, output) -> None:
        """After a training forward: its router logits (the HF output's tuple of (tokens, E), one per MoE layer)."""
        router_logits = getattr(output, "router_logits", None)
        if not (self.enabled and router_logits):
            return
        from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

        for sums, logits in zip(self.logit_sums, router_logits):
            if sums["tokens"].device != logits.device:
                sums.update({k: v.to(logits.device) for k, v in sums.items()})
            sums["entropy"] += entropy_sum(logits)
            sums["tokens"] += logits.shape[0]
            sums["aux_loss"] += load_balancing_loss_func((logits,), self.num_experts, self.top_k)
            sums["losses"] += 1

    def sums(self) -> dict[int, dict[str, torch.Tensor]]:
        """{MoE layer index: named sums} (moe/model/router_stats.py's names) of every AutoEP layer."""
        if not (self.enabled and self.layers):
            return {}
        out = {}
        for layer_id, layer, logit in zip(self.layer_ids, self.layers, self.logit_sums):
            kept = layer.tokens_per_expert.detach().double()  # (E,) routes per expert
            sums = zero_sums(
                self.num_experts, kept.device, losses=("aux_loss",) if self.has_logits else (), entropy=self.has_logits
            )
            tokens = kept.sum() / self.top_k  # every token takes top_k routes; AutoEP drops none
            sums.update(kept=kept, tokens=tokens, requested=tokens * self.top_k)
            if self.has_logits:  # the logits' per-token mean entropy, over the counted tokens
                entropy = logit["entropy"].to(kept.device)
                scale = tokens / logit["tokens"].to(kept.device) if float(logit["tokens"]) else 1.0
                sums.update(
                    entropy=entropy * scale,
                    aux_loss=logit["aux_loss"].to(kept.device),
                    losses=logit["losses"].to(kept.device),
                )
            out[layer_id] = sums
        return out

    @contextmanager
    def paused(self):
        """AutoEP counts routes in eval mode too: keep validation passes out of the training counts."""
        saved = [layer.tokens_per_expert.clone() for layer in self.layers]
        try:
            yield
        finally:
            for layer, counts in zip(self.layers, saved):
                layer.tokens_per_expert.copy_(counts)

    def reset(self) -> None:
        for sums in self.logit_sums:
            for value in sums.values():
                value.zero_()
        for layer in self.layers:
            layer.tokens_per_expert.zero_()
