"""`python launch/sweep.py GRID --status`: one line per run, read from its run folder and the sweep state file.

    run                      state    step    tokens  val_loss  ETA
    tiny-scaling-xs-dense    done     40/40   20.5k   5.932     -
    tiny-scaling-xs-moe-k1   running  12/40   6.1k    6.231     1m05s
    tiny-scaling-xs-moe-k2   pending  0/40    0         -       -

state: done (the run folder is finished), running (its sweep is alive; for a run the state file does not know, such
as a SLURM task's: metrics.jsonl grew lately), failed (its last attempt failed), stopped (started, not finished,
nothing runs it: the next sweep resumes it) or pending.
tokens: the last training record's `tokens` (or steps × tokens per step); val_loss: the last validation's.
ETA: the steps left × the median seconds per step of the last training records (their wall-clock `time`).
"""

from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from moe.scaling.run_folder import can_resume, read_done, read_metrics, run_finished
from moe.scaling.sweep_state import FAILED, RUNNING, RunRecord

RECENT_STEPS = 10  # training records the seconds per step come from
FRESH_S = 120  # metrics written this recently mean a run is going (one a sweep state file does not know of)


@dataclass
class RunStatus:
    name: str
    state: str
    step: int
    max_steps: int
    tokens: int
    val_loss: float | None
    eta_s: float | None  # None: not running, or too few steps to tell


def seconds_per_step(train: list[dict]) -> float | None:
    """Median wall-clock seconds per step over the last RECENT_STEPS training records of the latest attempt (a
    resume's gap and the steps it repeats are left out)."""
    recent = []
    for record in reversed(train):
        if recent and (record["step"] >= recent[-1]["step"] or record["time"] >= recent[-1]["time"]):
            break
        recent.append(record)
        if len(recent) > RECENT_STEPS:
            break
    spans = [(a["time"] - b["time"]) / (a["step"] - b["step"]) for a, b in itertools.pairwise(recent)]
    return statistics.median(spans) if spans else None


def run_status(
    name: str, run_dir: Path, max_steps: int, tokens_per_step: int, record: RunRecord | None, sweep_alive: bool
) -> RunStatus:
    records = read_metrics(run_dir)
    train = [r for r in records if "tokens_per_s" in r and "time" in r]
    validations = [r for r in records if "val_loss" in r]
    step = train[-1]["step"] if train else 0
    tokens = train[-1].get("tokens", step * tokens_per_step) if train else 0
    val_loss = validations[-1]["val_loss"] if validations else None
    done = read_done(run_dir)
    if run_finished(run_dir, max_steps):
        state = "done"
        if done:
            step, tokens, val_loss = done.get("step", step), done.get("tokens", tokens), done.get("val_loss", val_loss)
    elif record is not None and record.state == RUNNING:
        state = "running" if sweep_alive else "stopped"
    elif record is not None and record.state == FAILED:
        state = "failed"
    elif record is None and train and time.time() - train[-1]["time"] < FRESH_S:  # started by no sweep of ours
        state = "running"
    elif train or can_resume(run_dir):
        state = "stopped"
    else:
        state = "pending"
    per_step = seconds_per_step(train) if state == "running" else None
    eta = per_step * max(0, max_steps - step) if per_step is not None else None
    return RunStatus(name, state, step, max_steps, tokens, val_loss, eta)


def format_tokens(tokens: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if tokens >= scale:
            return f"{tokens / scale:.1f}{unit}"
    return str(tokens)


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = round(seconds)
    hours, minutes = divmod(s // 60, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{s % 60:02d}s" if minutes else f"{s}s"


def format_table(rows: list[RunStatus]) -> str:
    header = ("run", "state", "step", "tokens", "val_loss", "ETA")
    cells = [header] + [
        (
            r.name,
            r.state,
            f"{r.step}/{r.max_steps}",
            format_tokens(r.tokens),
            f"{r.val_loss:.3f}" if r.val_loss is not None else "-",
            format_eta(r.eta_s),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)
