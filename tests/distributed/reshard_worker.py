"""Checkpoints across layouts, driving the real Trainer (started by tests/distributed/test_reshard.py).

`train_1rank` (a plain process, a world of one): trains DP_SOURCE on 1 rank (the uninterrupted reference) and
copies it to DP_RESUMED's folder as if it had died after step SAVE_AT; the test then converts that copy with
`python -m moe.reshard`.
`train` (2 ranks, one spawn for every other case):
1. trains each SOURCES run for STEPS steps with checkpoints at SAVE_AT and STEPS (the uninterrupted references);
2. copies each RESHARDED case's source as if it had died after step SAVE_AT, writes the layout-free state there
   (`moe.reshard.dump`, what `python -m moe.reshard` runs on each rank) and resumes it at its new layout; resumes
   the converted DP copy on 2 ranks;
3. records the fp32 masters at the last save of the bf16 ZeRO-2 run and of the resumed bf16 ZeRO-0 run, and writes
   those saves' layout-free state;
4. exports one run to HF and starts a run from it with model.init_from: records both models' eval logits.
"""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from moe.config import load_ds_config, load_recipe, resolve, split_overrides, to_dict  # noqa: E402
from moe.parallel import barrier, init_distributed  # noqa: E402
from moe.train.checkpoint import check_resume, run_layout  # noqa: E402
from moe.train.trainer import Trainer  # noqa: E402
from tests.helpers import interrupted_copy  # noqa: E402

STEPS, SAVE_AT = 6, 3
# Gate sampling draws from each rank's RNG stream, which a different rank count cannot continue: the DP case routes
# deterministically so its resumed losses can equal the uninterrupted run's.
NO_SAMPLING = ["moe.top2_2nd_expert_sampling=false", "moe.use_rts=false"]
SOURCES = {  # name: (moe.ep_size, ds_config, overrides), all on 2 ranks
    "ep2_zero1": (2, "zero1.json", []),
    "ep1_zero2": (1, "zero2.json", []),
    "bf16_ep2_zero2": (2, "zero2_bf16.json", []),
}
RESHARDED = {  # name: (source, moe.ep_size, ds_config, overrides), resumed on 2 ranks
    "ep2_zero1_to_ep1_zero2": ("ep2_zero1", 1, "zero2.json", []),
    "ep1_zero2_to_ep2_zero0": ("ep1_zero2", 2, "zero0.json", []),
    "bf16_ep2_zero2_to_ep1_zero0": ("bf16_ep2_zero2", 1, "zero0_bf16.json", []),
}
# 1 rank (ZeRO-0) with 2 micro-batches per step -> 2 ranks (ZeRO-1) with 1: the same global batch of 16
DP_SOURCE = ("dp1_accum2", 1, "zero0.json", NO_SAMPLING + ["ds.gradient_accumulation_steps=2"])
DP_RESUMED = ("dp1_accum2_to_2ranks_ep2", 2, "zero1.json", NO_SAMPLING)
IMPORT_SOURCE = "ep2_zero1"


def resolved_for(out: Path, name: str, ep_size: int, ds_name: str, extra: list[str], world_size: int):
    extra, ds_overrides = split_overrides(extra)
    recipe = load_recipe(REPO / "recipes/tiny.yaml", [
        f"moe.ep_size={ep_size}", f"logging.runs_dir={out / 'runs'}", f"logging.run_name={name}",
        f"train.max_steps={STEPS}", f"train.save_interval={SAVE_AT}", "train.eval_interval=0",
        "logging.progress_bar=false", *extra])
    return resolve(recipe, load_ds_config(REPO / "ds_configs" / ds_name, ds_overrides), world_size, ds_name)


