"""Plain loop-over-experts MoE: the oracle the DeepSpeed fast path is tested against.

Routing follows DeepSpeed's TopKGate in dropless mode: softmax over expert logits, top-k experts per token;
top-1 weights the output by the raw gate probability, top-k (k >= 2) renormalizes over the chosen k. With a
routing bias (aux-loss-free balancing), the top-k choice ranks softmax + bias while the weights stay the
unbiased probabilities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reference_moe(
    x: torch.Tensor,
    router_weight: torch.Tensor,
    experts: list,
    k: int,
    bias: torch.Tensor | None = None,
    normalize: bool | None = None,
) -> torch.Tensor:
    """x: (B, T, d); router_weight: (E, d); experts: E callables (n, d) -> (n, d); bias: (E,) or None.
    normalize: renormalize the k weights to sum 1 (True), keep raw probabilities (False), or None = DeepSpeed's
    rule (renormalize iff k >= 2). Returns (B, T, d)."""
    tokens = x.reshape(-1, x.shape[-1])  # (S, d)
    probs = F.softmax(tokens.float() @ router_weight.float().t(), dim=-1)  # (S, E)
    scores = probs if bias is None else probs + bias.float()
    top_idx = scores.topk(k, dim=-1).indices  # (S, k)
    top_p = probs.gather(1, top_idx)  # (S, k)
    if (k > 1) if normalize is None else normalize:
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
    gate = moe_mlp.moe.deepspeed_moe.gate
    experts = list(moe_mlp.moe.deepspeed_moe.experts.deepspeed_experts)
    out = reference_moe(x, gate.wg.weight, experts, gate.k, getattr(gate, "routing_bias", None))
    return out * moe_mlp.routed_scaling_factor


def reference_residual_moe(moe_mlp, x: torch.Tensor) -> torch.Tensor:
    """Residual-MoE (use_residual) as DeepSpeed's MoE.forward computes it, with the loop reference for the experts:
    coef = softmax(coefficient(x)) (B, T, 2); out = moe_out * coef[..., 0] + mlp_out * coef[..., 1]."""
    moe = moe_mlp.moe
    coef = F.softmax(moe.coefficient(x), dim=-1)  # (B, T, 2)
    return reference_from_layer(moe_mlp, x) * coef[..., 0:1] + moe.mlp(x) * coef[..., 1:]
