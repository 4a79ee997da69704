"""Which layout trains a model fastest on one CPU machine: one rank on every core, one rank per core, or one
single-rank run per core side by side (a sweep's runs).

    python benchmarks/cpu_layouts.py                              # the default recipe (bf16), 2 cores
    python benchmarks/cpu_layouts.py model.d_model=512 --json benchmarks/results/cpu_layouts_d512.json

Layouts, each through the real launcher for --steps steps (medians after --skip):
- `1 rank x N threads`: `--num_gpus 1`, moe.ep_size=1; one process, torch's intra-op threads over all N cores.
- `N ranks x 1 thread`: `--num_gpus N` (the recipe's expert parallelism); gloo all-reduces the gradients.
- `N runs x 1 thread`: N single-rank jobs at once, each under `taskset -c <core>` (moe/launch/threads.py keeps
  each inside its core); the total is the sum of their tokens/s.
The machine's total tokens/s per layout is what a sweep of many runs gets out of it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
from pathlib import Path

from benchmarks.throughput import train_run


def tokens_per_s(run, skip: int) -> float:
    steps = [r for r in run.records if "tokens_per_s" in r][skip:]
    return run.ds_config["train_batch_size"] * run.seq_len / statistics.median(r["step_time_s"] for r in steps)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="recipes/default.yaml")
    p.add_argument("--ds_config", default=None, help="default: the launcher's default ds_config")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--skip", type=int, default=5)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    from moe.config.args import DEFAULT_DS_CONFIG

    ds_config = args.ds_config or DEFAULT_DS_CONFIG
    cores = sorted(os.sched_getaffinity(0))
    n = len(cores)
    common = [f"train.warmup_steps={args.skip}", *args.overrides]
    layouts = {}
    with tempfile.TemporaryDirectory() as tmp:
        one = train_run(args.recipe, ds_config, args.steps, 1, ["moe.ep_size=1", *common], Path(tmp), "one_rank")
        layouts[f"1 rank x {n} threads"] = {"tokens_per_s": tokens_per_s(one, args.skip)}
        many = train_run(args.recipe, ds_config, args.steps, n, common, Path(tmp), "ranks")
        layouts[f"{n} ranks x 1 thread"] = {"tokens_per_s": tokens_per_s(many, args.skip)}
        runs: dict[int, object] = {}

        def side_by_side(i: int, core: int) -> None:
            runs[i] = train_run(args.recipe, ds_config, args.steps, 1, ["moe.ep_size=1", *common], Path(tmp),
                                f"side_{i}", master_port=29700 + i, cpus=str(core))  # fmt: skip

        workers = [threading.Thread(target=side_by_side, args=(i, c)) for i, c in enumerate(cores)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        each = [tokens_per_s(runs[i], args.skip) for i in sorted(runs)]
        layouts[f"{n} runs x 1 thread"] = {"tokens_per_s": sum(each), "per_run": each}
    best = max(layouts, key=lambda k: layouts[k]["tokens_per_s"])
    result = {"recipe": args.recipe, "ds_config": ds_config, "overrides": args.overrides, "cores": n,
              "steps": args.steps, "skip": args.skip, "layouts": layouts, "fastest": best}  # fmt: skip
    print(f"{args.recipe} + {ds_config} {' '.join(args.overrides)} on {n} cores, machine total tokens/s:")
    for name, layout in layouts.items():
        print(f"  {name:<22} {layout['tokens_per_s']:8,.0f}" + ("   <- fastest" if name == best else ""))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