def resume(out: Path, rank: int, world_size: int, name: str, ep_size: int, ds_name: str, extra: list[str]) -> Trainer:
    resolved = resolved_for(out, name, ep_size, ds_name, extra, world_size)
    recipe_dict = to_dict(resolved.recipe)
    check_resume(resolved.run_dir, True, recipe_dict, run_layout(recipe_dict, resolved.ds_config, world_size))
    trainer = Trainer(resolved, rank, resume=True)
    trainer.fit()
    return trainer


def fp32_masters(engine) -> dict:
    """{global name: fp32 master} of this rank's parameters, read through DeepSpeed's own API (ZeRO 1/2), or from
    the fp32 copies of its FP16_UnfusedOptimizer (ZeRO 0 bf16), which has none."""
    from deepspeed.utils import safe_get_full_fp32_param

    from moe.train.layout_free import global_names
    names, optimizer = global_names(engine.module), engine.optimizer
    if hasattr(optimizer, "fp32_groups"):
        pairs = zip(optimizer.fp16_groups, optimizer.fp32_groups)
        return {names[id(lp)]: hp.detach().clone() for lps, hps in pairs for lp, hp in zip(lps, hps)}
    return {names[id(p)]: safe_get_full_fp32_param(p).cpu().clone() for p in engine.module.parameters()}


@torch.no_grad()
def eval_forward(trainer, ids: torch.Tensor) -> dict:
    trainer.engine.eval()
    out = trainer.engine(ids, labels=ids)
    trainer.engine.train()
    return {"logits": out.logits.float().cpu(), "lm_loss": float(out.lm_loss)}


def train(out: Path) -> None:
    from moe.export import export
    from moe.reshard import dump
    rank, world_size = init_distributed()
    saved = {}
    for name, (ep_size, ds_name, extra) in SOURCES.items():
        trainer = Trainer(resolved_for(out, name, ep_size, ds_name, extra, world_size), rank)
        trainer.fit()
        if name == "bf16_ep2_zero2":
            saved["masters"] = fp32_masters(trainer.engine)
        if name == IMPORT_SOURCE:
            saved["ids"] = trainer.batches.at_sample(0)  # (B, T)
            saved["original"] = eval_forward(trainer, saved["ids"])
        trainer.engine.destroy()
    if rank == 0:
        for name, (source, *_) in RESHARDED.items():
            interrupted_copy(out / "runs", source, name, STEPS, SAVE_AT)
        export(out / "runs" / IMPORT_SOURCE, out / "hf_export")
    barrier()
    for name in RESHARDED:
        dump(out / "runs" / name, f"global_step{SAVE_AT}")
    dump(out / "runs" / "bf16_ep2_zero2", f"global_step{STEPS}")  # the save whose masters were recorded
    for name, (_, ep_size, ds_name, extra) in RESHARDED.items():
        trainer = resume(out, rank, world_size, name, ep_size, ds_name, extra)
        if ds_name == "zero0_bf16.json":  # its last save, consolidated from the ZeRO-0 bf16 path
            saved["zero0_bf16_masters"] = fp32_masters(trainer.engine)
            dump(out / "runs" / name, f"global_step{STEPS}")
        trainer.engine.destroy()
    resume(out, rank, world_size, *DP_RESUMED).engine.destroy()

    hf = out / "hf_export"
    imported = Trainer(resolved_for(out, "imported", 2, "zero1.json", [f"model.init_from={hf}", f"data.tokenizer={hf}"],
                                    world_size), rank)
    saved["imported"] = eval_forward(imported, saved["ids"])
    imported.engine.destroy()
    torch.save(saved, out / f"train_rank{rank}.pt")


def train_1rank(out: Path) -> None:
    rank, world_size = init_distributed()
    name, ep_size, ds_name, extra = DP_SOURCE
    trainer = Trainer(resolved_for(out, name, ep_size, ds_name, extra, world_size), rank)
    trainer.fit()
    trainer.engine.destroy()
    interrupted_copy(out / "runs", name, DP_RESUMED[0], STEPS, SAVE_AT)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    {"train": train, "train_1rank": train_1rank}[args[0]](Path(args[1]))
