"""The MoE-against-dense study: equal tokens, the same data order, the same validation blocks (docs/moe_vs_dense.md).

    python launch/sweep.py recipes/scaling/cpu_study_lr.yaml --parallel auto   # the learning rate per family
    python launch/sweep.py recipes/scaling/cpu_study.yaml --parallel auto      # the study
    python benchmarks/moe_vs_dense.py runs/cpu-study-*                         # summarize them, then the report
    python benchmarks/moe_vs_dense.py --paired runs/RUN runs/REFERENCE          # two runs, pass by pass, under way

Step 1, every run folder given is summarized into benchmarks/results/moe_vs_dense_study/<run>.json: its validation
curve (tokens, loss, standard error), the training-sample curve, the final pass's loss of every validation block,
the per-expert load over training, its parameters and its speed. The run folders stay on the machine that trained
them; the summaries are committed, so a study that spans several sessions reports over all of its runs.
Step 2, the report over every summary (no run folder needed: `python benchmarks/moe_vs_dense.py` alone):
  benchmarks/results/moe_vs_dense_study.json   one row per run of the study, the LR sweep and the scaling fit
  docs/moe_vs_dense_results.md                  the tables
  docs/moe_vs_dense_*.png                       loss against tokens, final loss against experts, expert load, fit

The reference is the active-matched dense run (the dense run whose training FLOPs per token equal the top-1 MoE
runs') at the recipe's seed. A run's tokens to the reference's final loss are read off its validation curve,
linearly interpolated between passes; speedup = the reference's tokens / those. Every pass of every run scores the
same blocks, so two runs compare block by block: the paired difference's standard error is std(diff) / sqrt(n),
far under either run's own (benchmarks/moe_vs_dense_plots.py draws the figures).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import statistics
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SUMMARIES = REPO / "benchmarks/results/moe_vs_dense_study"
STUDY = "cpu-study"  # run-name prefixes of the three grids
LR_SWEEP = "cpu-study-lr"
SIZES = "cpu-study-size"
ABLATIONS = "cpu-study-ablation"
LOAD_POINTS = 40  # logged steps kept per run for the expert-load figure
# The MoE settings the ablations change, and their values in recipes written before a key existed
ROUTING_DEFAULTS = {
    "aux_loss_coef": 0.01,
    "capacity_factor": 1.0,
    "drop_tokens": True,
    "z_loss_coef": 0.0,
    "routed_scaling_factor": 1.0,
}
# What makes two runs the same configuration (a seed repeat differs in seed or data_seed only)
CONFIG_KEYS = ("kind", "d_model", "d_ff", "num_experts", "top_k", "expert_d_ff", "moe_interval")
CONFIG_KEYS += ("train_flops_per_token", "lr", "max_steps")


def summarize(run_dir: Path) -> dict:
    """What the report needs of one run folder (finished or not)."""
    import yaml

    from moe.model import MoEGPTConfig
    from moe.model.cost import model_cost
    from moe.scaling.plots import expert_loads, read_metrics

    train, val = read_metrics(run_dir)
    if not val:
        raise SystemExit(f"error: {run_dir} has no validation pass yet")
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    config = MoEGPTConfig.from_pretrained(run_dir / "model_config")
    cost = model_cost(config, recipe["data"]["seq_len"])
    final = run_dir / "eval" / f"val_step{val[-1]['step']}.npy"
    loads = expert_loads(train)
    keep = sorted({round(i) for i in np.linspace(0, len(train) - 1, LOAD_POINTS)}) if train else []
    return {
        "name": run_dir.name,
        "kind": "moe" if config.moe_enabled else "dense",
        "num_experts": config.num_experts if config.moe_enabled else None,
        "top_k": config.num_experts_per_tok if config.moe_enabled else None,
        "d_ff": config.d_ff,
        "expert_d_ff": config.expert_d_ff if config.moe_enabled else None,
        "moe_interval": recipe["moe"]["interval"] if config.moe_enabled else None,
        "d_model": config.d_model,
        "n_layers": config.n_layers,
        "lr": recipe["optim"]["lr"],
        "seed": recipe["train"]["seed"],
        "data_seed": recipe["train"].get("data_seed") or recipe["train"]["seed"],
        **{key: recipe["moe"].get(key, default) for key, default in ROUTING_DEFAULTS.items()},
        "active_params": cost.active_params,
        "total_params": cost.total_params,
        "train_flops_per_token": cost.train_flops_per_token(),
        "max_steps": recipe["train"]["max_steps"],
        "data": data_key(run_dir),
        "val": [[r["tokens"], r["val_loss"], r.get("val_loss_se")] for r in val],
        "train_sample": [[r["tokens"], r["train_sample_loss"]] for r in val if "train_sample_loss" in r],
        "final_block_losses": np.round(np.load(final), 5).tolist() if final.is_file() else None,
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in train[5:]) if len(train) > 5 else None,
        "wall_s": train[-1]["time"] - train[0]["time"] if len(train) > 1 else None,
        "expert_load": {  # layer -> [tokens, load of each expert / the mean] at LOAD_POINTS logged steps
            str(layer): [[train[i]["tokens"], *np.round(load[:, i], 3).tolist()] for i in keep if i < load.shape[1]]
            for layer, (_, load) in loads.items()
        },
        "dropped_frac": [[train[i]["tokens"], _mean_dropped(train[i])] for i in keep] if config.moe_enabled else [],
        "router": _router_at_end(train) if config.moe_enabled else None,
    }


def _mean_dropped(record: dict) -> float:
    drops = [v for k, v in record.items() if k.endswith("/dropped_frac")]
    return round(sum(drops) / len(drops), 5) if drops else 0.0


def _router_at_end(train: list[dict]) -> dict:
    """How sharp the router is over the last 5% of logged steps, averaged over MoE layers: its entropy / log E and
    the mean probability of the chosen expert (top-1's combine weight)."""
    tail = train[-max(1, len(train) // 20) :]

    def mean(stat: str) -> float | None:
        values = [v for r in tail for k, v in r.items() if k.startswith("router/layer") and k.endswith("/" + stat)]
        return round(float(np.mean(values)), 4) if values else None

    return {"entropy_norm": mean("router_entropy_norm"), "top_prob": mean("top_prob")}


def tokens_to_reach(curve: list[list[float]], target: float) -> float | None:
    """First point of a (tokens, loss, ...) validation curve at or below `target`, interpolated between passes."""
    for (t0, l0, *_), (t1, l1, *_) in itertools.pairwise(curve):
        if l1 <= target:
            return t1 if l0 == l1 else t0 + (l0 - target) / (l0 - l1) * (t1 - t0)
    return None


def data_key(run_dir: Path) -> str | None:
    """What the blocks are: a hash of the token shards' contents (each file's sha256 and the tokenizer's, from the
    index.json of every source's shard folder in runs/<run>/data.json). site_packages holds whatever the environment
    installed, so two machines can score different blocks under one recipe; such runs do not pair. Runs of two
    machines that tokenized the same documents alike do, whatever their cache keys."""
    path = run_dir / "data.json"
    if not path.is_file():
        return None
    contents = []
    for source in json.loads(path.read_text())["sources"]:
        index = Path(source["shards"]) / "index.json"
        if not index.is_file():
            raise SystemExit(f"error: {run_dir}: the shards it trained on are not on this machine ({index})")
        shards = json.loads(index.read_text())
        files = {split: [f["sha256"] for f in part["files"]] for split, part in shards["splits"].items()}
        contents.append({"tokenizer": shards["tokenizer_sha256"], "files": files})
    return hashlib.sha256(json.dumps(contents, sort_keys=True).encode()).hexdigest()[:16]


def paired_curve(run_dir: Path, reference_dir: Path) -> list[dict]:
    """`run_dir` minus `reference_dir` at every validation pass both have written (runs/<run>/eval/val_step<N>.npy),
    block by block: how a comparison moves over training, readable while a run is still going."""
    from moe.scaling.plots import read_metrics

    if data_key(run_dir) != data_key(reference_dir):
        raise SystemExit(f"error: {run_dir} and {reference_dir} scored other validation blocks (their data.json)")
    rows = []
    for record in read_metrics(run_dir)[1]:
        mine, theirs = (d / "eval" / f"val_step{record['step']}.npy" for d in (run_dir, reference_dir))
        if mine.is_file() and theirs.is_file():
            a, b = np.load(mine).astype(float), np.load(theirs).astype(float)  # [blocks] each
            diff, se = mean_and_se(a - b)
            rows.append(
                {
                    "step": record["step"],
                    "tokens": record["tokens"],
                    "loss": float(a.mean()),
                    "reference_loss": float(b.mean()),
                    "paired_diff": diff,
                    "paired_se": se,
                }
            )
    return rows


def mean_and_se(diff: np.ndarray) -> tuple[float, float]:
    """A paired difference over blocks ([blocks]): its mean and standard error, std(diff) / sqrt(n)."""
    return float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff)))


