"""Pipeline parallelism against the non-pipeline run, driving the real Trainer (started by
tests/distributed/test_pipeline.py through DeepSpeed's launcher; one spawn per world size).

`pp2` (2 ranks): the tiny recipe, dense and MoE, for STEPS steps with validation and checkpoints every SAVE_AT:
- *_pp1: ds_configs/zero1.json, 2 data-parallel ranks x 1 micro-batch of 8;
- *_pp2: ds_configs/pipeline2.json, 2 stages x 1 data-parallel rank x 2 micro-batches of 8: the same 16 samples a
  step, in the same order (BlockBatches addresses them by data-parallel rank and size);
- moe_pp2_zero0: the same under ZeRO-0 (our pipeline-aware clipping, moe/train/pipeline_step.py);
then resumes a copy of moe_pp2 as if it had died after step SAVE_AT.
`pp2_ep2` (4 ranks): a 4-layer MoE (MoE layers on both stages) at EP=2, 2 steps: PP=1 x DP=4 against PP=2 x DP=2.

Gate sampling (RTS, the 2nd expert) draws from per-rank RNG streams that differ between the layouts, so routing
is deterministic here. Every case writes its final parameters by MoEGPTForCausalLM name (experts by global index).
"""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from moe.config import load_ds_config, load_recipe, resolve, split_overrides, to_dict  # noqa: E402
from moe.model.build import global_param_name, local_expert_counts  # noqa: E402
from moe.parallel import barrier, init_distributed  # noqa: E402
from moe.train.checkpoint import check_resume, run_layout  # noqa: E402
from moe.train.trainer import Trainer  # noqa: E402
from tests.helpers import interrupted_copy  # noqa: E402

STEPS, SAVE_AT = 4, 2
NO_SAMPLING = ["moe.top2_2nd_expert_sampling=false", "moe.use_rts=false"]
# train.eval_batches counts micro-batches per data-parallel rank: half the ranks, twice the batches, same samples
PP2 = ["train.eval_batches=4"]
SHORT = ["train.max_steps=2", "train.warmup_steps=1", "train.eval_interval=0", "train.save_interval=0"]
CASES = {  # job: {name: (ds_config, overrides)}; zero1.json: 1 micro-batch a step, pipeline2.json: 2
    "pp2": {
        "dense_pp1": ("zero1.json", ["moe.enabled=false"]),
        "dense_pp2": ("pipeline2.json", ["moe.enabled=false", *PP2]),
        "moe_pp1": ("zero1.json", ["moe.ep_size=1", *NO_SAMPLING]),
        "moe_pp2": ("pipeline2.json", ["moe.ep_size=1", *NO_SAMPLING, *PP2]),
        "moe_pp2_zero0": ("pipeline2.json", ["moe.ep_size=1", "ds.zero_optimization.stage=0", *NO_SAMPLING, *PP2]),
    },
    "pp2_ep2": {  # 4 ranks on a 2-core CI box: 2 steps, validation only at the end
        "ep2_pp1": ("zero1.json", ["moe.ep_size=2", "model.n_layers=4", *NO_SAMPLING, *SHORT]),
        "ep2_pp2": ("pipeline2.json", ["moe.ep_size=2", "model.n_layers=4", *NO_SAMPLING, *SHORT, *PP2]),
    },
}
RESUMED = ("moe_pp2", "moe_pp2_resumed")  # (source, copy resumed after step SAVE_AT), in the pp2 job


def resolved_for(out: Path, name: str, ds_name: str, extra: list[str], world_size: int):
    extra, ds_overrides = split_overrides(extra)
    recipe = load_recipe(REPO / "recipes/tiny.yaml", [
        f"logging.runs_dir={out / 'runs'}", f"logging.run_name={name}", f"train.max_steps={STEPS}",
        f"train.save_interval={SAVE_AT}", f"train.eval_interval={SAVE_AT}", "logging.progress_bar=false", *extra])
    return resolve(recipe, load_ds_config(REPO / "ds_configs" / ds_name, ds_overrides), world_size, ds_name)


def reset_deepspeed_groups() -> None:
    """Forget DeepSpeed's process-global expert groups and mpu between cases in one process: they are keyed by the
    EP size alone, and a pipeline's (inside a stage) differ from a data-parallel run's at the same EP size."""
    from deepspeed.utils import groups
    for table in (groups._EXPERT_PARALLEL_GROUP, groups._EXPERT_PARALLEL_GROUP_RANKS,
                  groups._EXPERT_DATA_PARALLEL_GROUP, groups._EXPERT_DATA_PARALLEL_GROUP_RANKS):
        table.clear()
    groups.mpu = None


def final_params(trainer) -> dict[str, torch.Tensor]:
    """This rank's parameters by MoEGPTForCausalLM name, experts by global index."""
    from moe.model.pipeline import full_param_name
    config, module = trainer.model_config, trainer.engine.module
    ep_size = config.ep_size if config.moe_enabled else 1
    ep_rank = trainer.rank % ep_size  # consecutive ranks form an expert-parallel group in both layouts
    out = {}
    for name, param in module.named_parameters():
        if trainer.pipeline:
            name = full_param_name(name, config.n_layers)
        out[global_param_name(name, ep_rank, local_expert_counts(config))] = param.detach().float().clone()
    return out


def run_case(out: Path, job: str, name: str, rank: int, world_size: int, resume: bool = False) -> None:
    ds_name, extra = CASES[job][RESUMED[0] if resume else name]
    resolved = resolved_for(out, name, ds_name, extra, world_size)
    if resume:
        recipe_dict = to_dict(resolved.recipe)
        check_resume(resolved.run_dir, True, recipe_dict, run_layout(recipe_dict, resolved.ds_config, world_size))
    trainer = Trainer(resolved, rank, resume=resume)
    trainer.fit()
    torch.save(final_params(trainer), out / f"{name}_rank{rank}.pt")
    trainer.engine.destroy()
    reset_deepspeed_groups()


def main(job: str, out: Path) -> None:
    rank, world_size = init_distributed()
    for name in CASES[job]:
        run_case(out, job, name, rank, world_size)
    if job == "pp2":
        if rank == 0:
            interrupted_copy(out / "runs", *RESUMED, STEPS, SAVE_AT)
        barrier()
        run_case(out, job, RESUMED[1], rank, world_size, resume=True)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    main(args[0], Path(args[1]))
