"""Throughput telemetry with DeepSpeed's wall-clock breakdown on: each step's record splits its time into forward,
backward, gradient all-reduce, optimizer step and the MoE all-to-alls (moe/train/throughput.py). The run is the
shared `deepspeed_run` (tests/conftest.py): the tiny recipe through `deepspeed launch/pretrain_moe.sh` with
ds.wall_clock_breakdown=true."""

import pytest

from tests.helpers import BASH_RUN_STEPS, read_metrics

pytestmark = pytest.mark.e2e


def test_time_split_comes_from_deepspeed_timers(deepspeed_run):
    _, run_dir = deepspeed_run
    metrics = read_metrics(run_dir)
    steps = [m for m in metrics if "loss" in m]
    assert len(steps) == BASH_RUN_STEPS
    # validations between steps (tiny: every 10): the steps after them must not count the validation's forwards
    assert [m["step"] for m in metrics if "val_loss" in m] == [0, 10, 20]
    for m in steps:
        parts = [m[k] for k in ("time_forward_ms", "time_backward_ms", "time_optimizer_ms")]
        assert all(p > 0 for p in parts) and 0 < m["time_grad_allreduce_ms"] <= m["time_backward_ms"]
        assert 0 < m["time_alltoall_fwd_ms"] < m["time_forward_ms"]  # EP=2: dispatch and combine inside forward
        assert sum(parts) <= m["step_time_s"] * 1e3 * 1.05  # the split fits inside the measured step
