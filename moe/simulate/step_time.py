"""Analytic time of one optimizer step of a resolved recipe on a cluster (no process is started).

step = compute / MFU[family]               model FLOPs (moe/model/cost.py) + capacity padding of the experts, at
                                           the cluster's fitted MFU for the recipe's family (dense or moe)
     + pipeline bubble                     1F1B: compute x (stages - 1) / micro-batches
     + pipeline send/recv                  each micro-batch's activations forward and gradients back
     + expert all-to-all                   4 per MoE layer per micro-batch (dispatch and combine, fwd and bwd)
     + exposed gradient/parameter sync     ZeRO 0: all-reduce; 1: reduce-scatter + all-gather (once per step);
                                           2: reduce-scatter per micro-batch; 3: + 2 all-gathers per micro-batch

Nothing overlaps except what the ds_config asks for (zero_optimization.overlap_comm hides the gradient
reduce-scatter behind the backward pass, 2/3 of the compute); DeepSpeed's MoE all-to-all is not overlapped
(deepspeed/moe/sharded_moe.py: _AllToAll is a blocking all_to_all_single between the gate and the experts).
Not modelled, so inside the fitted MFU: activation recomputation (its FLOPs, and for MoE the 2 all-to-alls the
recomputed forward repeats), the optimizer step, kernel launch and Python overhead, load imbalance between experts
(the all-to-all moves capacity-padded buffers, as DeepSpeed does). The MFU is fitted per family because on
DeepSpeed-MoE's Table 3 one value for both misses by -16.4% and +22.0% (docs/scaling.md, "Calibration").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from moe.config import Resolved
from moe.config.pipeline_parallel import pipeline_stages
from moe.model.configuration import config_from_recipe
from moe.model.cost import model_cost
from moe.plan.activations import capacity
from moe.plan.layout import BYTES
from moe.simulate.cluster import Cluster
from moe.simulate.collectives import Group, all_gather, all_reduce, all_to_all, reduce_scatter, send_recv


@dataclass(frozen=True)
class StepEstimate:
    family: str  # "dense" or "moe": which of the cluster's MFUs applies
    mfu: float  # the MFU the compute time used
    gpus: int
    nodes: int
    ep_size: int
    dp_size: int
    stages: int
    global_batch: int  # sequences per optimizer step
    seq_len: int
    compute_s: float
    bubble_s: float
    pipeline_p2p_s: float
    all_to_all_s: float
    grad_sync_s: float

    @property
    def step_s(self) -> float:
        return self.compute_s + self.bubble_s + self.pipeline_p2p_s + self.all_to_all_s + self.grad_sync_s

    @property
    def samples_per_s(self) -> float:
        return self.global_batch / self.step_s

    @property
    def tokens_per_s(self) -> float:
        return self.samples_per_s * self.seq_len


def vocab_size(resolved: Resolved) -> int:
    """The model's vocabulary: model.vocab_size, else the BPE size the data section trains."""
    return resolved.recipe.model.vocab_size or resolved.recipe.data.vocab_size


def family(resolved: Resolved) -> str:
    """The model family whose fitted MFU the step uses: 'moe' when moe.enabled, else 'dense'."""
    return "moe" if resolved.recipe.moe.enabled else "dense"


def estimate_step(resolved: Resolved, cluster: Cluster, mfu: float | None = None) -> StepEstimate:
    recipe, ds = resolved.recipe, resolved.ds_config
    config = config_from_recipe(recipe, vocab_size(resolved))
    seq = recipe.data.seq_len
    gpus, stages = resolved.world_size, pipeline_stages(ds)
    dp = gpus // stages
    micro, accum = recipe.train.micro_batch_size, recipe.train.grad_accum
    tokens = micro * seq  # per rank per micro-batch
    precision = recipe.train.precision
    act_bytes = grad_bytes = BYTES[precision]
    moe = recipe.moe
    ep = moe.ep_size if moe.enabled else 1
    gpn = cluster.gpus_per_node

    cost = model_cost(config, seq)
    d = config.d_model
    expert_params = 3 * d * config.expert_d_ff
    padding_flops = 0.0  # per token: expert slots computed beyond the top_k a token uses (capacity padding)
    all_to_all_s = 0.0
    for layer in config.moe_layer_ids():
        experts = config.experts_in_layer(layer)
        slots = (
            capacity(tokens, experts, moe.top_k, moe.capacity_factor, moe.min_capacity)
            if moe.drop_tokens
            else math.ceil(tokens * moe.top_k / experts)
        )  # dropless: balanced load
        slots_per_token = experts * slots / tokens
        padding_flops += 6 * expert_params * (slots_per_token - moe.top_k)
        dispatched = experts * slots * d * act_bytes  # the (E, C, d) buffer each rank sends
        all_to_all_s += 4 * accum * all_to_all(dispatched, Group(ep), cluster) / stages
    flops_per_gpu = accum * tokens * (cost.train_flops_per_token() + padding_flops) / stages
    kind = family(resolved)
    mfu = mfu or cluster.family_mfu(kind)
    compute_s = flops_per_gpu / (cluster.peak_flops(precision) * mfu)
    bubble_s = compute_s * (stages - 1) / accum
    pipeline_p2p_s = 0.0
    if stages > 1:  # neighbouring stages are dp ranks apart
        pipeline_p2p_s = 2 * accum * send_recv(tokens * d * act_bytes, dp >= gpn, cluster)

    dense_bytes = (cost.total_params - cost.expert_params) / stages * grad_bytes
    expert_bytes = cost.expert_params / (ep * stages) * grad_bytes
    groups = [(dense_bytes, Group(dp)), (expert_bytes, Group(dp // ep, ep))]
    zero = ds.get("zero_optimization") or {}
    grad_sync_s = sum(
        _grad_sync(nbytes, group, cluster, zero.get("stage", 0), accum, compute_s, bool(zero.get("overlap_comm")))
        for nbytes, group in groups
    )
    return StepEstimate(
        family=kind,
        mfu=mfu,
        gpus=gpus,
        nodes=math.ceil(gpus / gpn),
        ep_size=ep,
        dp_size=dp,
        stages=stages,
        global_batch=ds["train_batch_size"],
        seq_len=seq,
        compute_s=compute_s,
        bubble_s=bubble_s,
        pipeline_p2p_s=pipeline_p2p_s,
        all_to_all_s=all_to_all_s,
        grad_sync_s=grad_sync_s,
    )


def _grad_sync(
    nbytes: float, group: Group, cluster: Cluster, zero_stage: int, accum: int, compute_s: float, overlap: bool
) -> float:
    if zero_stage == 0:
        return all_reduce(nbytes, group, cluster)
    reductions = 1 if zero_stage == 1 else accum  # ZeRO-2/3 reduce-scatter in every backward pass
    scatter = reductions * reduce_scatter(nbytes, group, cluster)
    if overlap:
        scatter = max(0.0, scatter - 2 / 3 * compute_s)
    gathers = 1 if zero_stage < 3 else 2 * accum  # ZeRO-3 gathers parameters for every forward and backward
    return scatter + gathers * all_gather(nbytes, group, cluster)