def paired(a: dict, b: dict) -> tuple[float, float] | None:
    """Mean and standard error of a's final block losses minus b's (the same blocks), or None: either has no block
    losses, or they scored other data (summaries written before `data` existed share theirs)."""
    if a["final_block_losses"] is None or b["final_block_losses"] is None or a.get("data") != b.get("data"):
        return None
    mine, theirs = (np.asarray(r["final_block_losses"], dtype=float) for r in (a, b))  # [blocks] each
    return mean_and_se(mine - theirs)


def load_summaries(folder: Path = SUMMARIES) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def in_grid(summary: dict, prefix: str) -> bool:
    others = [p for p in (STUDY, LR_SWEEP, SIZES, ABLATIONS) if p != prefix and p.startswith(prefix)]
    name = summary["name"]
    return name.startswith(prefix + "-") and not any(name.startswith(o + "-") for o in others)


def label_matched(runs: list[dict]) -> None:
    """Dense runs: matched = active where the training FLOPs per token equal the top-1 MoE runs', else total."""
    top1 = [r["train_flops_per_token"] for r in runs if r["kind"] == "moe" and r["top_k"] == 1]
    active_flops = statistics.median(top1) if top1 else min(r["train_flops_per_token"] for r in runs)
    for r in runs:
        close = abs(r["train_flops_per_token"] / active_flops - 1) < 0.01
        r["matched"] = ("active" if close else "total") if r["kind"] == "dense" else None


