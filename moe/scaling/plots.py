"""Offline plots of a run from its metrics.jsonl, no W&B needed:

    python -m moe.plot runs/<name> [--out DIR]      # writes DIR (default runs/<name>/plots) /*.png

loss.png        training loss (total and LM), validation loss, and the auxiliary balance loss, against the step
throughput.png  tokens/s and step time against the step
expert_load.png per MoE layer, each expert's routed tokens / the mean over experts, over the steps (a heatmap:
                1.0 = perfectly balanced); from router telemetry (logging.router_stats)
router.png      per MoE layer, the fraction of routes dropped over capacity and the normalized router entropy
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

LOAD_KEY = re.compile(r"router/layer(\d+)/tokens_per_expert")


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit(
            "error: plotting needs matplotlib (pinned in requirements.txt): pip install -r requirements.txt"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(training records, validation records) of runs/<name>/metrics.jsonl."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"error: no metrics.jsonl in {run_dir}")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if "loss" in r], [r for r in records if "val_loss" in r]


def expert_loads(train: list[dict]) -> dict[int, tuple[list[int], np.ndarray]]:
    """{MoE layer: (steps, load)}: load[e, t] = tokens routed to expert e at steps[t] / the mean over experts."""
    layers: dict[int, tuple[list[int], list[list[float]]]] = {}
    for r in train:
        for key, counts in r.items():
            match = LOAD_KEY.fullmatch(key)
            if match:
                steps, columns = layers.setdefault(int(match.group(1)), ([], []))
                steps.append(r["step"])
                columns.append(counts)
    out = {}
    for layer, (steps, columns) in sorted(layers.items()):
        counts = np.asarray(columns, dtype=float).T  # (experts, logged steps)
        out[layer] = steps, counts / np.maximum(counts.mean(axis=0, keepdims=True), 1e-12)
    return out


def plot_run(run_dir: Path, out: Path) -> list[Path]:
    plt = pyplot()
    train, val = read_metrics(run_dir)
    if not train:
        raise SystemExit(f"error: {run_dir}/metrics.jsonl has no training steps yet")
    out.mkdir(parents=True, exist_ok=True)
    steps = [r["step"] for r in train]
    written = []

    fig, (ax_loss, ax_aux) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=[3, 1])
    ax_loss.plot(steps, [r["loss"] for r in train], label="train loss")
    if "lm_loss" in train[0]:
        ax_loss.plot(steps, [r["lm_loss"] for r in train], label="train LM loss", alpha=0.7)
    if val:
        ax_loss.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation loss")
    ax_loss.set_ylabel("loss (nats/token)")
    ax_loss.legend()
    ax_loss.set_title(run_dir.name)
    ax_aux.plot(steps, [r.get("aux_loss", np.nan) for r in train], color="tab:red")
    ax_aux.set_ylabel("aux loss")
    ax_aux.set_xlabel("step")
    written.append(_save(fig, out / "loss.png", plt))

    fig, (ax_tok, ax_time) = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    ax_tok.plot(steps, [r["tokens_per_s"] for r in train])
    ax_tok.set_ylabel("tokens/s")
    ax_tok.set_title(f"{run_dir.name}: throughput")
    ax_time.plot(steps, [r["step_time_s"] * 1e3 for r in train], color="tab:green")
    ax_time.set_ylabel("step time (ms)")
    ax_time.set_xlabel("step")
    written.append(_save(fig, out / "throughput.png", plt))

    loads = expert_loads(train)
    if loads:
        fig, axes = plt.subplots(len(loads), 1, figsize=(8, 2.2 * len(loads) + 1), squeeze=False)
        for ax, (layer, (load_steps, load)) in zip(axes[:, 0], loads.items()):
            image = ax.imshow(
                load,
                aspect="auto",
                origin="lower",
                cmap="coolwarm",
                vmin=0,
                vmax=2,
                extent=(load_steps[0] - 0.5, load_steps[-1] + 0.5, -0.5, load.shape[0] - 0.5),
                interpolation="nearest",
            )
            ax.set_ylabel(f"layer {layer}\nexpert")
            ax.yaxis.get_major_locator().set_params(integer=True)
            fig.colorbar(image, ax=ax, label="load / mean")
        axes[0, 0].set_title(f"{run_dir.name}: tokens per expert / mean (1 = balanced)")
        axes[-1, 0].set_xlabel("step")
        written.append(_save(fig, out / "expert_load.png", plt))

        fig, (ax_drop, ax_ent) = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
        for layer in loads:
            prefix = f"router/layer{layer}/"
            ax_drop.plot(steps, [r.get(prefix + "dropped_frac", np.nan) for r in train], label=f"layer {layer}")
            ax_ent.plot(steps, [r.get(prefix + "router_entropy_norm", np.nan) for r in train], label=f"layer {layer}")
        ax_drop.set_ylabel("dropped routes")
        ax_drop.legend()
        ax_ent.set_ylabel("router entropy / ln E")
        ax_ent.set_xlabel("step")
        written.append(_save(fig, out / "router.png", plt))
    return written


def _save(fig, path: Path, plt) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m moe.plot", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("run_dir", type=Path, help="runs/<name>")
    p.add_argument("--out", type=Path, default=None, help="folder for the PNGs (default runs/<name>/plots)")
    args = p.parse_args(argv)
    for path in plot_run(args.run_dir, args.out or args.run_dir / "plots"):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
