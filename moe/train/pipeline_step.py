"""Stepping a DeepSpeed PipelineEngine: one `train_batch` is a whole optimizer step (all micro-batches), one
`eval_batch` a whole validation pass. The data, the losses reported and the router telemetry are those of the
non-pipeline run at the same data-parallel layout, so Trainer's metrics keep their keys and meaning.
`PipelineSteps` has the interface of moe/train/accumulate.py's MicroBatchSteps.
"""

from __future__ import annotations

import torch

from moe.train.evaluation import EvalResult, EvalSet
from moe.train.grad_norm import expert_aware_global_norm


def micro_batches(batches, first_sample: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(inputs, labels) for `count` micro-batches from stream position `first_sample`: exactly the (B, T) batches
    the non-pipeline trainer feeds this data-parallel rank in one step (labels = inputs, shifted in the loss)."""
    out = []
    for micro in range(count):
        ids = batches.at_sample(first_sample + micro * batches.samples_per_micro_step)  # (B, T)
        out.append((ids, ids))
    return out


def train_batch(engine, batches, first_sample: int, accum: int) -> tuple[float, float, float]:
    """One optimizer step; returns (loss, lm_loss, aux_loss) averaged over micro-batches and data-parallel ranks.
    The engine broadcasts them from the last stage, so every rank returns the same numbers (no extra collective)."""
    loss = engine.train_batch(iter(micro_batches(batches, first_sample, accum)))
    extra = engine.agg_additional_losses  # GPTPipe.get_additional_losses, reduced by the engine
    return float(loss), float(extra["lm_loss"]), float(extra["aux_loss"])


@torch.no_grad()
def evaluate(engine, eval_set: EvalSet, micro_batch: int, dp_rank: int, dp_size: int) -> EvalResult:
    """The set cut to whole global micro-batches; each eval_batch call's loss is its micro-batch's mean over the
    data-parallel ranks (GPTPipe returns the LM loss alone in eval mode), the same on every stage."""
    means = [
        float(engine.eval_batch(iter([(ids, ids)]), num_micro_batches=1))
        for ids, _ in eval_set.micro_batches(micro_batch, dp_rank, dp_size, whole_batches=True)
    ]
    if not means:
        raise ValueError(f"the evaluation set of {len(eval_set.rows)} blocks is smaller than one global micro-batch")
    n, mean = micro_batch * dp_size, sum(means) / len(means)  # blocks behind each mean; the pass's mean
    spread = sum((m - mean) ** 2 for m in means) / max(len(means) - 1, 1)  # variance of one micro-batch mean
    return EvalResult(mean, (spread / len(means)) ** 0.5, n * len(means))


class PipelineSteps:
    """Steps and validation passes of a PipelineEngine (our GPT as a GPTPipe)."""

    def __init__(self, engine, spec, telemetry, recipe):
        self.engine, self.micro_batch = engine, recipe.train.micro_batch_size
        install_pipeline_clipping(engine)

    def train(self, batches, first_sample: int, accum: int) -> tuple[float, float, float]:
        return train_batch(self.engine, batches, first_sample, accum)

    def evaluate(self, eval_set: EvalSet, dp_rank: int, dp_size: int) -> EvalResult:
        return evaluate(self.engine, eval_set, self.micro_batch, dp_rank, dp_size)


def install_pipeline_clipping(engine) -> None:
    """Clip by the gradient norm of the whole model, summed over the pipeline stages (fp32, ZeRO 0 or 1)."""
    if engine.zero_optimization_stage() == 1:
        _install_zero1_stage_sum(engine.optimizer)
    elif not engine.zero_optimization():
        _install_zero0_clipping(engine)


def _install_zero1_stage_sum(optimizer) -> None:
    """ZeRO-1: each stage's norm as DeepSpeed computes it, then one sum of squares over the stages.

    Why: DeepSpeed's ZeRO-1 all-reduces every optimizer group's norm over the model-parallel group, which under a
    pipeline is the stages. A stage holding a MoE layer has more groups (DeepSpeed splits expert parameters into
    their own groups) than one without, so the stages issue different numbers of all-reduces and hang, and
    stage-0 group i would be added to stage-1 group i of another kind. Here the per-group all-reduce is skipped
    (model_parallel_group None: DeepSpeed's marker for 'no model parallelism') and the stages' totals are added."""
    import deepspeed.comm as dist

    stage_group, per_stage_norm = optimizer.model_parallel_group, optimizer.scaled_global_norm

    def scaled_global_norm(norm_type: int = 2) -> torch.Tensor:
        optimizer.model_parallel_group = None
        try:
            norm = per_stage_norm(norm_type)  # (), this stage: data-parallel sum + expert averaging, DeepSpeed's own
        finally:
            optimizer.model_parallel_group = stage_group
        squared = norm.float() ** 2  # an invalid (inf) stage norm stays inf
        dist.all_reduce(squared, group=stage_group)
        return squared.sqrt()

    # Called once per step from DeepSpeedZeroOptimizer.step, on every rank.
    optimizer.scaled_global_norm = scaled_global_norm


def _install_zero0_clipping(engine) -> None:
    """ZeRO-0 fp32: clip by the norm of the whole model.

    Why our own: DeepSpeed's fp32 path (`runtime.utils.clip_grad_norm_` with the pipeline grid as mpu) counts only
    the first stage's gradients (model-parallel rank = stage index there) and averages expert norms over
    data-parallel ranks; the non-pipeline replacement (moe/train/grad_norm.py) sees one stage.
    Here each stage's expert-aware squared norm (dense gradients once, experts over their expert-parallel group) is
    summed over the stages of its pipeline."""
    import deepspeed.comm as dist
    from deepspeed.runtime.utils import clip_tensors_by_global_norm

    def clip_fp32_gradients() -> None:
        params = [p for p in engine.module.parameters() if p.grad is not None]
        squared = expert_aware_global_norm(params).to(params[0].grad.device) ** 2
        dist.all_reduce(squared, group=engine.grid.get_pipe_parallel_group())
        norm = squared.sqrt()
        clip_tensors_by_global_norm([p.grad for p in params], max_norm=engine.gradient_clipping(), global_norm=norm)
        engine._global_grad_norm = float(norm)

    # Called from DeepSpeedEngine._take_model_step when gradient_clipping > 0 on this path.
    engine.clip_fp32_gradients = clip_fp32_gradients