def reference(runs: list[dict], seed: int | None = None) -> dict | None:
    """The active-matched dense run (at `seed`, else the most common seed)."""
    dense = [r for r in runs if r["kind"] == "dense" and r["matched"] == "active"]
    if not dense:
        return None
    seed = seed if seed is not None else statistics.mode(r["seed"] for r in runs)
    return next((r for r in dense if r["seed"] == seed), dense[0])


def on_reference_data(runs: list[dict]) -> tuple[list[dict], list[str]]:
    """The runs scored on the reference dense run's data, and the names of the others. A grid that ran partly in
    another environment (whose site_packages, and so whose validation blocks, differ) reports the part that pairs
    with its reference and names the rest, rather than comparing losses of other blocks."""
    label_matched(runs)
    ref = reference(runs)
    if ref is None:
        return runs, []
    same = [r for r in runs if r.get("data") == ref.get("data")]
    return same, sorted(r["name"] for r in runs if r.get("data") != ref.get("data"))


def study_rows(runs: list[dict]) -> tuple[list[dict], dict]:
    """One row per run against the reference, and the seed-to-seed noise where a seed repeat exists."""
    label_matched(runs)
    ref = reference(runs)
    rows, target = [], ref["val"][-1][1] if ref else None
    for r in sorted(runs, key=_order):
        reached = tokens_to_reach(r["val"], target) if ref else None
        diff = paired(r, ref) if ref else None
        rows.append(
            {
                **{k: r[k] for k in ("name", "kind", "matched", "num_experts", "top_k", "expert_d_ff", "lr", "seed")},
                **{k: r[k] for k in ("active_params", "total_params", "train_flops_per_token")},
                **dict(zip(ROUTING_DEFAULTS, routing(r))),
                "tokens": r["val"][-1][0],
                "final_val_loss": r["val"][-1][1],
                "final_val_loss_se": r["val"][-1][2],
                "tokens_to_dense_final": reached,
                "tokens_fraction_of_dense": reached / ref["val"][-1][0] if reached and ref else None,
                "paired_diff_vs_dense": diff[0] if diff else None,
                "paired_diff_se": diff[1] if diff else None,
                "train_val_gap": r["val"][-1][1] - r["train_sample"][-1][1] if r["train_sample"] else None,
                "tokens_per_s": r["tokens_per_s"],
                "wall_s": r["wall_s"],
            }
        )
    return rows, seed_noise(runs)


def seed_noise(runs: list[dict]) -> dict:
    """Final-loss differences between runs that differ only in their seed: |A - B| and the paired standard error."""
    out = {}
    for _, group in itertools.groupby(sorted(runs, key=lambda r: (str(config_key(r)), r["seed"])), key=config_key):
        group = list(group)
        a = group[0]
        for b in group[1:]:
            diff = paired(b, a)
            same_order = seeds(b)[1] == seeds(a)[1]
            varies = "initialization" if same_order else "data order"
            out[b["name"]] = {
                "of": a["name"],
                "varies": varies if same_order or b["seed"] == a["seed"] else "initialization and data order",
                "abs_diff": abs(b["val"][-1][1] - a["val"][-1][1]),
                "paired_se": diff[1] if diff else None,
            }
    return out


