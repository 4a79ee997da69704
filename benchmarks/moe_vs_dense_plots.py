"""The MoE-against-dense study's figures and tables (benchmarks/moe_vs_dense.py computes what they show)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from moe.scaling.plots import pyplot

COMMANDS = """```bash
python launch/sweep.py recipes/scaling/cpu_study_lr.yaml --parallel auto   # the learning rate per family
python launch/sweep.py recipes/scaling/cpu_study.yaml --parallel auto      # the study
python launch/sweep.py recipes/scaling/cpu_study_sizes.yaml --parallel auto  # the scaling fit's sizes
python benchmarks/moe_vs_dense.py runs/cpu-study-*                         # summaries, this page, the JSON
```"""


def run_label(r: dict) -> str:
    if r["kind"] == "dense":
        return f"dense ({r.get('matched') or 'active'}-matched, d_ff {r['d_ff']})"
    width = "" if r["expert_d_ff"] == r["d_ff"] else f", expert d_ff {r['expert_d_ff']}"
    return f"MoE-{r['num_experts']} top-{r['top_k']}{width}"


def write_figures(study: list[dict], sizes: list[dict], result: dict, docs: Path) -> dict[str, str]:
    """The PNGs under `docs`, by role; only those the summaries can fill."""
    figures = {}
    if study:
        figures["curves"] = _curves(study, docs / "moe_vs_dense_curves.png")
        figures["experts"] = _final_vs_experts(study, result["study"], docs / "moe_vs_dense_experts.png")
        if any(r["expert_load"] for r in study):
            figures["load"] = _expert_load(study, docs / "moe_vs_dense_load.png")
    if result.get("scaling_fit"):
        figures["fit"] = _fit(result["scaling_fit"], docs / "moe_vs_dense_fit.png")
    return figures


def _curves(runs: list[dict], png: Path) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    first_seed = min(r["seed"] for r in runs)
    for r in sorted(runs, key=lambda r: (r["kind"], r["num_experts"] or 0, r["top_k"] or 0, r["seed"])):
        tokens, losses = np.array([v[0] for v in r["val"][1:]]), np.array([v[1] for v in r["val"][1:]])
        dashes = "-" if r["seed"] == first_seed else ":"  # a seed repeat dotted
        color = None if r["kind"] == "moe" else ("black" if r.get("matched") == "active" else "grey")
        label = f"{run_label(r)} seed {r['seed']}"
        ax.plot(tokens / 1e6, losses, linestyle=dashes, color=color, label=label, linewidth=1.3)
    ax.set_xlabel("training tokens (M)")
    ax.set_ylabel("validation loss (the same 4,096 blocks)")
    ax.set_ylim(top=min(max(v[1] for r in runs for v in r["val"][1:2]), 6.0))
    ax.set_title("MoE against dense: validation loss against tokens")
    ax.legend(fontsize=7)
    return _save(fig, png, plt)


def _final_vs_experts(runs: list[dict], rows: list[dict], png: Path) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    by_name = {r["name"]: r for r in runs}
    first_seed = min(row["seed"] for row in rows)
    top1 = sorted((row for row in rows if row["kind"] == "moe" and row["top_k"] == 1), key=lambda r: r["num_experts"])
    if top1:
        x = [row["num_experts"] for row in top1]
        ax.errorbar(
            x, [row["final_val_loss"] for row in top1], yerr=[_err(row) for row in top1], fmt="o-", label="top-1"
        )
    for row in rows:
        if row["kind"] == "moe" and row["top_k"] != 1:
            ax.errorbar(
                [row["num_experts"]],
                [row["final_val_loss"]],
                yerr=[_err(row)],
                fmt="s",
                label=run_label(by_name[row["name"]]),
            )
        if row["kind"] == "dense":
            ax.axhline(
                row["final_val_loss"],
                color="k",
                linestyle=("-" if row["matched"] == "active" else "--") if row["seed"] == first_seed else ":",
                linewidth=1,
                label=f"{run_label(by_name[row['name']])} seed {row['seed']}",
            )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("experts per MoE layer")
    ax.set_ylabel("final validation loss")
    ax.set_title("Final loss against expert count (bars: paired s.e. against dense)")
    ax.legend(fontsize=7)
    return _save(fig, png, plt)


def _err(row: dict) -> float:
    return row["paired_diff_se"] if row["paired_diff_se"] is not None else (row["final_val_loss_se"] or 0.0)


def _expert_load(runs: list[dict], png: Path) -> str:
    """Per MoE run: each expert's share of the tokens / the mean share, averaged over the MoE layers, over tokens."""
    plt = pyplot()
    moe = sorted((r for r in runs if r["expert_load"]), key=lambda r: (r["top_k"], r["num_experts"]))
    fig, axes = plt.subplots(1, len(moe), figsize=(3.2 * len(moe), 3.6), squeeze=False)
    for ax, r in zip(axes[0], moe):
        layers = [np.asarray(points, dtype=float) for points in r["expert_load"].values()]  # (points, 1 + E) each
        load = np.mean([points[:, 1:] for points in layers], axis=0).T  # (E, points)
        tokens = layers[0][:, 0] / 1e6
        image = ax.imshow(
            load,
            aspect="auto",
            cmap="viridis",
            vmin=0,
            vmax=2,
            extent=(tokens[0], tokens[-1], load.shape[0] - 0.5, -0.5),
        )
        ax.set_title(run_label(r), fontsize=8)
        ax.set_xlabel("tokens (M)")
        ax.set_ylabel("expert")
    fig.colorbar(image, ax=axes[0].tolist(), label="load / mean")
    return _save(fig, png, plt, tight=False)


