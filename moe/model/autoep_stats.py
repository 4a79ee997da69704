"""Router telemetry for AutoEP layers (`moe.impl: autoep`), in the same per-layer sums as moe/model/router_stats.py.

Tokens per expert come from the `tokens_per_expert` buffer that every AutoEP layer already accumulates on device
(no extra work on the hot path). Router entropy and the per-layer aux loss come from the router logits that the HF
model returns when it computes its aux loss (Mixtral, Qwen3-MoE); DeepSeek-V3 returns none, so its layers report
counts and load only. AutoEP is dropless, so nothing is ever dropped.
"""
from __future__ import annotations

import re
from contextlib import contextmanager

import torch
import torch.nn.functional as F


class AutoEPRouterStats:
    def __init__(self, named_layers: list[tuple[str, torch.nn.Module]], num_experts: int, top_k: int,
                 has_logits: bool):
        """named_layers: (module name, AutoEP layer) pairs, e.g. ("model.layers.3.mlp", layer)."""
        self.layers = [layer for _, layer in named_layers]
        self.layer_ids = [int(re.search(r"layers\.(\d+)\.", name).group(1)) for name, _ in named_layers]
        self.num_experts, self.top_k = num_experts, top_k
        self.has_logits = has_logits  # False: entropy and aux are not known, and are not reported
        self.enabled = True
        # per layer: [entropy sum | tokens | aux sum | aux count]; counts live in each layer's buffer
        self.logit_sums = torch.zeros(len(self.layers), 4, dtype=torch.float64)

    @torch.no_grad()
    def record(self, router_logits) -> None:
        """router_logits: the HF output's tuple of (tokens, E) logits, one per MoE layer, or None."""
        if not (self.enabled and router_logits):
            return
        from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func
        for n, logits in enumerate(router_logits):
            probs = F.softmax(logits.float(), dim=-1)  # (S, E)
            if self.logit_sums.device != probs.device:
                self.logit_sums = self.logit_sums.to(probs.device)
            self.logit_sums[n, 0] += -(probs * probs.clamp_min(1e-20).log()).sum()
            self.logit_sums[n, 1] += probs.shape[0]
            self.logit_sums[n, 2] += load_balancing_loss_func((logits,), self.num_experts, self.top_k)
            self.logit_sums[n, 3] += 1

    def sums(self) -> torch.Tensor:
        """(layers * (E + 5),) in RouterStats' layout: [kept per expert | entropy | tokens | requested | aux | n]."""
        rows = []
        for n, layer in enumerate(self.layers):
            counts = layer.tokens_per_expert.detach().double().to(self.logit_sums.device)  # (E,) routes per expert
            entropy, logit_tokens, aux, aux_n = self.logit_sums[n]
            tokens = counts.sum() / self.top_k  # every token takes top_k routes; AutoEP drops none
            entropy = entropy / logit_tokens * tokens if logit_tokens else entropy  # per-token mean, scaled
            rows.append(torch.cat([counts, torch.stack([entropy, tokens, tokens * self.top_k, aux, aux_n])]))
        return torch.cat(rows)

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
        self.logit_sums.zero_()
        for layer in self.layers:
            layer.tokens_per_expert.zero_()
