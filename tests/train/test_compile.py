"""torch.compile (ds_configs/zero1_bf16_compile.json, run in fp32 here) trains exactly as eager: the same losses on
our GPT at EP=2 (blocks compiled, MoE layers eager) and on AutoEP Mixtral (DeepSpeed's compile.autoep_non_moe).
One spawn of 2 gloo ranks trains the four runs through the real Trainer. The first compile of a block takes
~15-50 s on the 2-core CPU; Inductor caches it for later runs."""

import pytest

from tests.harness import resolved_for, run_on_ranks
from tests.helpers import SMALL_DATA, read_metrics

pytestmark = pytest.mark.e2e
STEPS = 3
RECIPES = {"tiny": "layers.0", "autoep": "model.layers.0"}  # recipe: its first compiled region
RUNS = {"eager": ("zero1.json", []), "compiled": ("zero1_bf16_compile.json", ["ds.bf16.enabled=false"])}
COMMON = [f"train.max_steps={STEPS}", "train.warmup_steps=1", "train.eval_interval=0", "train.save_interval=0"]


def train_eager_and_compiled(rank: int, world_size: int, out: str) -> None:
    from moe.train.trainer import Trainer

    for recipe in RECIPES:
        for run, (ds_config, extra) in RUNS.items():
            overrides = [*COMMON, *SMALL_DATA, *extra]
            resolved = resolved_for(out, f"{recipe}_{run}", ds_config, overrides, world_size, f"recipes/{recipe}.yaml")
            trainer = Trainer(resolved, rank)
            trainer.fit()
            trainer.engine.destroy()


@pytest.fixture(scope="module")
def compile_runs(tmp_path_factory, deepspeed_cpu_adam_built):
    out = tmp_path_factory.mktemp("compile")
    proc = run_on_ranks(train_eager_and_compiled, out, ranks=2, timeout=900)
    # the trainer's line for each compiled run, in run order: "torch.compile: N regions (layers.0, ...)"
    announced = [line for line in proc.stdout.splitlines() if line.startswith("torch.compile: ")]
    return out / "runs", announced


@pytest.mark.parametrize("recipe", RECIPES)
def test_compiled_training_matches_eager(compile_runs, recipe):
    runs, announced = compile_runs
    assert len(announced) == len(RECIPES)  # the compiled runs only
    assert announced[list(RECIPES).index(recipe)].endswith(f" regions ({RECIPES[recipe]}, ...)")
    eager, compiled = ([m["loss"] for m in read_metrics(runs / f"{recipe}_{run}") if "loss" in m] for run in RUNS)
    assert len(compiled) == STEPS and compiled == pytest.approx(eager, rel=1e-6)