def _fit(fit: dict, png: Path) -> str:
    plt = pyplot()
    from matplotlib.ticker import FormatStrFormatter

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for family, entry in fit["families"].items():
        c = np.array([p["compute"] for p in entry["points"]])
        (dots,) = ax.plot(c, [p["loss"] for p in entry["points"]], "o", label=family)
        if "fit" in entry:
            grid = np.geomspace(c.min(), c.max(), 50)
            ax.plot(grid, entry["fit"]["a"] * grid ** -entry["fit"]["b"], "-", linewidth=1, color=dots.get_color())
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        axis(FormatStrFormatter("%.2f"))
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("final validation loss")
    ax.set_title("Loss against compute, L = a C^-b per family")
    ax.legend(fontsize=8)
    return _save(fig, png, plt)


def _save(fig, png: Path, plt, tight: bool = True) -> str:
    png.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png.name


def write_markdown(result: dict, figures: dict[str, str], path: Path) -> None:
    lines = [
        "# MoE against dense: the measured tables",
        "",
        "Generated by `python benchmarks/moe_vs_dense.py` from the run summaries in",
        "`benchmarks/results/moe_vs_dense_study/`; the narrative and the diagnosis are in",
        "[moe_vs_dense.md](moe_vs_dense.md).",
        "",
        COMMANDS,
        "",
    ]
    if result["lr_sweep"]:
        lines += [
            "## Learning rate per family",
            "",
            "| run | family | lr | tokens | final val loss |",
            "|---|---|---|---|---|",
        ]
        for r in result["lr_sweep"]:
            best = " **(best)**" if r.get("best_of_family") else ""
            lines.append(
                f"| {r['name']} | {r['kind']} | {r['lr']:g}{best} | {r['tokens']:,} | {r['final_val_loss']:.4f} |"
            )
        lines.append("")
    if result.get("study"):
        lines += ["## The study", "", *_run_table(result["study"]), ""]
    if result.get("study_other_data"):  # another environment's runs: other validation blocks, so no pairing
        lines += [f"Left out, scored on other data: {', '.join(result['study_other_data'])}.", ""]
    v = result.get("verdict")
    if v:
        frac = f"{v['best_tokens_fraction']:.2f}x" if v["best_tokens_fraction"] else "never"
        gain = f"{v['best_gain']:.4f}" if v["best_gain"] is not None else "-"
        noise = f"{v['seed_noise']:.4f}" if v["seed_noise"] is not None else "not measured"
        losses = ", ".join(f"{loss:.4f}" for loss in v["top1_final_losses"])
        lines += [
            f"Best MoE run: {v['best_moe'] or 'none reached the dense final loss'}, at {frac} the dense run's tokens; "
            f"paired gain {gain} against seed-to-seed noise {noise} (over twice the noise: "
            f"{'yes' if v['gain_over_twice_noise'] else 'no'}).",
            f"Top-1 final loss at E = {', '.join(map(str, v['top1_experts']))}: {losses} (falls with every doubling: "
            f"{'yes' if v['top1_falls_with_experts'] else 'no'}).",
            "",
        ]
    lines += _noise_lines(result["seed_noise"])
    if result["ablations"].get("rows"):
        lines += ["", *_ablation_section(result["ablations"])]
    fit = result.get("scaling_fit")
    if fit:
        lines += [
            "",
            "## Scaling fit",
            "",
            "| family | points | a | b | largest residual | compute multiplier at equal loss |",
            "|---|---|---|---|---|---|",
        ]
        for family, entry in fit["families"].items():
            law = entry.get("fit")
            mult = entry.get("compute_multiplier")
            where = "" if not mult or mult["within_dense_points"] else " (extrapolated)"
            mult = f"{mult['dense_over_moe']:.2f}x at loss {mult['at_loss']:.3f}{where}" if mult else "-"
            ab = f"{law['a']:.3g} | {law['b']:.4f} | {law['max_abs_residual']:.4f}" if law else "- | - | -"
            lines.append(f"| {family} | {len(entry['points'])} | {ab} | {mult} |")
        lines += [
            "",
            "| family | run | d_model | active params | total params | tokens | training FLOPs | final val loss "
            "| vs dense of its size |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for family, entry in fit["families"].items():
            for p in entry["points"]:
                params = " | ".join(f"{p[k]:,}" if p.get(k) else "-" for k in ("active_params", "total_params"))
                diff = p.get("paired_diff_vs_dense_of_size")
                diff = "-" if diff is None else f"{diff:+.4f} ± {p['paired_diff_se']:.4f}"
                lines.append(
                    f"| {family} | {p['run']} | {p.get('d_model') or '-'} | {params} | {p['tokens']:,} "
                    f"| {p['compute']:.3g} | {p['loss']:.4f} | {diff} |"
                )
    lines += [""] + [f"![{role}]({name})" for role, name in figures.items()]
    path.write_text("\n".join(lines) + "\n")


def _noise_lines(noise: dict) -> list[str]:
    lines = []
    for run, n in noise.items():
        se = f" (paired s.e. {n['paired_se']:.4f})" if n["paired_se"] else ""
        lines.append(f"Seed repeat ({n['varies']}): {run} against {n['of']}: |diff| {n['abs_diff']:.4f}{se}.")
    return lines


def _ablation_section(ab: dict) -> list[str]:
    """One line a change to MoE-8 top-1, with the paired differences against both baselines."""
    lines = [
        "## Ablations of MoE-8 top-1",
        "",
        f"At the LR sweep's length; baselines: dense {ab['baselines']['dense']}, MoE {ab['baselines']['moe']}. "
        "Paired differences are over the same validation blocks (negative: lower loss than the baseline). Router: "
        "its entropy / log E and the chosen expert's mean probability, over the last 5% of steps and the layers.",
        "",
        "| run | change | final val loss | vs dense | vs MoE-8 | tokens to dense final | train/val gap "
        "| router entropy / top p | tokens/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def diff(mean, se):
        if mean is None:
            return "-"
        return f"{mean:+.4f} ± {se:.4f}" if se else f"{mean:+.4f}"

    for r in ab["rows"]:
        reach = f"{r['tokens_to_dense_final'] / 1e6:.2f}M" if r["tokens_to_dense_final"] else "not reached"
        gap = f"{r['train_val_gap']:.4f}" if r["train_val_gap"] is not None else "-"
        tps = f"{r['tokens_per_s']:,.0f}" if r["tokens_per_s"] else "-"
        vs_dense = diff(r["paired_diff_vs_dense"], r["paired_diff_se"])
        vs_moe = diff(r["paired_diff_vs_moe"], r["paired_diff_vs_moe_se"])
        router = r.get("router") or {}
        sharp = "-" if router.get("top_prob") is None else f"{router['entropy_norm']:.3f} / {router['top_prob']:.3f}"
        lines.append(
            f"| {r['name']} | {r['change']} | {r['final_val_loss']:.4f} | {vs_dense} | {vs_moe} | {reach} | {gap} | "
            f"{sharp} | {tps} |"
        )
    losses = ", ".join(f"{loss:.4f}" for loss in ab["top1_final_losses"])
    falls = "yes" if ab["top1_falls_with_experts"] else "no"
    experts = ", ".join(map(str, ab["top1_experts"]))
    lines += ["", f"Top-1 final loss at E = {experts}: {losses} (falls with every doubling: {falls}).", ""]
    return lines + _noise_lines(ab["seed_noise"])


def _run_table(rows: list[dict]) -> list[str]:
    """One line a run: its final loss, the paired difference against the active-matched dense run (block by block
    over the same validation blocks, ± its standard error), the tokens to that run's final loss."""
    lines = [
        "| run | active / total params | tokens | final val loss ± s.e. | paired diff vs dense | "
        "tokens to dense final | speedup | train/val gap | tokens/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        diff = "-"
        if r["paired_diff_se"] is not None:
            diff = f"{r['paired_diff_vs_dense']:+.4f} ± {r['paired_diff_se']:.4f}"
        reach = f"{r['tokens_to_dense_final'] / 1e6:.2f}M" if r["tokens_to_dense_final"] else "not reached"
        speed = f"{1 / r['tokens_fraction_of_dense']:.2f}x" if r["tokens_fraction_of_dense"] else "-"
        gap = f"{r['train_val_gap']:.4f}" if r["train_val_gap"] is not None else "-"
        tps = f"{r['tokens_per_s']:,.0f}" if r["tokens_per_s"] else "-"
        lines.append(
            f"| {r['name']} | {r['active_params'] / 1e6:.2f}M / {r['total_params'] / 1e6:.2f}M | {r['tokens']:,} | "
            f"{r['final_val_loss']:.4f} ± {r['final_val_loss_se'] or 0:.4f} | {diff} | {reach} | {speed} | {gap} | "
            f"{tps} |"
        )
    return lines
