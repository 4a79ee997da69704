"""fp32 against bf16 on a whole run: the validation-loss curve and tokens/s of a recipe under both precisions.

    python benchmarks/precision_ab.py                             # the default recipe, 300 steps, 2 CPU ranks
    python benchmarks/precision_ab.py --steps 100 model.d_model=512

Both runs go through the real launcher with the recipe's own schedule and validation (train.eval_interval), on
the same data order, one after the other: fp32 is `ds_configs/zero1.json`, bf16 is `ds_configs/zero1_bf16.json`
(the same ZeRO-1 config with `bf16.enabled`). Reported: every validation point of both, the largest relative gap
|bf16 - fp32| / fp32 over the curve (the default is bf16 only while it stays within 1%), the median tokens/s after
--skip steps and the speedup. The JSON goes to --json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from benchmarks.throughput import train_run

ARMS = {"fp32": "ds_configs/zero1.json", "bf16": "ds_configs/zero1_bf16.json"}


def one_run(args, name: str, runs_dir: Path) -> dict:
    run = train_run(args.recipe, ARMS[name], args.steps, args.num_gpus, [
        "train.eval_interval=" + str(args.eval_interval), *args.overrides], runs_dir, run_name=name,
        stop_after_last_step=False)  # fmt: skip
    steps = [r for r in run.records if "tokens_per_s" in r]
    val = {r["step"]: r["val_loss"] for r in run.records if "val_loss" in r}
    return {
        "ds_config": ARMS[name],
        "val_loss": val,
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steps[args.skip :]),
        "step_time_s_sum": sum(r["step_time_s"] for r in steps),
        "mfu_median": statistics.median(r["mfu"] for r in steps[args.skip :]),
        "device_peaks": run.device_peaks,
        "wall_s": run.wall_s,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="recipes/default.yaml")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--eval-interval", type=int, default=50)
    p.add_argument("--skip", type=int, default=10)
    p.add_argument("--num_gpus", type=int, default=2, help="ranks (CPU ranks where there is no GPU)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        arms = {name: one_run(args, name, Path(tmp)) for name in ARMS}
    fp32, bf16 = arms["fp32"]["val_loss"], arms["bf16"]["val_loss"]
    gaps = {s: (bf16[s] - fp32[s]) / fp32[s] for s in fp32 if s in bf16}
    worst = max(gaps, key=lambda s: abs(gaps[s]))
    result = {
        "recipe": args.recipe,
        "overrides": args.overrides,
        "ranks": args.num_gpus,
        "steps": args.steps,
        "arms": arms,
        "relative_gap_by_step": gaps,
        "max_abs_relative_gap": abs(gaps[worst]),
        "max_gap_step": worst,
        "speedup": arms["bf16"]["tokens_per_s"] / arms["fp32"]["tokens_per_s"],
    }
    print(f"{args.recipe} {' '.join(args.overrides)}, {args.num_gpus} ranks, {args.steps} steps")
    for name, a in arms.items():
        curve = " ".join(f"{v:.3f}" for v in a["val_loss"].values())
        print(f"  {name}: {a['tokens_per_s']:,.0f} tok/s, MFU {a['mfu_median']:.1%}; val loss {curve}")
    print(f"  bf16/fp32: {result['speedup']:.2f}x tokens/s; largest val-loss gap {gaps[worst]:+.2%} at step {worst}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
