"""A hang watchdog: one rank's progress (step and phase), and a thread that ends the job when it stops moving.

A collective waiting on a dead or stuck peer, a data read on a hung filesystem, a deadlock: the rank blocks in C
with nothing to say, and torch's own collective timeout fires only after its (long) limit, with one line that
names neither the step nor where each rank was. Here every rank reports progress at each phase of a step (forward,
backward, step; or the pipeline's train_batch), at validation, checkpoint and data reads. When a rank has reported
nothing for `train.hang_timeout_s` (`train.startup_timeout_s` until the first step, which covers op builds and
data preparation), its watchdog writes every thread's stack (faulthandler, which needs no GIL) to
runs/<run>/hang-rank<R>.txt and ends the process with exit code 3; DeepSpeed's launcher then stops the other ranks
and the job ends non-zero. The line naming the rank, step and phase is printed by the launcher, from the rank's end
record (moe/launch/rank_record.py), or by the rank itself when no launcher of ours watches it.

torch's collective timeout (init_distributed) is set a minute above these limits, so this watchdog, which says
where each rank was, fires first.
"""

from __future__ import annotations

import faulthandler
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

EXIT_HUNG = 3


class Progress:
    """Where this rank is: the step it works on (1-based; 0 before the first) and the phase within it."""

    def __init__(self) -> None:
        self.step, self.phase, self.last, self.wall = 0, "startup", time.monotonic(), time.time()
        self.outer: str | None = None  # a phase that holds while the engine's calls inside it report (validation)

    def report(self, phase: str, step: int | None = None) -> None:
        self.phase, self.last, self.wall = self.outer or phase, time.monotonic(), time.time()
        if step is not None:
            self.step = step

    @contextmanager
    def within(self, phase: str):
        """Report `phase`, and keep it as the phase of every report inside (validation's forward passes)."""
        self.report(phase)
        self.outer = phase
        try:
            yield
        finally:
            self.outer = None

    def describe(self) -> str:
        return f"step {self.step} in {self.phase}" if self.step else f"start-up ({self.phase})"


class Watchdog(threading.Thread):
    """Ends the process when `progress` has not moved for the phase's limit (0 = never). `on_hang(seconds, path)`
    runs first, before the stacks are written (the rank's end record)."""

    def __init__(self, progress: Progress, run_dir: Path, rank: int, hang_s: float, startup_s: float, on_hang=None):
        super().__init__(name="moe-watchdog", daemon=True)
        self.progress, self.rank, self.hang_s, self.startup_s = progress, rank, hang_s, startup_s
        self.path = Path(run_dir) / f"hang-rank{rank}.txt"
        self.on_hang = on_hang
        self._stopped = threading.Event()

    def limit(self) -> float:
        return self.startup_s if self.progress.step == 0 else self.hang_s

    def run(self) -> None:
        while not self._stopped.wait(self._poll_s()):
            limit, idle = self.limit(), time.monotonic() - self.progress.last
            if limit and idle > limit:
                self._fire(idle, limit)

    def _poll_s(self) -> float:
        limits = [s for s in (self.hang_s, self.startup_s) if s]
        return min([5.0] + [s / 10 for s in limits])

    def stop(self) -> None:
        self._stopped.set()

    def line(self, idle: float, limit: float) -> str:
        key = "train.startup_timeout_s" if self.progress.step == 0 else "train.hang_timeout_s"
        return (
            f"rank {self.rank} made no progress for {idle:.0f} s ({self.progress.describe()}; {key}={limit:g}); "
            f"every thread's stack is in {self.path}"
        )

    def _fire(self, idle: float, limit: float) -> None:
        if self.on_hang:
            self.on_hang(self.line(idle, limit))
        with open(self.path, "w") as f:
            f.write(f"{self.line(idle, limit)}\n\n")
            f.flush()
            faulthandler.dump_traceback(file=f, all_threads=True)
        os._exit(EXIT_HUNG)


def watch_engine(engine, progress: Progress) -> None:
    """Report each phase of a step as the engine enters it: forward, backward, step (or the pipeline's whole
    train_batch). Instance attributes shadow the engine's methods; nn.Module.__call__ looks up self.forward."""
    for name in ("forward", "backward", "step", "train_batch"):
        method = getattr(engine, name, None)
        if method is not None:
            setattr(engine, name, _reporting(method, name, progress))


def _reporting(method, phase: str, progress: Progress):
    def wrapper(*args, **kwargs):
        progress.report(phase)
        return method(*args, **kwargs)

    return wrapper
