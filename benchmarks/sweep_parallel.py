"""What a sweep gets out of one CPU machine: its runs side by side (`--parallel auto`), or one after another.

    python benchmarks/sweep_parallel.py                      # the default recipe, 60 steps, one run per core
    python benchmarks/sweep_parallel.py --steps 20 --json /tmp/smoke.json model.d_model=64

The same --runs runs (the recipe with train.seed 1, 2, ...) go through `python launch/sweep.py` twice:
- `parallel auto`: single-rank runs (moe.ep_size=1), one per core at once, each under `taskset -c <core>`, each
  accumulating N micro-batches a step (ds.gradient_accumulation_steps=N): its global batch is the N-rank run's.
- `sequential`: one after another, each on every core as N ranks (moe.ep_size auto: the largest that divides the
  experts and the N ranks), as `--parallel 1` runs them.
Each layout's machine total, two ways:
- steady tokens/s: a run's tokens from its first step after --skip to its last, over the wall time between those
  two steps' metrics records (their `time`); summed over runs side by side, total tokens over total time in turn.
- sweep tokens/s: every run's tokens over the sweep's wall time, start-up, final validation and checkpoint included.
Writes --json (default benchmarks/results/sweep_parallel.json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.cpu_layouts import tokens_per_s
from benchmarks.throughput import REPO, read_run

RESULT = REPO / "benchmarks" / "results" / "sweep_parallel.json"


def sweep(grid: dict, folder: Path, parallel: str, overrides: list[str]) -> tuple[list, float]:
    """Run `grid` through the sweep CLI; (each run as benchmarks.throughput.Run, the sweep's wall time)."""
    path = folder / f"{grid['sweep']}.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    runs_dir = folder / "runs"
    cmd = [sys.executable, "launch/sweep.py", str(path), "--parallel", parallel, f"logging.runs_dir={runs_dir}"]
    log = folder / f"{grid['sweep']}.log"
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run([*cmd, *overrides], cwd=REPO, stdout=out, stderr=subprocess.STDOUT).returncode
    wall_s = time.perf_counter() - start
    if code:
        raise RuntimeError(f"{grid['sweep']}: the sweep exited with {code}\n{log.read_text()[-3000:]}")
    names = sorted(p.name for p in runs_dir.iterdir() if (p / "metrics.jsonl").is_file())
    return [read_run(runs_dir / name, wall_s, cmd) for name in names], wall_s


def steady(run, skip: int) -> tuple[int, float]:
    """(tokens, seconds) from the first step record after `skip` to the last one."""
    steps = [r for r in run.records if "tokens_per_s" in r][skip:]
    tokens_per_step = run.ds_config["train_batch_size"] * run.seq_len
    return (steps[-1]["step"] - steps[0]["step"]) * tokens_per_step, steps[-1]["time"] - steps[0]["time"]


def layout(runs: list, wall_s: float, skip: int, side_by_side: bool) -> dict:
    windows = [steady(run, skip) for run in runs]
    if side_by_side:
        steady_total = sum(tokens / seconds for tokens, seconds in windows)
    else:
        steady_total = sum(t for t, _ in windows) / sum(s for _, s in windows)
    tokens = sum(max(r["step"] for r in run.records if "tokens_per_s" in r) * run.ds_config["train_batch_size"]
                 * run.seq_len for run in runs)  # fmt: skip
    return {
        "steady_tokens_per_s": steady_total,
        "sweep_tokens_per_s": tokens / wall_s,
        "sweep_wall_s": wall_s,
        "tokens": tokens,
        "tokens_per_step": runs[0].ds_config["train_batch_size"] * runs[0].seq_len,
        "per_run_steady_tokens_per_s": [t / s for t, s in windows],
        "per_run_median_tokens_per_s": [tokens_per_s(run, skip) for run in runs],  # as cpu_layouts.py measures
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="recipes/default.yaml")
    p.add_argument("--ds_config", default=None, help="default: the launcher's default ds_config")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--skip", type=int, default=5, help="warm-up steps left out of the steady rate")
    p.add_argument("--runs", type=int, default=None, help="runs in each sweep (default: one per core)")
    p.add_argument("--json", type=Path, default=RESULT)
    p.add_argument("overrides", nargs="*", help="recipe/ds overrides for every run")
    args = p.parse_args(argv)
    from moe.config.args import DEFAULT_DS_CONFIG

    cores = len(os.sched_getaffinity(0))
    n_runs = args.runs or cores
    ds_config = args.ds_config or DEFAULT_DS_CONFIG
    every_run = {
        "train.max_steps": args.steps,
        "train.warmup_steps": args.skip,
        "train.eval_interval": 0,
        "train.save_interval": 0,
        "moe.ep_size": "auto",
        "logging.wandb": False,
        "logging.progress_bar": False,
    }

    def grid(name: str, ranks: int) -> dict:
        axes = {"gpus": [ranks], "train.seed": list(range(1, n_runs + 1))}
        # one global batch for both: a single rank accumulates the micro-batches the N ranks take side by side
        overrides = {**every_run, "ds.gradient_accumulation_steps": cores // ranks}
        return {"sweep": name, "recipe": args.recipe, "ds_config": ds_config, "overrides": overrides, "grid": axes}

    layouts = {}
    with tempfile.TemporaryDirectory() as tmp:
        side = Path(tmp) / "parallel"
        side.mkdir()
        layouts["parallel auto"] = layout(*sweep(grid("parallel", 1), side, "auto", args.overrides), args.skip, True)
        turn = Path(tmp) / "sequential"
        turn.mkdir()
        layouts["sequential"] = layout(*sweep(grid("sequential", cores), turn, "1", args.overrides), args.skip, False)
    fast, slow = layouts["parallel auto"], layouts["sequential"]
    result = {
        "recipe": args.recipe,
        "ds_config": ds_config,
        "overrides": args.overrides,
        "cores": cores,
        "runs": n_runs,
        "steps": args.steps,
        "skip": args.skip,
        "layouts": {f"{n_runs} runs x 1 rank, at once": fast, f"{n_runs} runs x {cores} ranks, in turn": slow},
        "speedup_steady": fast["steady_tokens_per_s"] / slow["steady_tokens_per_s"],
        "speedup_sweep": fast["sweep_tokens_per_s"] / slow["sweep_tokens_per_s"],
    }
    print(f"{args.recipe} + {ds_config} {' '.join(args.overrides)}: {n_runs} runs of {args.steps} steps, {cores} cores")
    for name, numbers in result["layouts"].items():
        print(f"  {name:<26} steady {numbers['steady_tokens_per_s']:8,.0f} tokens/s   "
              f"sweep {numbers['sweep_tokens_per_s']:8,.0f} tokens/s ({numbers['sweep_wall_s']:.0f} s)")  # fmt: skip
    print(f"  side by side / in turn: steady x{result['speedup_steady']:.2f}, sweep x{result['speedup_sweep']:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
