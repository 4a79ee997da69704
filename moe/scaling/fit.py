"""Fit validation loss against training compute, L = a * C^-b (+ E), for dense and MoE runs, and plot them together.

    python -m moe.scaling runs/tiny-scaling-* [--irreducible] [--all-points] [--out scaling.png]

C is FLOPs: training FLOPs per token of the run's model (moe/model/cost.py: 6 x active matmul weights + attention) times
the tokens it had seen (step x global batch x sequence length). Each run gives one point, its last validation loss
(--all-points: every validation after step 0). Runs group into curves by their MoE shape: dense, or E experts
top-k. --irreducible adds E, the loss no compute removes.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml


@dataclass(frozen=True)
class Point:
    run: str
    family: str  # "dense" or "MoE 4x top-2"
    compute: float  # training FLOPs so far
    loss: float  # validation loss (nats/token)


@dataclass(frozen=True)
class PowerLaw:
    a: float
    b: float
    e: float = 0.0  # irreducible loss

    def __call__(self, compute):
        return self.e + self.a * np.power(compute, -self.b)


def family(recipe: dict) -> str:
    moe = recipe["moe"]
    if not moe["enabled"]:
        return "dense"
    experts = moe["num_experts"]
    shape = "-".join(map(str, experts)) if isinstance(experts, list) else str(experts)
    return f"MoE {shape}x top-{moe['top_k']}"


def run_points(run_dir: Path, all_points: bool = False) -> list[Point]:
    """(compute, validation loss) points of one finished or running run folder."""
    from moe.model import MoEGPTConfig
    from moe.model.cost import model_cost

    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    batch = json.loads((run_dir / "ds_config.json").read_text())["train_batch_size"]
    seq_len = recipe["data"]["seq_len"]
    flops_per_token = model_cost(
        MoEGPTConfig.from_pretrained(run_dir / "model_config"), seq_len
    ).train_flops_per_token()
    from moe.scaling.plots import read_metrics

    val = [r for r in read_metrics(run_dir)[1] if r["step"] > 0]
    points = [
        Point(run_dir.name, family(recipe), flops_per_token * r["step"] * batch * seq_len, r["val_loss"]) for r in val
    ]
    return points if all_points else points[-1:]


def fit_power_law(compute, loss, irreducible: bool = False) -> PowerLaw:
    """Least squares in log-loss space. Without E it is a straight line in log-log (closed form); with E the
    residual is minimized over E in [0, min loss) by a grid then golden-section search, with a and b in closed
    form for each E. Written here because scipy is not a dependency of this project."""
    c, y = np.log(np.asarray(compute, dtype=float)), np.asarray(loss, dtype=float)
    if len(c) < 2 + irreducible:
        raise ValueError(f"fitting needs at least {2 + irreducible} points, got {len(c)}")

    def line(e: float) -> tuple[PowerLaw, float]:
        slope, intercept = np.polyfit(c, np.log(y - e), 1)
        law = PowerLaw(math.exp(intercept), -float(slope), float(e))
        return law, float(np.sum((np.log(law(np.exp(c))) - np.log(y)) ** 2))

    if not irreducible:
        return line(0.0)[0]
    top = float(y.min()) * (1 - 1e-9)
    grid = np.linspace(0.0, top, 400)
    best = int(np.argmin([line(e)[1] for e in grid]))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(100):
        x1, x2 = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if line(x1)[1] <= line(x2)[1]:
            hi = x2
        else:
            lo = x1
    return line((lo + hi) / 2)[0]


def fit_families(points: list[Point], irreducible: bool) -> dict[str, PowerLaw | None]:
    """One power law per family; None where a family has too few points to fit."""
    by_family = defaultdict(list)
    for p in points:
        by_family[p.family].append(p)
    fits = {}
    for name, members in sorted(by_family.items()):
        try:
            fits[name] = fit_power_law([p.compute for p in members], [p.loss for p in members], irreducible)
        except ValueError:
            fits[name] = None
    return fits


def plot(points: list[Point], fits: dict[str, PowerLaw | None], out: Path) -> Path:
    from moe.scaling.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    compute = np.array([p.compute for p in points])
    span = np.geomspace(compute.min() / 1.5, compute.max() * 1.5, 100)
    for i, (name, law) in enumerate(fits.items()):
        color = f"C{i}"
        members = [p for p in points if p.family == name]
        ax.scatter([p.compute for p in members], [p.loss for p in members], color=color, label=name)
        if law is not None:
            ax.plot(span, law(span), color=color, linestyle="--", label=f"{name}: {describe(law)}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    from matplotlib.ticker import FormatStrFormatter

    for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        axis(FormatStrFormatter("%.2f"))  # losses span less than a decade: plain numbers, not 10^x
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel("validation loss L")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def describe(law: PowerLaw) -> str:
    return f"L = {law.a:.4g}·C^-{law.b:.4f}" + (f" + {law.e:.4g}" if law.e else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m moe.scaling", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("runs", nargs="+", type=Path, help="run folders (runs/<name>)")
    p.add_argument("--irreducible", action="store_true", help="fit L = a·C^-b + E")
    p.add_argument("--all-points", action="store_true", help="every validation of every run, not just the last")
    p.add_argument("--out", type=Path, default=None, help="PNG to write (default: scaling.png beside the runs)")
    args = p.parse_args(argv)
    missing = [r for r in args.runs if not (r / "metrics.jsonl").is_file()]
    if missing:
        print(f"error: {missing[0]} is not a run folder (no metrics.jsonl)", file=sys.stderr)
        return 2
    points = [pt for run in args.runs for pt in run_points(run, args.all_points)]
    if not points:
        print("error: no validation loss after step 0 in these runs", file=sys.stderr)
        return 2
    fits = fit_families(points, args.irreducible)
    print("| run | family | compute (FLOPs) | validation loss |\n|---|---|---:|---:|")
    for pt in sorted(points, key=lambda q: (q.family, q.compute)):
        print(f"| {pt.run} | {pt.family} | {pt.compute:.4g} | {pt.loss:.4f} |")
    for name, law in fits.items():
        print(f"{name}: {describe(law) if law else 'too few points to fit'}")
    print(plot(points, fits, args.out or args.runs[0].parent / "scaling.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
