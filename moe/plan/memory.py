"""Per-rank training memory by component: model states under ZeRO / expert parallelism / offload, and activations.

Model states follow DeepSpeed's own accounting (`estimate_zero2_model_states_mem_needs`: 2 bytes of bf16 params,
then 2 bf16 grads + 4 fp32 grads + 4 fp32 master + 8 Adam bytes per parameter split over data parallelism), made
per group: dense parameters are split over the data-parallel ranks, each rank's experts (experts / ep_size of
them) over the expert-data-parallel ranks (dp / ep_size), which is how DeepSpeed forms the ZeRO groups of MoE
parameters. The same formula serves fp32 on CPU: params and grads are then 4 bytes and need no fp32 copy, but
ZeRO 1/2 still clone an fp32 master partition (stage_1_and_2.py clones it whatever the dtype).

- ZeRO-0: full params, grads and Adam moments on every rank (bf16 uses DeepSpeed's BF16_Optimizer: fp32 master
  and moments partitioned, full fp32 gradient accumulators).
- ZeRO-1: full grads in param.grad, then the flat gradient partition the optimizer steps on (the reduction
  bucket takes gradients as param.grad releases them: measured, it adds no peak).
- ZeRO-2: only the gradient partition, plus the reduction bucket (reduce_bucket_size elements, at most the
  gradients there are: on CPU an untouched buffer takes no memory).
- ZeRO-3: params partitioned too, plus the gathered blocks in flight (two blocks, at most the prefetch bucket).
- offload_optimizer: fp32 master, fp32 grads and Adam moments move to host memory (reported apart).

Peak = model states + the larger of (activations of one micro-batch) and (gradients + the optimizer step's
temporary: torch's AdamW builds one partition-sized denominator, FusedAdam none). Excluded: the process itself
(interpreter, libraries, CUDA context), which the budget keeps a margin for (moe/plan/budget.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from moe.plan.activations import Activations
from moe.plan.layout import Layout
from moe.plan.shape import ModelShape

FP32 = 4


@dataclass(frozen=True)
class Memory:
    """Bytes per rank (device), and what offload moves to host memory per rank."""

    params: float
    grads: float  # param grads, gradient partitions and fp32 copies, reduction bucket
    master_params: float  # fp32 master partition (ZeRO 1/2/3, bf16 ZeRO-0)
    optimizer_states: float  # Adam moments
    step_workspace: float  # temporaries of the optimizer step
    activations: Activations
    host: float  # offloaded optimizer states (and params under ZeRO-3 offload_param)
    checkpointing: bool = False
    recompute: str = "blocks"  # train.recompute: what checkpointing recomputes (blocks | mlp)

    @property
    def model_states(self) -> float:
        return self.params + self.master_params + self.optimizer_states

    @property
    def activation_peak(self) -> float:
        if not self.checkpointing:
            return self.activations.full
        return self.activations.mlp_checkpointed if self.recompute == "mlp" else self.activations.checkpointed

    @property
    def peak(self) -> float:
        return self.model_states + max(self.activation_peak, self.grads + self.step_workspace)

    def with_checkpointing(self, on: bool = True) -> Memory:
        from dataclasses import replace

        return replace(self, checkpointing=on)


def estimate(shape: ModelShape, layout: Layout, micro_batch: int | None = None) -> Memory:
    a, L = layout.param_bytes, layout
    cost = shape.cost
    dense = (cost.total_params - cost.expert_params) / L.stages  # this rank's stage; experts split over ep too
    experts = cost.expert_params / L.ep / L.stages
    local = dense + experts
    shard = dense / L.dp + experts / L.expert_dp  # this rank's ZeRO partition
    largest_group = max(dense / L.dp, experts / L.expert_dp)  # one param group is stepped at a time
    fp32_copy = FP32 if a < FP32 else 0  # low-precision grads are converted for the fp32 optimizer step
    bucket = min(L.reduce_bucket, local) * a

    if L.zero_stage == 0:
        if a < FP32:  # BF16_Optimizer: fp32 master + moments partitioned, full fp32 gradient accumulators
            params, grads, master, moments = a * local, (a + FP32) * local, FP32 * shard, 2 * FP32 * shard
        else:  # the torch optimizer steps the module's own fp32 params
            params, grads, master, moments = a * local, a * local, 0.0, 2 * FP32 * local
    elif L.zero_stage in (1, 2):
        params, master, moments = a * local, FP32 * shard, 2 * FP32 * shard
        grads = (a + fp32_copy) * shard + (a * local if L.zero_stage == 1 else bucket)
    else:
        gathered = min(2 * shape.largest_layer_params, max(L.prefetch_bucket, shape.largest_layer_params))
        params = a * (shard + gathered)
        master, moments = FP32 * shard, 2 * FP32 * shard
        grads = (a + fp32_copy) * shard + bucket
    host = 0.0
    if L.offload_optimizer:  # master, moments and the fp32 gradient partition live on the host
        host = master + moments + FP32 * shard
        master = moments = 0.0
        grads -= fp32_copy * shard
    if L.offload_params and L.zero_stage == 3:
        host += a * shard
        params -= a * shard
    workspace = 0.0 if L.fused_adam or L.offload_optimizer else FP32 * (largest_group if L.zero_stage else local)
    # A pipeline's first stage keeps up to `stages` micro-batches of its 1/stages of the layers in flight (1F1B):
    # about one micro-batch of the whole model, which is what this counts.
    acts = shape.activations(micro_batch or L.micro_batch)
    return Memory(params, grads, master, moments, workspace, acts, host, L.activation_checkpointing, L.recompute)
