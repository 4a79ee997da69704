"""Throughput telemetry with DeepSpeed's wall-clock breakdown on: each step's record splits its time into forward,
backward, gradient all-reduce, optimizer step and the MoE all-to-alls (moe/train/throughput.py)."""
import pytest

from tests.e2e.conftest import SMALL_DATA
from tests.helpers import explain, launch_bash, read_metrics

pytestmark = pytest.mark.e2e


def test_time_split_comes_from_deepspeed_timers(tmp_path):
    proc = launch_bash("--recipe", "recipes/tiny.yaml", "train.max_steps=3", "train.eval_interval=0",
                       "train.save_interval=0", "logging.progress_bar=false", *SMALL_DATA,
                       f"logging.runs_dir={tmp_path}", "ds.wall_clock_breakdown=true")
    assert proc.returncode == 0, explain(proc)
    steps = [m for m in read_metrics(tmp_path / "tiny") if "loss" in m]
    assert len(steps) == 3
    for m in steps:
        parts = [m[k] for k in ("time_forward_ms", "time_backward_ms", "time_optimizer_ms")]
        assert all(p > 0 for p in parts) and 0 < m["time_grad_allreduce_ms"] <= m["time_backward_ms"]
        assert 0 < m["time_alltoall_fwd_ms"] < m["time_forward_ms"]  # EP=2: dispatch and combine inside forward
        assert sum(parts) <= m["step_time_s"] * 1e3 * 1.05  # the split fits inside the measured step
