"""python -m moe.scaling: L = a·C^-b (+ E) fitted per family of runs (moe/scaling/fit.py)."""

import json

import numpy as np
import pytest

from moe.model import MoEGPTConfig
from moe.model.cost import model_cost
from moe.scaling.fit import Point, PowerLaw, fit_families, fit_power_law, run_points
from tests.helpers import read_metrics, run

COMPUTE = np.geomspace(1e12, 1e19, 9)


def test_fit_recovers_a_pure_power_law():
    law = fit_power_law(COMPUTE, 40.0 * COMPUTE**-0.07)
    assert law.a == pytest.approx(40.0, rel=1e-9) and law.b == pytest.approx(0.07, rel=1e-9) and law.e == 0.0


def test_fit_recovers_a_power_law_with_irreducible_loss():
    law = fit_power_law(COMPUTE, 1.7 + 300.0 * COMPUTE**-0.15, irreducible=True)
    assert (law.a, law.b, law.e) == pytest.approx((300.0, 0.15, 1.7), rel=1e-6)


def test_fit_is_least_squares_in_log_loss_under_noise():
    rng = np.random.default_rng(0)
    loss = 40.0 * COMPUTE**-0.07 * np.exp(rng.normal(0, 0.01, COMPUTE.size))
    law = fit_power_law(COMPUTE, loss)
    assert law.b == pytest.approx(0.07, rel=0.05)
    worse = PowerLaw(law.a * 1.01, law.b)
    residual = lambda f: np.sum((np.log(f(COMPUTE)) - np.log(loss)) ** 2)  # noqa: E731
    assert residual(law) < residual(worse)


def test_dense_and_moe_runs_are_fitted_apart():
    dense = [Point(f"d{i}", "dense", c, 3.0 * c**-0.05) for i, c in enumerate(COMPUTE[:4])]
    moe = [Point(f"m{i}", "MoE 8x top-2", c, 2.5 * c**-0.05) for i, c in enumerate(COMPUTE[:4])]
    lone = [Point("x", "MoE 4x top-1", 1e15, 3.0)]
    fits = fit_families(dense + moe + lone, irreducible=False)
    assert fits["dense"].a == pytest.approx(3.0) and fits["MoE 8x top-2"].a == pytest.approx(2.5)
    assert fits["MoE 4x top-1"] is None  # one point: nothing to fit


def test_points_of_a_real_run_are_its_validation_losses_at_its_compute(sweep_run):
    _, run_dir = sweep_run
    val = [m for m in read_metrics(run_dir) if "val_loss" in m and m["step"] > 0]
    assert [m["step"] for m in val] == [2, 4]
    points = run_points(run_dir, all_points=True)
    cost = model_cost(MoEGPTConfig.from_pretrained(run_dir / "model_config"), 64)
    batch = json.loads((run_dir / "ds_config.json").read_text())["train_batch_size"]
    assert [p.compute for p in points] == pytest.approx([cost.train_flops_per_token() * s * batch * 64 for s in (2, 4)])
    assert [p.loss for p in points] == [m["val_loss"] for m in val]
    assert {p.family for p in points} == {"MoE 4x top-2"} and run_points(run_dir) == points[-1:]


def test_scaling_cli_fits_and_plots_a_real_run(sweep_run, tmp_path):
    _, run_dir = sweep_run
    out = tmp_path / "scaling.png"
    proc = run(["python", "-m", "moe.scaling", str(run_dir), "--all-points", "--out", str(out)], timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "MoE 4x top-2: L = " in proc.stdout and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scaling_cli_refuses_a_folder_that_is_not_a_run(tmp_path):
    proc = run(["python", "-m", "moe.scaling", str(tmp_path)], timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {tmp_path} is not a run folder (no metrics.jsonl)"
