"""benchmarks/moe_vs_dense.py: the step at which a run reaches the dense final loss, interpolated between
validations, and the report over real run folders (the sweep's layout: metrics.jsonl + model_config/)."""

import json
import sys

import pytest

from benchmarks.moe_vs_dense import step_to_reach
from moe.model import MoEGPTConfig
from tests.helpers import run


def test_step_to_reach_interpolates_between_validations():
    val = [(0, 9.0), (25, 5.0), (50, 4.0), (75, 3.0)]
    assert step_to_reach(val, 4.0) == 50
    assert step_to_reach(val, 3.5) == pytest.approx(62.5)
    assert step_to_reach(val, 2.0) is None


def fake_run(folder, moe: bool, val_losses):
    folder.mkdir()
    MoEGPTConfig(
        vocab_size=256, d_model=32, n_layers=2, n_heads=2, moe_enabled=moe, num_experts=4, num_experts_per_tok=1
    ).save_pretrained(folder / "model_config")
    lines = [{"step": s, "loss": 5.0, "step_time_s": 0.1 if not moe else 0.12} for s in range(1, 11)]
    lines += [{"step": s, "val_loss": v} for s, v in val_losses]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_report_gives_speedup_against_the_dense_run(tmp_path):
    fake_run(tmp_path / "dense", False, [(0, 9.0), (5, 6.0), (10, 5.0)])
    fake_run(tmp_path / "moe", True, [(0, 9.0), (5, 5.0), (10, 4.5)])
    out = tmp_path / "r.json"
    proc = run(
        [
            sys.executable,
            "benchmarks/moe_vs_dense.py",
            str(tmp_path / "dense"),
            str(tmp_path / "moe"),
            "--json",
            str(out),
            "--png",
            str(tmp_path / "p.png"),
        ],
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["moe"]["step_to_dense_final_loss"] == 5 and rows["moe"]["step_speedup"] == 2.0
    assert rows["moe"]["time_per_step_vs_dense"] == pytest.approx(1.2)
    assert (tmp_path / "p.png").stat().st_size > 1000
