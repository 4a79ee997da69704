"""MoE against dense at equal active FLOPs per token and equal tokens: steps to reach the dense run's final
validation loss, final validation losses, and one plot of validation loss against step.

    python launch/sweep.py recipes/scaling/moe_vs_dense_top1.yaml     # dense + Switch-style top-1, E = 4, 8, 16
    python launch/sweep.py recipes/scaling/moe_vs_dense_top2.yaml     # top-2 at half expert width, E = 4, 8, 16
    python benchmarks/moe_vs_dense.py runs/moe-vs-dense-*             # table, JSON and PNG

The run named *-dense is the reference. A MoE run's step to the dense final loss is the first validation step at
which its loss is at or below it, linearly interpolated between validations (they are train.eval_interval apart);
speedup = dense steps / that step. Wall-clock speed is reported beside it: on this CPU the experts' dispatch is not
free, so a step-count speedup is not a time speedup.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path

from moe.model import MoEGPTConfig
from moe.model.cost import model_cost

REPO = Path(__file__).resolve().parent.parent


def read_run(run_dir: Path) -> dict:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    steps = [r for r in records if "step_time_s" in r]
    config = MoEGPTConfig.from_pretrained(run_dir / "model_config")
    cost = model_cost(config, config.max_seq_len)
    return {
        "name": run_dir.name,
        "val": val,
        "median_step_s": statistics.median(r["step_time_s"] for r in steps[5:]),
        "experts": config.num_experts if config.moe_enabled else 0,
        "top_k": config.num_experts_per_tok,
        "active_params": cost.active_params,
        "total_params": cost.total_params,
        "train_flops_per_token": cost.train_flops_per_token(),
    }


def step_to_reach(val: list[tuple[int, float]], target: float) -> float | None:
    """First step at which the validation loss reaches `target`, interpolated between validations."""
    for (s0, l0), (s1, l1) in itertools.pairwise(val):
        if l1 <= target:
            return s1 if l0 == l1 else s0 + (l0 - target) / (l0 - l1) * (s1 - s0)
    return None


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--json", type=Path, default=REPO / "benchmarks/results/moe_vs_dense_cpu2.json")
    p.add_argument("--png", type=Path, default=REPO / "docs/moe_vs_dense.png")
    args = p.parse_args(argv)
    runs = [read_run(r) for r in args.runs]
    dense = [r for r in runs if r["experts"] == 0]
    if len(dense) != 1:
        raise SystemExit(f"need exactly one dense run among {[r['name'] for r in runs]}")
    dense = dense[0]
    target, dense_steps = dense["val"][-1][1], dense["val"][-1][0]
    rows = []
    for r in sorted(runs, key=lambda r: (r["top_k"] if r["experts"] else 0, r["experts"])):
        reached = step_to_reach(r["val"], target) if r["experts"] else dense_steps
        rows.append(
            {
                **{
                    k: r[k]
                    for k in (
                        "name",
                        "experts",
                        "top_k",
                        "active_params",
                        "total_params",
                        "train_flops_per_token",
                        "median_step_s",
                    )
                },
                "final_val_loss": r["val"][-1][1],
                "step_to_dense_final_loss": reached,
                "step_speedup": dense_steps / reached if reached else None,
                "time_per_step_vs_dense": r["median_step_s"] / dense["median_step_s"],
            }
        )
    print(f"dense final validation loss {target:.4f} at step {dense_steps}")
    print(
        "| run | experts | top-k | active / total params | FLOPs/token | final val loss | step to dense final "
        "| step speedup | time/step vs dense |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        reached = f"{row['step_to_dense_final_loss']:.0f}" if row["step_to_dense_final_loss"] else "not reached"
        speedup = f"{row['step_speedup']:.2f}x" if row["step_speedup"] else "-"
        print(
            f"| {row['name']} | {row['experts'] or 'dense'} | {row['top_k'] if row['experts'] else '-'} | "
            f"{row['active_params'] / 1e6:.2f}M / {row['total_params'] / 1e6:.2f}M | "
            f"{row['train_flops_per_token'] / 1e6:.1f}M | {row['final_val_loss']:.4f} | {reached} | {speedup} | "
            f"{row['time_per_step_vs_dense']:.2f}x |"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"dense_final_val_loss": target, "rows": rows}, indent=1) + "\n")
    _plot(runs, target, args.png)
    print(f"wrote {args.json} and {args.png}")
    return {"rows": rows}


def _plot(runs: list[dict], target: float, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in sorted(runs, key=lambda r: (r["top_k"] if r["experts"] else 0, r["experts"])):
        label = "dense" if not r["experts"] else f"MoE-{r['experts']} top-{r['top_k']}"
        style = "k-" if not r["experts"] else ("-" if r["top_k"] == 1 else "--")
        steps, losses = zip(*r["val"][1:])  # step 0 is the untrained model
        ax.plot(steps, losses, style, label=label, linewidth=2 if not r["experts"] else 1.2)
    ax.axhline(target, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("step (equal tokens per step)")
    ax.set_ylabel("validation loss")
    ax.set_title("MoE vs dense at equal active FLOPs per token")
    ax.legend()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


if __name__ == "__main__":
    main()
