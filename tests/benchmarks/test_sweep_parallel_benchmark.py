"""benchmarks/sweep_parallel.py's totals from the runs' metrics records (its real runs take minutes: not run here)."""

import pytest

from benchmarks.sweep_parallel import layout
from benchmarks.throughput import Run


def fake_run(seconds_per_step: float, steps: int = 10, batch: int = 8, seq_len: int = 64) -> Run:
    records = [{"step": s, "tokens_per_s": 1.0, "step_time_s": seconds_per_step, "time": 100.0 + s * seconds_per_step}
               for s in range(1, steps + 1)] + [{"step": steps, "val_loss": 5.0}]  # fmt: skip
    return Run(records, None, {}, {"data": {"seq_len": seq_len}}, {"train_batch_size": batch}, 0.0, [], {})


def test_runs_side_by_side_add_up_and_runs_in_turn_share_the_time():
    a, b = fake_run(0.5), fake_run(0.25)  # 512 tokens a step: 1024 and 2048 tokens/s after the warm-up
    side = layout([a, b], wall_s=20.0, skip=2, side_by_side=True)
    turn = layout([a, b], wall_s=40.0, skip=2, side_by_side=False)
    assert side["per_run_steady_tokens_per_s"] == pytest.approx([1024.0, 2048.0])
    assert side["steady_tokens_per_s"] == pytest.approx(3072.0)
    assert turn["steady_tokens_per_s"] == pytest.approx(2 * 7 * 512 / (7 * 0.5 + 7 * 0.25))  # all tokens / all time
    assert (side["tokens"], side["sweep_tokens_per_s"], turn["sweep_tokens_per_s"]) == (10240, 512.0, 256.0)
    assert side["per_run_median_tokens_per_s"] == pytest.approx([1024.0, 2048.0])