def seeds(r: dict) -> tuple[int, int]:
    """The initialization's seed and the data order's (train.data_seed, the seed where unset)."""
    return r["seed"], r.get("data_seed", r["seed"])


def config_key(r: dict, leave_out: tuple[str, ...] = ()) -> tuple:
    """Everything but the seeds (and `leave_out`): the architecture, the routing settings, the rate, the length."""
    return tuple(r.get(k) for k in CONFIG_KEYS if k not in leave_out) + routing(r)


def routing(r: dict) -> tuple:
    """The routing settings (ROUTING_DEFAULTS' keys), the default where a summary predates one."""
    return tuple(r.get(k, default) for k, default in ROUTING_DEFAULTS.items())


def changes(r: dict, base: dict) -> str:
    """What `r` changes against the MoE baseline `base`, as `key value` pairs ('baseline' for none)."""
    keys = ("num_experts", "top_k", "expert_d_ff", "moe_interval", *ROUTING_DEFAULTS) if r["kind"] == "moe" else ()
    diff = [f"dense, d_ff {r['d_ff']}"] if r["kind"] == "dense" else []
    diff += [
        f"{k} {r.get(k)}" for k in keys if r.get(k, ROUTING_DEFAULTS.get(k)) != base.get(k, ROUTING_DEFAULTS.get(k))
    ]
    diff += [f"{k} {mine}" for k, mine, theirs in zip(("seed", "data_seed"), seeds(r), seeds(base)) if mine != theirs]
    return ", ".join(diff) or "baseline"


def verdict(rows: list[dict], noise: dict) -> dict:
    """The study's two claims, measured: the best MoE run's share of the dense run's tokens to its final loss and
    its paired gain against twice the seed-to-seed noise; whether top-1's final loss falls with every doubling of
    the experts."""
    moe = [r for r in rows if r["kind"] == "moe"]
    reached = [r for r in moe if r["tokens_fraction_of_dense"] is not None]
    best = min(reached, key=lambda r: r["tokens_fraction_of_dense"]) if reached else None
    seed = max((n["abs_diff"] for n in noise.values()), default=None)
    seed_of_reference = statistics.mode(r["seed"] for r in rows)
    top1 = [r for r in moe if r["top_k"] == 1 and r["seed"] == seed_of_reference]
    usual = statistics.mode(routing(r) for r in top1) if top1 else None  # the grid's routing, not a changed one
    top1 = sorted((r for r in top1 if routing(r) == usual), key=lambda r: r["num_experts"])
    losses = [r["final_val_loss"] for r in top1]
    return {
        "best_moe": best["name"] if best else None,
        "best_tokens_fraction": best["tokens_fraction_of_dense"] if best else None,
        "best_gain": -best["paired_diff_vs_dense"] if best and best["paired_diff_vs_dense"] is not None else None,
        "seed_noise": seed,
        "gain_over_twice_noise": (
            best is not None
            and seed is not None
            and best["paired_diff_vs_dense"] is not None
            and -best["paired_diff_vs_dense"] > 2 * seed
        ),
        "top1_experts": [r["num_experts"] for r in top1],
        "top1_final_losses": losses,
        "top1_falls_with_experts": len(losses) > 1 and all(b < a for a, b in itertools.pairwise(losses)),
    }


def _order(r: dict) -> tuple:
    return (r["kind"] == "moe", r.get("matched") or "", r["top_k"] or 0, r["num_experts"] or 0, r["seed"], r["lr"])


def fit_members(pools: list[list[dict]], sizes: list[dict]) -> list[dict]:
    """The runs of the other grids that join the sizes grid's fit at a d_model it lacks (d_model 128): active-matched
    dense and full-width MoE-8 top-1 that agree with a sizes run of their kind in all but the model's size (rate,
    length, routing, seeds and data). The first pool that has one gives it."""
    wanted, sized, members = {size_free_key(r) for r in sizes}, {r["d_model"] for r in sizes}, {}
    for pool in filter(None, pools):
        label_matched(pool)
        for r in pool:
            family = r["matched"] == "active" if r["kind"] == "dense" else r.get("expert_d_ff") in (None, r["d_ff"])
            if family and r["d_model"] not in sized and size_free_key(r) in wanted:
                members.setdefault((r["kind"], r["d_model"]), r)
    return list(members.values())


