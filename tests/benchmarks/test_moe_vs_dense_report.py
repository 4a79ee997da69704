"""The MoE-against-dense study (recipes/scaling/cpu_study*.yaml, benchmarks/moe_vs_dense.py): the study grid's
real runs at 2 steps each through the sweep and the launcher (one layer, on a stdlib slice: about a minute on 2
cores), then the report over them; the LR grid resolved run by run; and the report's arithmetic on curves whose
answers are known."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.moe_vs_dense import (
    ablation_rows,
    data_key,
    lr_rows,
    paired,
    paired_curve,
    report,
    scaling_fit,
    study_rows,
    tokens_to_reach,
    verdict,
)
from moe.scaling.sweep import expand, load_sweep
from tests.helpers import REPO, explain, run

STUDY, LR_GRID = "recipes/scaling/cpu_study.yaml", "recipes/scaling/cpu_study_lr.yaml"
ABLATION_GRID = "recipes/scaling/cpu_study_ablations.yaml"
SIZES_GRID = "recipes/scaling/cpu_study_sizes.yaml"
ABLATIONS_RUN = ("dense", "routed_scaling_factor8", "seed1235-data_seed1234")
# 2 steps of the real widths, one layer deep, on a stdlib slice (site_packages takes minutes to prepare on 2 cores)
TWO_STEPS = (
    "model.n_layers=1",
    "train.max_tokens=4096",
    "train.eval_interval=1",
    "train.eval_blocks=32",
    "train.train_eval_blocks=16",
    "train.save_interval=0",
    "data.source=stdlib",
    "data.packages=null",
    "data.max_documents=600",
    "data.vocab_size=1024",
    "data.val_fraction=0.1",
)


def test_the_study_as_specified():
    runs = {r.name: r for r in expand(load_sweep(REPO / STUDY))}
    assert {"cpu-study-dense", "cpu-study-dense-d_ff3072", "cpu-study-dense-seed1235"} <= set(runs)
    assert {f"cpu-study-moe-e{e}" for e in (4, 8, 16, 32)} <= set(runs)
    assert all(r.gpus == 1 for r in runs.values())  # one single-rank run per core under --parallel auto


def test_the_lr_grid_resolves_every_run(tmp_path):
    proc = run([sys.executable, "launch/sweep.py", LR_GRID, "--dry-run", f"logging.runs_dir={tmp_path}"], timeout=120)
    assert proc.returncode == 0, explain(proc)
    assert proc.stdout.count("launch/pretrain_moe.sh --num_gpus 1 ") == 7  # dense at three rates, MoE-8 at four


def test_the_ablation_grid_resolves_every_run_at_the_lr_sweeps_length(tmp_path):
    runs = {r.name: r for r in expand(load_sweep(REPO / ABLATION_GRID))}
    assert len(runs) == 20 and all(r.gpus == 1 for r in runs.values())
    lr_run = expand(load_sweep(REPO / LR_GRID))[0]
    assert all("train.max_tokens=4000000" in r.overrides for r in runs.values())
    assert "train.max_tokens=4000000" in lr_run.overrides  # the same length as its baselines
    repeat = runs["cpu-study-ablation-seed1235-data_seed1234"].overrides
    assert "train.seed=1235" in repeat and "train.data_seed=1234" in repeat
    cmd = [sys.executable, "launch/sweep.py", ABLATION_GRID, "--dry-run", f"logging.runs_dir={tmp_path}"]
    proc = run(cmd, timeout=120)  # every run resolves (routed_scaling_factor, data_seed) before any starts
    assert proc.returncode == 0, explain(proc)
    assert proc.stdout.count("launch/pretrain_moe.sh --num_gpus 1 ") == 20


def test_the_sizes_grid_differs_from_the_ablations_baselines_in_the_models_size_alone():
    sizes = {r.name: r for r in expand(load_sweep(REPO / SIZES_GRID))}
    ablations = {r.name: r for r in expand(load_sweep(REPO / ABLATION_GRID))}
    assert len(sizes) == 6 and all(r.gpus == 1 and r.recipe == "recipes/study.yaml" for r in sizes.values())

    def settings(run):  # what a run sets beyond the recipe, less its size, its name and the defaults it restates
        own = ("model.d_model=", "model.n_heads=", "logging.run_name=", "logging.wandb_group=")
        return {o for o in run.overrides if not o.startswith(own)} - {"moe.enabled=true", "moe.num_experts=8"}

    for d_model in (64, 96, 192):  # the fit's d_model 128 point is the ablation grid's pair
        assert settings(sizes[f"cpu-study-size-d{d_model}-dense"]) == settings(ablations["cpu-study-ablation-dense"])
        assert settings(sizes[f"cpu-study-size-d{d_model}-moe"]) == settings(ablations["cpu-study-ablation-e8"])


@pytest.fixture(scope="module")
def study_runs(tmp_path_factory):
    """Every run of the study grid, the LR sweep's MoE baseline and three ablations (the dense baseline and the new
    keys: routed_scaling_factor, data_seed), 2 steps each, two at a time; the folder of their folders."""
    runs_dir = tmp_path_factory.mktemp("study")
    grids = {
        STUDY: [],
        LR_GRID: ["--only", "cpu-study-lr-moe-lr0.001"],
        ABLATION_GRID: [f"--only=cpu-study-ablation-{n}" for n in ABLATIONS_RUN],
    }
    for grid, only in grids.items():
        cmd = [sys.executable, "launch/sweep.py", grid, "--parallel", "auto", *only, *TWO_STEPS]
        proc = run([*cmd, f"logging.runs_dir={runs_dir}"], timeout=900)
        assert proc.returncode == 0, explain(proc)
    return runs_dir


def test_the_grids_train_and_the_report_reads_them(study_runs, tmp_path):
    summaries, out, docs = tmp_path / "summaries", tmp_path / "study.json", tmp_path / "docs"
    folders = sorted(str(p) for p in study_runs.glob("cpu-study-*") if p.is_dir())
    proc = run(
        [sys.executable, "benchmarks/moe_vs_dense.py", *folders, "--summaries", str(summaries), "--json", str(out)]
        + ["--docs", str(docs)],
        timeout=300,
    )
    assert proc.returncode == 0, explain(proc)
    result = json.loads(out.read_text())
    keys = {json.loads(p.read_text())["data"] for p in summaries.glob("*.json")}
    assert len(keys) == 1 and len(keys.pop()) == 16  # every run scored one data set (its shards' contents)
    rows = {r["name"]: r for r in result["study"]}
    assert len(rows) == 12 and not result["study_other_data"]
    assert [r["name"] for r in result["lr_sweep"]] == ["cpu-study-lr-moe-lr0.001"]
    ablations = {r["name"]: r for r in result["ablations"]["rows"]}
    assert result["ablations"]["baselines"] == {"dense": "cpu-study-ablation-dense", "moe": "cpu-study-lr-moe-lr0.001"}
    assert ablations["cpu-study-ablation-routed_scaling_factor8"]["change"] == "routed_scaling_factor 8.0"
    assert ablations["cpu-study-ablation-routed_scaling_factor8"]["paired_diff_vs_moe_se"] > 0
    router = ablations["cpu-study-ablation-routed_scaling_factor8"]["router"]  # from the step metrics
    assert 0 < router["entropy_norm"] <= 1 and 0 < router["top_prob"] <= 1
    assert ablations["cpu-study-ablation-dense"]["router"] is None
    (noise,) = result["ablations"]["seed_noise"].values()  # the repeat with the baseline's data order
    assert noise["of"] == "cpu-study-lr-moe-lr0.001" and noise["varies"] == "initialization"
    fields = {"kind", "matched", "num_experts", "top_k", "active_params", "total_params", "tokens", "final_val_loss"}
    assert all(fields | {"tokens_to_dense_final"} <= set(r) for r in rows.values())
    assert all(r["tokens"] == 4096 for r in rows.values())  # equal tokens: 2 steps of 16 x 128
    dense, e8 = rows["cpu-study-dense"], rows["cpu-study-moe-e8"]
    assert dense["matched"] == "active" and rows["cpu-study-dense-d_ff3072"]["matched"] == "total"
    assert (
        e8["active_params"] == pytest.approx(dense["active_params"], rel=0.01)
        and e8["active_params"] < e8["total_params"]
    )
    assert rows["cpu-study-dense-d_ff3072"]["total_params"] == pytest.approx(e8["total_params"], rel=0.01)
    assert dense["paired_diff_vs_dense"] == 0 and e8["paired_diff_se"] > 0  # block losses from the runs' last pass
    repeat = result["seed_noise"]["cpu-study-moe-e32-k4-expert_d_ff96-seed1235"]  # the best MoE's seed repeat
    assert repeat["of"] == "cpu-study-moe-e32-k4-expert_d_ff96" and repeat["varies"] == "initialization and data order"
    assert "cpu-study-dense-seed1235" in result["seed_noise"] and result["verdict"]["top1_experts"] == [4, 8, 16, 32]
    assert {p.name for p in docs.glob("*.png")} == {f"moe_vs_dense_{f}.png" for f in ("curves", "experts", "load")}
    assert "| cpu-study-moe-e32 |" in (docs / "moe_vs_dense_results.md").read_text()


def test_paired_curve_reads_every_shared_pass_of_two_runs(study_runs, tmp_path):
    moe, dense = study_runs / "cpu-study-moe-e8", study_runs / "cpu-study-dense"
    rows = paired_curve(moe, dense)
    steps = sorted(int(p.stem.removeprefix("val_step")) for p in (dense / "eval").glob("val_step*.npy"))
    assert [r["step"] for r in rows] == steps and len(steps) >= 2  # a pass at step 0 and every step after
    last = np.load(moe / "eval" / f"val_step{steps[-1]}.npy") - np.load(dense / "eval" / f"val_step{steps[-1]}.npy")
    assert rows[-1]["paired_diff"] == pytest.approx(float(last.mean())) and rows[-1]["paired_se"] > 0
    proc = run([sys.executable, "benchmarks/moe_vs_dense.py", "--paired", str(moe), str(dense)], timeout=120)
    assert proc.returncode == 0 and f"| {steps[-1]} | " in proc.stdout, explain(proc)
    other = tmp_path / "other"  # the dense run as if scored in another environment: its shards hold other blocks
    shards = tmp_path / "shards"
    shards.mkdir()
    source = json.loads((dense / "data.json").read_text())["sources"][0]
    index = json.loads((Path(source["shards"]) / "index.json").read_text())
    index["splits"]["val"]["files"][0]["sha256"] = "0" * 64
    (shards / "index.json").write_text(json.dumps(index))
    other.mkdir()
    (other / "data.json").write_text(json.dumps({"sources": [source | {"shards": str(shards)}]}))
    with pytest.raises(SystemExit, match="other validation blocks"):
        paired_curve(moe, other)


def test_tokens_to_reach_interpolates_between_passes():
    curve = [[0, 9.0, 0.1], [100, 5.0, 0.1], [200, 4.0, 0.1], [300, 3.0, 0.1]]
    assert tokens_to_reach(curve, 4.0) == 200
    assert tokens_to_reach(curve, 3.5) == pytest.approx(250)
    assert tokens_to_reach(curve, 2.0) is None


def summary(name, kind, flops, final, blocks=None, seed=1234, experts=None, d_model=128):
    return {
        "name": name,
        "d_model": d_model,
        "kind": kind,
        "num_experts": experts,
        "top_k": 1 if kind == "moe" else None,
        "expert_d_ff": 8 if kind == "moe" else None,
        "lr": 1e-3,
        "seed": seed,
        "active_params": 10,
        "total_params": 10,
        "train_flops_per_token": flops,
        "val": [[0, 9.0, 0.1], [1000, final + 1, 0.01], [2000, final, 0.01]],
        "train_sample": [[2000, final - 0.1]],
        "final_block_losses": blocks,
        "tokens_per_s": 1.0,
        "wall_s": 1.0,
        "d_ff": 8,
        "expert_load": {},
    }


def test_runs_on_other_data_do_not_pair():
    blocks = np.linspace(3, 5, 64).tolist()
    a, b = summary("a", "dense", 100.0, 4.0, blocks), summary("b", "moe", 100.5, 4.0, blocks, experts=8)
    assert paired(a, b) == (0, 0)
    assert paired(a | {"data": "0123456789abcdef"}, b | {"data": "fedcba9876543210"}) is None  # another corpus
    assert paired(a | {"data": "0123456789abcdef"}, b) is None  # a summary from before the key, on unknown data


def test_the_data_key_is_the_shards_contents_not_their_cache_folder(tmp_path):
    """Two machines' caches may name the same shards differently, or one name different shards (site_packages under
    one recipe): runs pair by what their shards hold."""

    def run_on(shards: str, val_sha: str) -> Path:
        folder = tmp_path / "shards" / shards
        folder.mkdir(parents=True, exist_ok=True)
        splits = {"train": {"files": [{"sha256": "t0"}]}, "val": {"files": [{"sha256": val_sha}]}}
        (folder / "index.json").write_text(json.dumps({"tokenizer_sha256": "k", "splits": splits}))
        run_dir = tmp_path / f"run-{shards}-{val_sha}"
        run_dir.mkdir()
        (run_dir / "data.json").write_text(json.dumps({"sources": [{"shards": str(folder)}]}))
        return run_dir

    same = data_key(run_on("aaaa", "v0"))
    assert data_key(run_on("bbbb", "v0")) == same and len(same) == 16
    assert data_key(run_on("cccc", "v1")) != same
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "data.json").write_text(json.dumps({"sources": [{"shards": str(tmp_path / "no-such-folder")}]}))
    with pytest.raises(SystemExit, match="the shards it trained on are not on this machine"):
        data_key(moved)


def test_the_ablations_own_moe_baseline_replaces_the_lr_sweeps():
    """A grid that reruns MoE-8 on its own machine compares every row with that run, and the LR sweep's run of the
    same configuration is neither a row nor a seed repeat (it differs in the machine, not the seed)."""
    blocks = np.linspace(3, 5, 64)
    lr_runs = [
        summary("cpu-study-lr-dense-lr0.001", "dense", 100.0, 4.2),
        summary("cpu-study-lr-moe-lr0.001", "moe", 100.5, 4.3, (blocks + 0.3).tolist(), experts=8),
    ]
    ablations = [
        summary("cpu-study-ablation-dense", "dense", 100.0, 4.2, (blocks + 0.2).tolist()),
        summary("cpu-study-ablation-e8", "moe", 100.5, 4.31, (blocks + 0.31).tolist(), experts=8),
        summary("cpu-study-ablation-e16", "moe", 100.6, 4.25, (blocks + 0.25).tolist(), experts=16),
        summary("cpu-study-ablation-seed1235-data_seed1234", "moe", 100.5, 4.32, (blocks + 0.32).tolist(), experts=8)
        | {"seed": 1235, "data_seed": 1234},
    ]
    result = ablation_rows(ablations, lr_runs)
    assert result["baselines"] == {"dense": "cpu-study-ablation-dense", "moe": "cpu-study-ablation-e8"}
    rows = {r["name"]: r for r in result["rows"]}
    assert "cpu-study-lr-moe-lr0.001" not in rows and rows["cpu-study-ablation-e8"]["change"] == "baseline"
    assert rows["cpu-study-ablation-e16"]["paired_diff_vs_moe"] == pytest.approx(-0.06)
    assert result["top1_experts"] == [8, 16] and result["top1_final_losses"] == [4.31, 4.25]
    assert result["seed_noise"] == {
        "cpu-study-ablation-seed1235-data_seed1234": {
            "of": "cpu-study-ablation-e8",
            "varies": "initialization",
            "abs_diff": pytest.approx(0.01),
            "paired_se": pytest.approx(0, abs=1e-9),
        }
    }


def test_rows_against_the_active_matched_dense_run():
    rng = np.random.default_rng(0)
    base = rng.uniform(3, 5, size=400)
    runs = [
        summary("d", "dense", 100.0, 4.0, base.tolist()),
        summary("d-seed", "dense", 100.0, 4.01, (base + 0.01 + rng.normal(0, 0.01, 400)).tolist(), seed=1235),
        summary("wide", "dense", 400.0, 3.6),
        summary("m", "moe", 100.5, 3.5, (base - 0.5).tolist(), experts=8),  # reaches 4.0 halfway to its end
    ]
    rows, noise = study_rows(runs)
    by = {r["name"]: r for r in rows}
    assert by["d"]["matched"] == "active" and by["wide"]["matched"] == "total"
    assert by["m"]["tokens_to_dense_final"] == pytest.approx(1500) and by["m"]["tokens_fraction_of_dense"] == 0.75
    assert by["m"]["paired_diff_vs_dense"] == pytest.approx(-0.5) and by["m"]["paired_diff_se"] < 1e-9
    assert by["d"]["train_val_gap"] == pytest.approx(0.1)
    assert noise["d-seed"]["of"] == "d" and noise["d-seed"]["abs_diff"] == pytest.approx(0.01)
    assert noise["d-seed"]["varies"] == "initialization and data order"  # one train.seed sets both
    assert noise["d-seed"]["paired_se"] == pytest.approx(0.01 / 20, rel=0.2)  # std 0.01 over 400 blocks
    assert paired(runs[2], runs[0]) is None  # no block losses: no paired difference
    v = verdict(rows, noise)
    assert v["best_moe"] == "m" and v["best_tokens_fraction"] == 0.75 and v["best_gain"] == pytest.approx(0.5)
    assert v["gain_over_twice_noise"] and v["seed_noise"] == pytest.approx(0.01)


def test_lr_sweep_marks_the_best_rate_of_each_family():
    runs = [
        summary(f"{k}{lr}", k, 1.0, loss) | {"lr": lr}
        for k, lr, loss in [("dense", 1e-3, 4.1), ("dense", 2e-3, 4.0), ("moe", 1e-3, 3.9), ("moe", 2e-3, 3.95)]
    ]
    best = {(r["kind"], r["lr"]) for r in lr_rows(runs) if r.get("best_of_family")}
    assert best == {("dense", 2e-3), ("moe", 1e-3)}


def test_scaling_fit_recovers_a_known_power_law_and_the_multiplier():
    def family(kind, a, b, flops, experts=None):
        runs = []
        for i, f in enumerate(flops):
            s = summary(f"{kind}{i}", kind, f, a * (f * 2000) ** -b, experts=experts)
            runs.append(s)
        return runs

    fit = scaling_fit(family("dense", 50.0, 0.1, [1e6, 4e6, 1.6e7]) + family("moe", 40.0, 0.1, [1e6, 4e6, 1.6e7], 8))
    dense, moe = fit["families"]["dense"], fit["families"]["MoE 8x top-1"]
    assert dense["fit"]["b"] == pytest.approx(0.1) and dense["fit"]["a"] == pytest.approx(50.0)
    assert dense["fit"]["max_abs_residual"] == pytest.approx(0, abs=1e-6)  # the points lie on the law
    assert moe["compute_multiplier"]["dense_over_moe"] == pytest.approx((50 / 40) ** 10)  # (a_d / a_m)^(1/b)
    assert not moe["compute_multiplier"]["within_dense_points"]  # MoE's median loss 0.8x dense's: below its lowest
    assert [p["run"] for p in dense["points"]] == ["dense0", "dense1", "dense2"]  # by compute
    assert dense["points"][0]["d_model"] == 128 and dense["points"][0]["tokens"] == 2000


def test_the_report_sorts_summaries_into_their_grids(tmp_path):
    LONGER = {"max_steps": 10_000}  # the study's length, not the other grids'
    blocks = np.linspace(3, 5, 64)
    summaries = [
        summary("cpu-study-dense", "dense", 100.0, 4.0, blocks.tolist()) | LONGER,
        summary("cpu-study-moe-e8", "moe", 100.5, 3.8, (blocks - 0.2).tolist(), experts=8) | LONGER,
        summary("cpu-study-moe-aux0.1", "moe", 100.5, 3.9, (blocks - 0.1).tolist(), experts=8)
        | LONGER
        | {"aux_loss_coef": 0.1},  # a changed routing: not a point of top-1 against the expert count
        summary("cpu-study-moe-e16", "moe", 100.6, 3.7, (blocks - 0.3).tolist(), experts=16)
        | LONGER
        | {"data": "fedcba9876543210"},  # another environment's run: other blocks, no row against this dense
        summary("cpu-study-lr-dense-lr0.001", "dense", 100.0, 4.2),  # predates per-block losses
        summary("cpu-study-lr-moe-lr0.001", "moe", 100.5, 4.3, (blocks + 0.3).tolist(), experts=8),
        summary("cpu-study-ablation-data_seed1235-dense", "dense", 100.0, 4.26, (blocks + 0.26).tolist())
        | {"data_seed": 1235},  # sorts first, and is not the baseline: another data order
        summary("cpu-study-ablation-dense", "dense", 100.0, 4.2, (blocks + 0.2).tolist()),  # the same config
        summary("cpu-study-ablation-aux0.1", "moe", 100.5, 4.1, (blocks + 0.1).tolist(), experts=8)
        | {"aux_loss_coef": 0.1},
        summary("cpu-study-ablation-e16", "moe", 100.6, 4.25, (blocks + 0.25).tolist(), experts=16),
        summary("cpu-study-ablation-seed1235-data_seed1234", "moe", 100.5, 4.32, (blocks + 0.32).tolist(), experts=8)
        | {"seed": 1235, "data_seed": 1234},
        summary("cpu-study-ablation-data_seed1235", "moe", 100.5, 4.35, (blocks + 0.35).tolist(), experts=8)
        | {"data_seed": 1235},
        summary("cpu-study-size-d64-dense", "dense", 25.0, 4.6, (blocks + 0.6).tolist(), d_model=64),
        summary("cpu-study-size-d96-dense", "dense", 56.0, 4.3, d_model=96),
        summary("cpu-study-size-d64-moe", "moe", 25.1, 4.4, (blocks + 0.4).tolist(), experts=8, d_model=64),
        summary("cpu-study-size-d96-moe", "moe", 56.1, 4.1, experts=8, d_model=96),
    ]
    result = report(summaries, tmp_path / "r.json", tmp_path / "docs")
    assert {r["name"] for r in result["study"]} == {"cpu-study-dense", "cpu-study-moe-e8", "cpu-study-moe-aux0.1"}
    assert result["study_other_data"] == ["cpu-study-moe-e16"] and result["verdict"]["top1_experts"] == [8]
    assert [r["name"] for r in result["lr_sweep"]] == ["cpu-study-lr-dense-lr0.001", "cpu-study-lr-moe-lr0.001"]
    ablations = result["ablations"]  # against the grid's dense run and the LR sweep's MoE run
    assert ablations["baselines"] == {"dense": "cpu-study-ablation-dense", "moe": "cpu-study-lr-moe-lr0.001"}
    rows = {r["name"]: r for r in ablations["rows"]}
    aux = rows["cpu-study-ablation-aux0.1"]
    assert aux["change"] == "aux_loss_coef 0.1" and aux["paired_diff_vs_dense"] == pytest.approx(-0.1)
    assert aux["paired_diff_vs_moe"] == pytest.approx(-0.2) and aux["tokens_to_dense_final"] is not None
    assert ablations["top1_experts"] == [8, 16] and ablations["top1_falls_with_experts"]  # aux 0.1 is not plain
    noise = ablations["seed_noise"]
    assert noise["cpu-study-ablation-data_seed1235"]["varies"] == "data order"
    assert noise["cpu-study-ablation-seed1235-data_seed1234"] == {
        "of": "cpu-study-lr-moe-lr0.001",
        "varies": "initialization",
        "abs_diff": pytest.approx(0.02),
        "paired_se": pytest.approx(0, abs=1e-9),
    }
    assert noise["cpu-study-ablation-data_seed1235-dense"]["of"] == "cpu-study-ablation-dense"
    assert rows["cpu-study-ablation-data_seed1235-dense"]["change"] == "dense, d_ff 8, data_seed 1235"
    families = result["scaling_fit"]["families"]  # d_model 128: the grids' runs of the sizes grid's length
    points = {family: [p["run"] for p in f["points"]] for family, f in families.items()}
    assert points == {
        "dense": ["cpu-study-size-d64-dense", "cpu-study-size-d96-dense", "cpu-study-ablation-dense"],
        "MoE 8x top-1": ["cpu-study-size-d64-moe", "cpu-study-size-d96-moe", "cpu-study-lr-moe-lr0.001"],
    }  # not the study's longer pair, nor another seed's, another routing's or the LR sweep's other rate
    assert "compute_multiplier" in families["MoE 8x top-1"]
    d64_moe, d64_dense = families["MoE 8x top-1"]["points"][0], families["dense"]["points"][0]
    assert d64_moe["paired_diff_vs_dense_of_size"] == pytest.approx(-0.2)  # against d64 dense, block by block
    assert d64_dense["paired_diff_vs_dense_of_size"] is None
    assert result["verdict"]["best_moe"] == "cpu-study-moe-e8" and not result["verdict"]["gain_over_twice_noise"]
    page = (tmp_path / "docs" / "moe_vs_dense_results.md").read_text()
    assert "## Ablations of MoE-8 top-1" in page and "## Scaling fit" in page
