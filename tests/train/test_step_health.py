"""The NaN/Inf policy's verdicts (moe/train/step_health.py); the skips themselves run end to end in
tests/launch/test_launcher.py (ZeRO-0 fp32 and ZeRO-1)."""

import math
import statistics

from moe.train.step_health import StepHealth


def test_skips_are_counted_in_a_row_and_in_all_and_the_limit_stops_the_run():
    health = StepHealth(max_skipped=3, spike_factor=None, fp16=False)
    verdicts = [health.check(step, loss, 1.0, applied=math.isfinite(loss)) for step, loss in enumerate(
        [3.0, math.nan, math.nan, 2.9, math.inf, math.nan], start=1)]  # fmt: skip
    assert [v.get("skipped", False) for v in verdicts] == [False, True, True, False, True, True]
    assert verdicts[-1] == {"skipped": True, "nonfinite_skips": 4, "nonfinite_run": 2}
    assert health.stop_reason() is None
    health.check(7, 3.0, math.inf, applied=False)  # a finite loss whose gradients were not: DeepSpeed skipped it
    assert health.stop_reason().startswith("3 steps in a row skipped for a non-finite loss or gradient norm (steps 5-7")


def test_under_fp16_an_overflow_is_the_loss_scalers_and_only_a_nan_loss_counts():
    health = StepHealth(max_skipped=2, spike_factor=None, fp16=True)
    assert health.check(1, 3.0, None, applied=False) == {}  # a loss-scale overflow: DeepSpeed lowers the scale
    assert health.check(2, math.nan, None, applied=False)["skipped"]


def test_a_loss_above_k_times_the_running_median_is_a_spike():
    health = StepHealth(max_skipped=10, spike_factor=2.0, fp16=False)
    for step in range(1, 11):
        assert health.check(step, 3.0 + 0.01 * step, 0.5, applied=True) == {}
    spike = health.check(11, 6.5, 9.0, applied=True)
    assert spike["loss_spike"] and spike["loss_median"] == statistics.median(3.0 + 0.01 * s for s in range(1, 11))
    assert "loss spike 6.5000 > 2 x the running median 3.0550" in health.warning(11, 6.5, 9.0, spike)
    assert health.check(12, 6.0, 1.0, applied=True) == {}  # under 2 x the median