def size_free_key(r: dict) -> tuple:
    """config_key without the model's size, with the seeds and the data: what the sizes grid's runs share."""
    size = ("d_model", "d_ff", "expert_d_ff", "train_flops_per_token")
    return config_key(r, leave_out=size) + seeds(r) + (r.get("data"),)


def scaling_fit(runs: list[dict]) -> dict:
    """Loss against training compute per family (dense; MoE E x top-k) over the sizes grid, and MoE's compute
    multiplier at equal loss: C_dense(L) / C_moe(L) at the MoE points' median loss."""
    from moe.scaling.fit import fit_power_law

    families: dict[str, list[dict]] = {}
    dense_of_size = {r["d_model"]: r for r in runs if r["kind"] == "dense"}
    for r in runs:
        family = "dense" if r["kind"] == "dense" else f"MoE {r['num_experts']}x top-{r['top_k']}"
        same_size = dense_of_size.get(r["d_model"], r)
        diff = paired(r, same_size) if same_size is not r else None
        families.setdefault(family, []).append(
            {
                "run": r["name"],
                **{k: r.get(k) for k in ("d_model", "active_params", "total_params")},
                "tokens": r["val"][-1][0],
                "compute": r["train_flops_per_token"] * r["val"][-1][0],
                "loss": r["val"][-1][1],
                "paired_diff_vs_dense_of_size": diff[0] if diff else None,  # the same blocks, the same d_model
                "paired_diff_se": diff[1] if diff else None,
            }
        )
    out = {"families": {}}
    for family, points in sorted(families.items()):
        entry = {"points": sorted(points, key=lambda p: p["compute"])}
        if len(points) >= 3:
            law = fit_power_law([p["compute"] for p in points], [p["loss"] for p in points])
            residual = max(abs(p["loss"] - law(p["compute"])) for p in points)
            entry["fit"] = {"a": law.a, "b": law.b, "max_abs_residual": float(residual)}
        out["families"][family] = entry
    dense = out["families"].get("dense", {})
    for family, entry in out["families"].items():
        if family != "dense" and "fit" in dense and "fit" in entry:
            loss = statistics.median(p["loss"] for p in entry["points"])
            ratio = compute_at(dense["fit"], loss) / compute_at(entry["fit"], loss)
            dense_losses = [p["loss"] for p in dense["points"]]
            entry["compute_multiplier"] = {
                "at_loss": loss,
                "dense_over_moe": ratio,
                "within_dense_points": min(dense_losses) <= loss <= max(dense_losses),  # else extrapolated
            }
    return out


def compute_at(fit: dict, loss: float) -> float:
    """The compute C at which a C^-b = loss."""
    return (fit["a"] / loss) ** (1 / fit["b"])


def lr_rows(runs: list[dict]) -> list[dict]:
    rows = [
        {
            "name": r["name"],
            "kind": r["kind"],
            "lr": r["lr"],
            "tokens": r["val"][-1][0],
            "final_val_loss": r["val"][-1][1],
        }
        for r in sorted(runs, key=lambda r: (r["kind"], r["lr"]))
    ]
    for kind in {r["kind"] for r in rows}:
        best = min((r for r in rows if r["kind"] == kind), key=lambda r: r["final_val_loss"])
        best["best_of_family"] = True
    return rows


