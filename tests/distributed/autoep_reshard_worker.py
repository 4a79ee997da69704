"""AutoEP checkpoints across layouts, driving the real Trainer (started by tests/distributed/test_autoep_reshard.py).

`train` (2 ranks): trains each SOURCES run (the tiny recipe as an AutoEP Mixtral) for STEPS steps with checkpoints
at SAVE_AT and STEPS, the uninterrupted references; then copies each source once per RESHARDED case, as if the job
had died right after its step-SAVE_AT checkpoint. The test converts the copies with `python -m moe.reshard`.
`resume` (2 ranks, one spawn): resumes every RESHARDED copy at its new EP size / ZeRO stage.
`resume_1rank` (a plain process, a world of one): resumes ONE_RANK (a copy of its converted source case, made by the
test) with 2 micro-batches per step: the same global batch of 16 sequences.
"""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from moe.config import load_ds_config, load_recipe, resolve, split_overrides, to_dict  # noqa: E402
from moe.parallel import barrier, init_distributed  # noqa: E402
from moe.train.checkpoint import check_resume, run_layout  # noqa: E402
from moe.train.trainer import Trainer  # noqa: E402
from tests.helpers import interrupted_copy  # noqa: E402

STEPS, SAVE_AT = 4, 2
AUTOEP = ["moe.impl=autoep", "model.family=mixtral", "model.n_kv_heads=2", "moe.interval=1",
          "moe.capacity_factor=1.0", "moe.eval_capacity_factor=1.0"]  # as tests/distributed/autoep_layouts_worker.py
SOURCES = {"ep2_zero1": (2, "zero1.json"), "ep1_zero3": (1, "zero3.json")}  # name: (moe.ep_size, ds_config), 2 ranks
# Together: EP 2 -> 1 and 1 -> 2, data-parallel 2 -> 1, and the three cross-stage paths DeepSpeed's universal
# checkpoint needs our shims for (ZeRO-1 -> 2 is DeepSpeed's alone; 3 -> 1 and 1 -> 3: moe/train/universal.py).
RESHARDED = {  # name: (source, moe.ep_size, ds_config, overrides), resumed on 2 ranks
    "ep2_zero1_to_ep1_zero2": ("ep2_zero1", 1, "zero2.json", []),
    "ep1_zero3_to_ep2_zero1": ("ep1_zero3", 2, "zero1.json", []),
}
# name: (source, ...) as above, resumed on 1 rank; the test copies it from the converted case named last
ONE_RANK = {"ep2_zero1_to_1rank_zero3": ("ep2_zero1", 1, "zero3.json", ["ds.gradient_accumulation_steps=2"],
                                         "ep2_zero1_to_ep1_zero2")}


def overrides(out: Path, name: str, ep_size: int) -> list[str]:
    return [*AUTOEP, f"moe.ep_size={ep_size}", f"logging.runs_dir={out / 'runs'}", f"logging.run_name={name}",
            f"train.max_steps={STEPS}", f"train.save_interval={SAVE_AT}", "train.eval_interval=0",
            "logging.progress_bar=false"]


def resolved_for(out: Path, name: str, ep_size: int, ds_name: str, extra: list[str], world_size: int):
    recipe_overrides, ds_overrides = split_overrides([*overrides(out, name, ep_size), *extra])
    recipe = load_recipe(REPO / "recipes/tiny.yaml", recipe_overrides)
    return resolve(recipe, load_ds_config(REPO / "ds_configs" / ds_name, ds_overrides), world_size, ds_name)


def resume(out: Path, cases: dict) -> None:
    rank, world_size = init_distributed()
    for name, (_, ep_size, ds_name, extra, *_) in cases.items():
        resolved = resolved_for(out, name, ep_size, ds_name, extra, world_size)
        recipe_dict = to_dict(resolved.recipe)
        check_resume(resolved.run_dir, True, recipe_dict, run_layout(recipe_dict, resolved.ds_config, world_size))
        trainer = Trainer(resolved, rank, resume=True)
        trainer.fit()
        trainer.engine.destroy()


def train(out: Path) -> None:
    rank, world_size = init_distributed()
    for name, (ep_size, ds_name) in SOURCES.items():
        trainer = Trainer(resolved_for(out, name, ep_size, ds_name, [], world_size), rank)
        trainer.fit()
        trainer.engine.destroy()
    if rank == 0:
        for name, (source, *_) in RESHARDED.items():
            interrupted_copy(out / "runs", source, name, STEPS, SAVE_AT)
    barrier()


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    mode, out = args[0], Path(args[1])
    if mode == "train":
        train(out)
    else:
        resume(out, RESHARDED if mode == "resume" else ONE_RANK)
