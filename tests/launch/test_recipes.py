"""Every shipped recipe trains through the real launcher; the AutoEP recipe under ZeRO-3 resumes bit-exactly."""

import shutil

import pytest

from tests.helpers import REPO, SMALL_DATA, explain, launch_bash, read_metrics

pytestmark = pytest.mark.e2e

# tiny.yaml runs in the shared session fixture `bash_run` (tests/conftest.py), autoep.yaml in the resume test below
# (under ZeRO-3), study.yaml as the 9 runs of its grid (tests/benchmarks/test_moe_vs_dense_report.py); the others
# run here, on a small corpus
ELSEWHERE = ("tiny.yaml", "autoep.yaml", "study.yaml")
RECIPES = sorted(p.name for p in (REPO / "recipes").glob("*.yaml") if p.name not in ELSEWHERE)
SHORT = ("train.max_steps=2", "train.warmup_steps=1", "train.eval_interval=0", "logging.progress_bar=false")


def _train_records(metrics: list[dict]) -> list[dict]:
    return [m for m in metrics if "loss" in m]


@pytest.mark.parametrize("recipe", RECIPES)
def test_shipped_recipe_trains_two_steps_through_the_launcher(recipe, tmp_path):
    proc = launch_bash(
        "--recipe", f"recipes/{recipe}", *SHORT, *SMALL_DATA, f"logging.runs_dir={tmp_path}", "logging.run_name=r"
    )
    assert proc.returncode == 0, explain(proc)
    records = _train_records(read_metrics(tmp_path / "r"))
    assert [m["step"] for m in records] == [1, 2] and all(0 < m["loss"] < 20 for m in records)
    assert (tmp_path / "r" / "checkpoints" / "global_step2" / "COMPLETE").is_file()


def test_autoep_zero3_resume_matches_the_uninterrupted_run(tmp_path):
    args = (
        "--recipe",
        "recipes/autoep.yaml",
        "--ds_config",
        "ds_configs/zero3.json",
        "train.max_steps=4",
        "train.warmup_steps=1",
        "train.eval_interval=0",
        "train.save_interval=2",
        "logging.progress_bar=false",
        *SMALL_DATA,
        "logging.run_name=r",
    )
    proc = launch_bash(*args, f"logging.runs_dir={tmp_path / 'full'}")
    assert proc.returncode == 0, explain(proc)
    reference = _train_records(read_metrics(tmp_path / "full" / "r"))
    assert [m["step"] for m in reference] == [1, 2, 3, 4] and all(0 < m["loss"] < 20 for m in reference)
    assert (tmp_path / "full" / "r" / "checkpoints" / "global_step4" / "COMPLETE").is_file()
    shutil.copytree(tmp_path / "full" / "r", tmp_path / "cut" / "r")
    ckpt = tmp_path / "cut" / "r" / "checkpoints"
    shutil.rmtree(ckpt / "global_step4")
    (ckpt / "latest").write_text("global_step2")  # as if the job had died after the step-2 checkpoint
    proc = launch_bash(*args, f"logging.runs_dir={tmp_path / 'cut'}", "--resume")
    assert proc.returncode == 0, explain(proc)
    assert "resumed from global_step2" in proc.stdout + proc.stderr
    resumed = _train_records(read_metrics(tmp_path / "cut" / "r"))
    assert [m["step"] for m in resumed] == [1, 2, 3, 4]
    for got, want in zip(resumed[2:], reference[2:]):
        assert (got["loss"], got["lr"], got["grad_norm"]) == (want["loss"], want["lr"], want["grad_norm"])  # bit-exact
