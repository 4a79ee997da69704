"""Measure each rank's peak memory over a few real training steps of every case, for tests/plan/test_peak_memory.py.

Peak = the kernel's high-water mark of this process's resident memory (VmHWM, reset through /proc/self/clear_refs
right before the Trainer is built) minus the resident memory at that moment (VmRSS): what building the model,
deepspeed.initialize and the steps add on top of the interpreter, torch, DeepSpeed, the process group and the
prepared (cached) data. Run with MALLOC_MMAP_THRESHOLD_=65536 (the test sets it) so glibc returns every freed
tensor to the kernel at once: resident memory then follows live memory, as a GPU allocator's peak does, instead of
keeping heap holes, and one case's freed memory does not hide the next case's growth.

Usage (through DeepSpeed's launcher): peak_memory_worker.py OUT_DIR
"""
import gc
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import deepspeed  # noqa: E402,F401  (imported before the baseline, as the trainer imports it)

from moe.config import load_ds_config, load_recipe, resolve, split_overrides  # noqa: E402
from moe.data import prepare_data  # noqa: E402
from moe.parallel import barrier, init_distributed  # noqa: E402
from moe.train.trainer import Trainer  # noqa: E402

SMALL_DATA = ["data.max_documents=600", "data.val_fraction=0.1", "data.vocab_size=1024"]
QUIET = ["logging.wandb=false", "logging.progress_bar=false", "train.eval_interval=0", "logging.router_stats=false"]
# case: (recipe, ds_config, overrides). Sized so model states and activations (hundreds of MB) dominate the
# measurement noise, while a step stays short on a CPU core.
CASES = {
    "default_zero1_ep2": ("recipes/default.yaml", "ds_configs/zero1.json",
                          ["model.d_model=512", "moe.num_experts=8", "ds.train_micro_batch_size_per_gpu=4",
                           *SMALL_DATA]),
    "tiny_zero2_ep1": ("recipes/tiny.yaml", "ds_configs/zero2.json",
                       ["model.d_model=384", "model.n_layers=4", "moe.ep_size=1", "moe.num_experts=8",
                        "data.vocab_size=8192", "data.max_documents=600", "data.val_fraction=0.1",
                        "ds.train_micro_batch_size_per_gpu=16"]),
}
STEPS = 2  # the second step is the first with Adam moments allocated


def status(key: str) -> int:
    """A /proc/self/status field in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def resolved_case(name: str, world_size: int, runs_dir: Path):
    recipe_path, ds_path, overrides = CASES[name]
    overrides, ds_overrides = split_overrides(overrides)
    recipe = load_recipe(REPO / recipe_path, [*overrides, *QUIET, f"logging.runs_dir={runs_dir}",
                                              f"logging.run_name={name}", f"train.max_steps={STEPS}",
                                              "train.warmup_steps=1"])
    return resolve(recipe, load_ds_config(REPO / ds_path, ds_overrides), world_size, ds_path)


def measure(name: str, rank: int, world_size: int, out_dir: Path) -> dict:
    resolved = resolved_case(name, world_size, out_dir / "runs")
    if rank == 0:
        prepare_data(resolved.recipe.data)
    barrier()
    prepare_data(resolved.recipe.data)
    barrier()
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident size
    baseline = status("VmRSS")
    trainer = Trainer(resolved, rank)
    for _ in range(STEPS):
        trainer.train_step()
    peak = status("VmHWM") - baseline
    trainer.engine.destroy()
    del trainer
    barrier()
    return {"peak_bytes": peak, "baseline_bytes": baseline}


def main(out_dir: Path) -> None:
    rank, world_size = init_distributed()
    results = {name: measure(name, rank, world_size, out_dir) for name in CASES}
    (out_dir / f"rank{rank}.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main(Path(sys.argv[-1]))  # after the launcher's --local_rank
