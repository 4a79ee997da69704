"""Plain loop-over-experts MoE: the oracle the DeepSpeed fast path is tested against.

Routing follows DeepSpeed's TopKGate in dropless mode: softmax over expert logits, top-k experts per token;
top-1 weights the output by the raw gate probability, top-k (k >= 2) renormalizes over the chosen k.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def reference_moe(x: torch.Tensor, router_weight: torch.Tensor, experts: list, k: int) -> torch.Tensor:
    """x: (B, T, d); router_weight: (E, d); experts: E callables (n, d) -> (n, d). Returns (B, T, d)."""
    tokens = x.reshape(-1, x.shape[-1])  # (S, d)
    probs = F.softmax(tokens.float() @ router_weight.float().t(), dim=-1)  # (S, E)
    top_p, top_idx = probs.topk(k, dim=-1)  # (S, k)
    if k > 1:
        top_p = top_p / top_p.sum(dim=-1, keepdim=True)
    out = torch.zeros_like(tokens)
    for e, expert in enumerate(experts):
        for slot in range(k):
            chosen = top_idx[:, slot] == e  # (S,)
            if chosen.any():
                out[chosen] += top_p[chosen, slot, None].to(tokens.dtype) * expert(tokens[chosen])
    return out.reshape(x.shape)


def reference_from_layer(moe_mlp, x: torch.Tensor) -> torch.Tensor:
    """Run `reference_moe` with the weights of one of our `MoEMLP` layers (all experts local)."""
    inner = moe_mlp.moe.deepspeed_moe
    experts = list(inner.experts.deepspeed_experts)
    return reference_moe(x, inner.gate.wg.weight, experts, moe_mlp.moe.deepspeed_moe.gate.k)
