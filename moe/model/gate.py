"""Our router: DeepSpeed's TopKGate plus router z-loss, a sequence-wise balance loss and aux-loss-free balancing.

Why a TopKGate subclass and not a hook: DeepSpeed's gate computes its logits inside `forward` with
`F.linear(x, wg.weight)` (no call of `wg`, so no hook sees them) and selects experts by the softmax scores
only. `RouterGate` computes the logits exactly as TopKGate does (fp32, the same Jitter noise), derives the two
extra losses from them, and then routes:

- without a routing bias, through DeepSpeed's own `top1gating` / `top2gating` / `topkgating`, unchanged;
- with one (`bias_update_rate > 0`, DeepSeek-V3), through `biased_topk_routing` below: no DeepSpeed gating
  function can select by biased scores while weighting by unbiased ones, so it re-implements selection and
  reuses DeepSpeed's capacity formula (`_capacity`), dropless all-reduce and sparse-route output format, which
  `MOELayer` dispatches and combines unchanged.

It returns DeepSpeed's gate output (the l_aux balance loss first) and leaves this forward's `RouterLosses` in
`last_losses`, the way DeepSpeed's MOELayer leaves `l_aux`: MoEMLP reads it right after the call.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from deepspeed.comm import pg_utils
from deepspeed.moe.sharded_moe import (
    TOPK_GATE_TIMER,
    TopKGate,
    _capacity,
    _stack_routes,
    multiplicative_jitter,
    top1gating,
    top2gating,
    topkgating,
)

from moe.model.recompute import is_recomputing


class RouterLosses(NamedTuple):
    balance: torch.Tensor  # DeepSpeed's l_aux (GShard / Switch balance loss over the whole micro-batch)
    z: torch.Tensor  # ST-MoE router z-loss
    seq_aux: torch.Tensor  # DeepSeek-V3 sequence-wise balance loss

    @staticmethod
    def zeros(like: torch.Tensor) -> RouterLosses:
        zero = like.new_zeros((), dtype=torch.float32)
        return RouterLosses(zero, zero, zero)


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """logits: (S, E) -> mean over tokens of logsumexp(logits)^2 (ST-MoE, eq. 5)."""
    return torch.logsumexp(logits, dim=-1).square().mean()


def sequence_balance_loss(
    probs: torch.Tensor, selected: torch.Tensor, k: int, tokens_per_sequence: int
) -> torch.Tensor:
    """DeepSeek-V3's complementary sequence-wise balance loss, averaged over sequences (1.0 = perfectly balanced).

    probs: (S, E) router probabilities; selected: (S, E) 1 where a token chose the expert (its top-k);
    S = N sequences x T tokens. Per sequence: f_e = E / (k T) * (tokens choosing e), P_e = mean_t probs[t, e],
    loss = sum_e f_e P_e. Only P carries gradient.
    """
    S, E = probs.shape
    T = tokens_per_sequence
    f = selected.float().view(S // T, T, E).sum(dim=1) * (E / (k * T))  # (N, E)
    P = probs.view(S // T, T, E).mean(dim=1)  # (N, E)
    return (f * P).sum(dim=-1).mean()


def biased_topk_routing(
    logits: torch.Tensor,
    bias: torch.Tensor,
    k: int,
    capacity_factor: float,
    min_capacity: int,
    drop_tokens: bool,
    ep_group=None,
) -> tuple:
    """Top-k routing where `bias` (E,) shifts *which* experts a token picks, never its weights (DeepSeek-V3).

    logits: (S, E). Returns DeepSpeed's sparse-route gate output, as `topkgating(..., sparse_routes=True)`:
    (l_aux, capacity, E, expert index (k, S) with -1 = dropped, slot in the expert buffer (k, S),
    combine weight (k, S), routes each expert was selected for (E,)).
    Weights are the unbiased softmax probabilities: raw for k = 1 (as DeepSpeed's top-1), renormalized over the
    kept routes for k >= 2 (as its top-2 / top-k). With drop_tokens, capacity is DeepSpeed's
    max(ceil(S / E * capacity_factor * k), min_capacity) and an expert keeps its highest-probability tokens
    (DeepSpeed's top-k "probs" drop policy); dropless, capacity is the busiest expert's count, maximized over the
    expert-parallel group so that every rank's all-to-all has the same shape.
    """
    gates = F.softmax(logits, dim=1)  # (S, E)
    S, E = gates.shape
    _, top_idx = torch.topk(gates + bias.float(), k=k, dim=1)  # (S, k): the bias only decides the choice
    mask = torch.zeros_like(gates, dtype=torch.bool).scatter_(1, top_idx, True)  # (S, E)
    exp_counts = mask.sum(dim=0).detach()  # (E,)
    # topkgating's l_aux (top2gating counts first choices only; the two agree when the load is balanced)
    l_aux = torch.mean(gates.mean(dim=0) * mask.float().mean(dim=0)) * E * E / k
    if drop_tokens:
        capacity = _capacity(gates, torch.tensor(capacity_factor * k), torch.tensor(min_capacity))
        chosen = gates.detach() * mask  # (S, E)
        keep = torch.topk(chosen, k=min(int(capacity), S), dim=0).indices  # (C', E): best tokens per expert
        mask &= torch.zeros_like(mask).scatter_(0, keep, True)
    else:
        capacity = exp_counts.max()
        if pg_utils.is_parallel(ep_group):  # as in DeepSpeed's own gating functions
            import deepspeed.comm as dist

            dist.all_reduce(capacity, op=dist.ReduceOp.MAX, group=ep_group)
    locations = torch.cumsum(mask, dim=0) - 1  # (S, E): each kept route's slot in its expert's buffer
    weights = gates * mask  # (S, E)
    if k > 1:
        weights = weights / weights.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(weights.dtype).eps)
    kept = mask.gather(1, top_idx)  # (S, k)
    indices = torch.where(kept, top_idx, torch.full_like(top_idx, -1))
    return (
        l_aux,
        capacity,
        E,
        _stack_routes(indices, torch.int32),
        _stack_routes(locations.gather(1, top_idx) * kept, torch.int32),
        _stack_routes(weights.gather(1, top_idx)),
        exp_counts,
    )


class RouterGate(TopKGate):
    """DeepSpeed's TopKGate with `z_loss_coef`, `seq_aux_loss_coef` and `bias_update_rate` (see the module doc)."""

    def __init__(
        self, *args, z_loss_coef: float = 0.0, seq_aux_loss_coef: float = 0.0, bias_update_rate: float = 0.0, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.z_loss_coef, self.seq_aux_loss_coef = z_loss_coef, seq_aux_loss_coef
        self.bias_update_rate = bias_update_rate
        self.tokens_per_sequence: int | None = None  # set by MoEMLP before each call; None = one sequence
        self.last_losses: RouterLosses | None = None
        if bias_update_rate > 0:
            E = self.wg.out_features
            # Persistent: DeepSpeed's module state dict (mp_rank_*_model_states.pt) carries it. Its name must not
            # contain "expert", which DeepSpeed's checkpointing reserves for expert-parallel parameters.
            self.register_buffer("routing_bias", torch.zeros(E))
            # Routes per expert selected since the last update (int64: exact, and not cast by .bfloat16()).
            self.register_buffer("selection_counts", torch.zeros(E, dtype=torch.long), persistent=False)

    def forward(
        self,
        input: torch.Tensor,
        used_token: torch.Tensor | None = None,
        sparse_routes: bool = False,
        use_tutel: bool = False,
    ) -> tuple:
        """input: (S, d). Returns DeepSpeed's gate output; this call's RouterLosses go to `last_losses`."""
        if self.wall_clock_breakdown:  # the engine's MoE timing breakdown, as in TopKGate
            self.timers(TOPK_GATE_TIMER).start()
        x = input.float()
        if self.noisy_gate_policy == "Jitter" and self.training:
            x = multiplicative_jitter(x, device=input.device)
        logits = F.linear(x, self.wg.weight.float())  # (S, E), fp32 as in TopKGate
        self.last_logits = logits.detach()  # for router telemetry (router_stats.py): no second router matmul
        biased = self.bias_update_rate > 0
        z, seq_aux = self._extra_losses(logits, self.routing_bias if biased else None)
        capacity_factor = self.capacity_factor if self.training else self.eval_capacity_factor
        if biased:
            if used_token is not None or not sparse_routes:
                raise ValueError(
                    "RouterGate with a routing bias returns sparse routes for all tokens only, "
                    "which is what deepspeed's MOELayer asks for"
                )
            output = biased_topk_routing(
                logits, self.routing_bias, self.k, capacity_factor, self.min_capacity, self.drop_tokens, self.ep_group
            )
            if self.training and not is_recomputing():  # an activation-checkpointing recompute counts nothing
                self.selection_counts += output[-1]
        elif self.k == 1:
            output = top1gating(
                logits,
                capacity_factor,
                self.min_capacity,
                used_token,
                self.noisy_gate_policy if self.training else None,
                self.drop_tokens,
                self.use_rts,
                self.ep_group,
                sparse_routes,
                use_tutel,
            )
        elif self.k == 2:  # top2gating adds its sampling noise to the logits in place: give it a copy
            output = top2gating(
                logits.clone(),
                capacity_factor,
                self.min_capacity,
                self.drop_tokens,
                self.ep_group,
                self.top2_2nd_expert_sampling,
                sparse_routes,
            )
        else:
            output = topkgating(
                logits,
                self.k,
                capacity_factor,
                self.min_capacity,
                self.drop_tokens,
                self.ep_group,
                sparse_routes=sparse_routes,
            )
        self.last_losses = RouterLosses(output[0], z, seq_aux)
        if self.wall_clock_breakdown:
            self.timers(TOPK_GATE_TIMER).stop()
            self.gate_time = self.timers(TOPK_GATE_TIMER).elapsed(reset=False)
        return output

    def _apply(self, fn, recurse: bool = True):
        """Keep the routing bias fp32 when the engine casts the model (bf16): steps of bias_update_rate would
        round away in bf16's 8-bit mantissa."""
        bias = self._buffers.get("routing_bias")
        super()._apply(fn, recurse)
        if bias is not None and self.routing_bias.dtype != torch.float32:
            self._buffers["routing_bias"] = bias.to(device=self.routing_bias.device, dtype=torch.float32)
        return self

    def _extra_losses(self, logits: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(z-loss, sequence-wise balance loss) of logits (S, E); without a gradient when their coefficient is 0
        (they are still computed for the router telemetry)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.z_loss_coef > 0):
            z = router_z_loss(logits)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.seq_aux_loss_coef > 0):
            probs = F.softmax(logits, dim=-1)  # (S, E)
            self.last_probs = probs.detach()  # router telemetry's entropy reuses it (router_stats.py)
            # f counts each token's top-k choice (by biased scores when balancing with a bias), before capacity
            # drops and before DeepSpeed's 2nd-expert sampling.
            scores = probs.detach() if bias is None else probs.detach() + bias.float()
            selected = torch.zeros_like(probs).scatter_(1, scores.topk(self.k, dim=-1).indices, 1.0)
            seq_aux = sequence_balance_loss(probs, selected, self.k, self.tokens_per_sequence or probs.shape[0])
        return z, seq_aux

    @torch.no_grad()
    def update_bias(self, load: torch.Tensor) -> None:
        """load: (E,) routes each expert was selected for over the global batch. b_e += rate * sign(mean - load_e).
        The trainer calls it after each optimizer step with the load summed over ranks (moe/train/accumulate.py)."""
        load = load.float()
        self.routing_bias += self.bias_update_rate * torch.sign(load.mean() - load).to(self.routing_bias.dtype)
        self.selection_counts.zero_()