def ablation_rows(ablations: list[dict], lr_runs: list[dict]) -> dict:
    """The ablations run at the LR sweep's length, each against two baselines: MoE-8 top-1 (what the change does to
    MoE) and active-matched dense, both at the recipe's seed and data order. Each is the grid's own run where it has
    one (so the whole table ran in one environment: site_packages, and so the blocks, differ between them), else
    the LR sweep's best run of the family. Per run: tokens to dense's final loss and a paired difference against
    each baseline. Also the seed noise at that length, and top-1's final loss against the expert count."""
    best = {
        kind: min((r for r in lr_runs if r["kind"] == kind), key=lambda r: r["val"][-1][1], default=None)
        for kind in ("dense", "moe")
    }
    if not ablations or best["moe"] is None:
        return {"rows": []}
    rerun = (r for r in ablations if config_key(r) == config_key(best["moe"]) and seeds(r) == seeds(best["moe"]))
    moe = next(rerun, best["moe"])
    dense = (r for r in ablations if r["kind"] == "dense" and r["d_ff"] == moe["d_ff"] and seeds(r) == seeds(moe))
    dense = next(dense, best["dense"])
    if dense is None:
        return {"rows": []}
    by_name = {r["name"]: r for r in [dense, moe, *ablations]}
    rows, noise = study_rows(list(by_name.values()))
    for row in rows:
        run = by_name[row["name"]]
        row["change"] = changes(run, moe)
        diff = paired(run, moe)
        row["paired_diff_vs_moe"], row["paired_diff_vs_moe_se"] = diff if diff else (None, None)
        row["router"] = run.get("router")
    top1 = sorted(
        (r for r in rows if r["kind"] == "moe" and r["change"] in ("baseline", f"num_experts {r['num_experts']}")),
        key=lambda r: r["num_experts"],
    )
    losses = [r["final_val_loss"] for r in top1]
    return {
        "baselines": {"dense": dense["name"], "moe": moe["name"]},
        "rows": rows,
        "seed_noise": noise,
        "top1_experts": [r["num_experts"] for r in top1],
        "top1_final_losses": losses,
        "top1_falls_with_experts": len(losses) > 1 and all(b < a for a, b in itertools.pairwise(losses)),
    }


def report(summaries: list[dict], json_path: Path, docs: Path) -> dict:
    from benchmarks.moe_vs_dense_plots import write_figures, write_markdown

    study, other_data = on_reference_data([s for s in summaries if in_grid(s, STUDY)])
    result = {"study": [], "study_other_data": other_data, "seed_noise": {}}
    result["lr_sweep"] = lr_rows([s for s in summaries if in_grid(s, LR_SWEEP)])
    if study:
        result["study"], result["seed_noise"] = study_rows(study)
        result["verdict"] = verdict(result["study"], result["seed_noise"])
    lr_runs = [s for s in summaries if in_grid(s, LR_SWEEP)]
    result["ablations"] = ablation_rows([s for s in summaries if in_grid(s, ABLATIONS)], lr_runs)
    sizes = [s for s in summaries if in_grid(s, SIZES)]
    pools = [[s for s in summaries if in_grid(s, grid)] for grid in (ABLATIONS, LR_SWEEP)] + [study]
    sizes += fit_members(pools, sizes) if sizes else []  # the d_model 128 pair of the same length and data
    result["scaling_fit"] = scaling_fit(sizes) if sizes else None
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    docs.mkdir(parents=True, exist_ok=True)
    figures = write_figures(study, sizes, result, docs)
    write_markdown(result, figures, docs / "moe_vs_dense_results.md")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", type=Path, help="run folders to summarize first (runs/cpu-study-*)")
    p.add_argument("--summaries", type=Path, default=SUMMARIES)
    p.add_argument("--json", type=Path, default=REPO / "benchmarks/results/moe_vs_dense_study.json")
    p.add_argument("--docs", type=Path, default=REPO / "docs", help="where the tables and figures go")
    p.add_argument(
        "--paired", nargs=2, type=Path, metavar=("RUN", "REFERENCE"), help="RUN minus REFERENCE at every shared pass"
    )
    args = p.parse_args(argv)
    if args.paired:
        print("| step | tokens | loss | reference loss | paired diff ± s.e. |\n|---|---|---|---|---|")
        for r in paired_curve(*args.paired):
            print(
                f"| {r['step']} | {r['tokens']:,} | {r['loss']:.4f} | {r['reference_loss']:.4f} "
                f"| {r['paired_diff']:+.4f} ± {r['paired_se']:.4f} |"
            )
        return 0
    args.summaries.mkdir(parents=True, exist_ok=True)
    for run_dir in args.runs:
        if run_dir.name.startswith(STUDY) and (run_dir / "metrics.jsonl").is_file():
            summary = summarize(run_dir)
            (args.summaries / f"{summary['name']}.json").write_text(json.dumps(summary) + "\n")
            print(f"summarized {run_dir} ({summary['val'][-1][0]:,} tokens)")
    summaries = load_summaries(args.summaries)
    if not summaries:
        print(f"error: no run summaries in {args.summaries}; give run folders first", file=sys.stderr)
        return 2
    result = report(summaries, args.json, args.docs)
    print((args.docs / "moe_vs_dense_results.md").read_text())
    print(f"wrote {args.json}: {len(result['study'])} study runs, {len(result['lr_sweep'])} LR-sweep runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
