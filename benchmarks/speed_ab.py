"""A/B one speed change: train a recipe under two (or more) sets of overrides, alternating, and compare.

    python benchmarks/speed_ab.py --arm base= --arm fused=ds.optimizer.params.fused=true
    python benchmarks/speed_ab.py --recipe recipes/gpu/moe_1b_8x_top2.yaml --num_gpus 1 \\
        --arm loop= --arm batched=moe.batched_experts=true ds.train_micro_batch_size_per_gpu=4

Each arm is `NAME=override,override,...` (empty after `=`: the baseline). The arms run in turn, --rounds times
(A B A B ...), so that a change in machine load hits every arm alike. Per run: the median step time after --skip
warm-up steps (benchmarks/throughput.py), the medians of DeepSpeed's timers (ds.wall_clock_breakdown=true), the
peak memory of rank 0 (mem_peak_gb on a GPU, rss_peak_gb on CPU) and the last loss. Per arm: the median over its
rounds, and its step time relative to the first arm. `--ds_config` may also be given per arm as
`ds_config=ds_configs/X.json` among its overrides. Trailing positional overrides apply to every arm.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from benchmarks.throughput import train_run

REPO = Path(__file__).resolve().parent.parent

TIMERS = {
    "fwd_ms": "time_forward_ms",
    "bwd_ms": "time_backward_ms",
    "allreduce_ms": "time_grad_allreduce_ms",
    "optimizer_ms": "time_optimizer_ms",
}


def parse_arm(text: str) -> tuple[str, list[str]]:
    name, _, rest = text.partition("=")
    if not name:
        raise argparse.ArgumentTypeError(f"--arm {text!r}: expected NAME=override,override,... (or NAME=)")
    return name, [o for o in rest.split(",") if o]


def one_run(args, name: str, overrides: list[str], runs_dir: Path, round_: int) -> dict:
    ds_config = next((o.split("=", 1)[1] for o in overrides if o.startswith("ds_config=")), args.ds_config)
    overrides = [o for o in overrides if not o.startswith("ds_config=")]
    run = train_run(
        args.recipe,
        ds_config,
        args.steps,
        args.num_gpus,
        [f"train.warmup_steps={args.skip}", "ds.wall_clock_breakdown=true", *overrides, *args.overrides],
        runs_dir,
        run_name=f"{name}_{round_}",
    )
    steps = [r for r in run.records if "tokens_per_s" in r][args.skip :]
    memory = "mem_peak_gb" if "mem_peak_gb" in steps[-1] else "rss_peak_gb"
    step_s = statistics.median(r["step_time_s"] for r in steps)
    out = {
        "step_ms": step_s * 1e3,
        "tokens_per_s": run.ds_config["train_batch_size"] * run.seq_len / step_s,
        "peak_memory_gb": max(r[memory] for r in steps),
        "last_loss": steps[-1]["loss"],
    }
    out.update(
        {
            ours: statistics.median(r[theirs] for r in steps)
            for ours, theirs in TIMERS.items()
            if all(theirs in r for r in steps)
        }
    )
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="recipes/default.yaml")
    p.add_argument("--ds_config", default="ds_configs/zero1.json")
    p.add_argument("--arm", type=parse_arm, action="append", required=True, help="NAME=override,override,...")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--skip", type=int, default=5, help="warm-up steps left out of the medians")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--num_gpus", type=int, default=2, help="ranks (CPU ranks where there is no GPU)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("overrides", nargs="*", help="overrides for every arm")
    args = p.parse_args(argv)
    runs = {name: [] for name, _ in args.arm}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for name, overrides in args.arm:
                runs[name].append(one_run(args, name, overrides, Path(tmp), round_))
    arms = {}
    for name, overrides in args.arm:
        keys = runs[name][0].keys()
        arms[name] = {
            "overrides": overrides,
            "runs": runs[name],
            **{k: statistics.median(r[k] for r in runs[name]) for k in keys},
        }
    base = arms[args.arm[0][0]]["step_ms"]
    print(f"{args.recipe} ({args.ds_config}, {args.num_gpus} ranks, {args.steps} steps, {args.rounds} rounds)")
    for name, a in arms.items():
        a["step_vs_first"] = a["step_ms"] / base
        timers = "  ".join(f"{k} {a[k]:.1f}" for k in TIMERS if k in a)
        print(
            f"  {name:<14} step {a['step_ms']:8.1f} ms ({a['step_vs_first']:.3f}x)  {a['tokens_per_s']:,.0f} tok/s  "
            f"{timers}  peak {a['peak_memory_gb']:.3f} GB  loss {a['last_loss']:.5f}"
        )
    result = {
        "recipe": args.recipe,
        "ds_config": args.ds_config,
        "ranks": args.num_gpus,
        "steps": args.steps,
        "skip": args.skip,
        "rounds": args.rounds,
        "common_overrides": args.overrides,
        "arms": arms,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
