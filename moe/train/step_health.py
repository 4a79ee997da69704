"""The NaN/Inf policy: a step whose loss or gradient norm is not finite is skipped, counted and logged; too many in
a row stop the run; loss spikes are logged.

The skip itself is DeepSpeed's: its bf16 optimizer, its ZeRO-1/2/3 optimizers and its fp16 loss scaler check the
gradients before the update, skip the optimizer step on an inf or NaN, and then the engine skips the LR scheduler
step too and counts `engine.skipped_steps` (`DeepSpeedEngine._take_model_step`, `was_step_applied()`). The one path
without that check, the plain fp32 optimizer under ZeRO-0, gets it in moe/train/grad_norm.py. Every rank sees the
same verdict (the check is all-reduced), so every rank skips the same steps.

Here: the verdict of each step, the count and the run of consecutive skips, and `train.max_skipped_steps` in a row
end the run with one line (StepHealthError; the checkpoints stay as they are, so `latest` is the last good one).
Under fp16 a gradient overflow is the loss scaler's normal business (it lowers the scale and skips): only a
non-finite *loss* counts there.
"""

from __future__ import annotations

import math
import statistics
from collections import deque

SPIKE_WINDOW = 100  # losses in the running median
SPIKE_MIN_HISTORY = 10  # no spike verdict before this many steps


class StepHealthError(RuntimeError):
    """Too many consecutive steps skipped; the rank exits with EXIT_NONFINITE."""


EXIT_NONFINITE = 4


class StepHealth:
    def __init__(self, max_skipped: int, spike_factor: float | None, fp16: bool) -> None:
        self.max_skipped, self.spike_factor, self.fp16 = max_skipped, spike_factor, fp16
        self.skipped_total = 0
        self.run: list[int] = []  # the current run of consecutive skipped steps
        self.losses: deque[float] = deque(maxlen=SPIKE_WINDOW)

    def check(self, step: int, loss: float, grad_norm: float | None, applied: bool) -> dict:
        """The step's verdict as metrics fields; then `stop_reason()` says whether the run must end."""
        loss_finite = math.isfinite(loss)
        skipped = not loss_finite or (not applied and not self.fp16)
        fields: dict = {}
        if skipped:
            self.skipped_total += 1
            self.run.append(step)
            fields.update(skipped=True, nonfinite_skips=self.skipped_total, nonfinite_run=len(self.run))
            return fields
        self.run = []
        if self.spike_factor and len(self.losses) >= SPIKE_MIN_HISTORY:
            median = statistics.median(self.losses)
            if loss > self.spike_factor * median:
                fields.update(loss_spike=True, loss_median=median)
        self.losses.append(loss)
        return fields

    def stop_reason(self) -> str | None:
        if len(self.run) < self.max_skipped:
            return None
        return (
            f"{len(self.run)} steps in a row skipped for a non-finite loss or gradient norm (steps {self.run[0]}-"
            f"{self.run[-1]}; train.max_skipped_steps={self.max_skipped}); no checkpoint was written after them"
        )

    def warning(self, step: int, loss: float, grad_norm: float | None, fields: dict) -> str | None:
        if fields.get("skipped"):
            return (
                f"step {step} skipped: loss {loss}, grad norm {grad_norm} (no optimizer or LR step; "
                f"{fields['nonfinite_run']} in a row of train.max_skipped_steps={self.max_skipped}, "
                f"{fields['nonfinite_skips']} in all)"
            )
        if fields.get("loss_spike"):
            return (
                f"step {step}: loss spike {loss:.4f} > {self.spike_factor:g} x the running median "
                f"{fields['loss_median']:.4f} of the last {len(self.losses)} steps"
            )
        return None
