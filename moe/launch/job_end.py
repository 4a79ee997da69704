"""Why a job ended: one line from the ranks' end records (moe/launch/rank_record.py), printed by the launcher.

The cause is the first rank to fail, in this order of evidence: a rank that hung (its watchdog fired), a rank that
crashed (a fatal signal's traceback) or died without a word (its record still says "running" and it was not
terminated by the launcher: SIGKILL, the OOM killer), then the earliest Python exception. The others were stopped
by DeepSpeed's launcher (they got its SIGTERM) or failed after the cause (a collective whose peer was gone).
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass
from pathlib import Path

from moe.launch.rank_record import read_records


def signal_of(returncode: int) -> str | None:
    """The signal named by DeepSpeed's launcher's exit code (it exits with a killed rank's -N: 256 - N)."""
    for code in (-returncode, 256 - returncode):
        if 0 < code < 65 and returncode != 0:
            try:
                return signal.Signals(code).name
            except ValueError:
                return None
    return None


COLLECTIVE_PHASES = ("forward", "backward", "step", "train_batch", "validation")


@dataclass(frozen=True)
class Ending:
    """Why a failed job ended. `line` is None when the failing rank printed its own (a config error, a failed
    save); `cause` is what a restart compares: the same cause at the same step twice is deterministic."""

    line: str | None
    cause: tuple
    exit_code: int | None = None  # the failing rank's (128 + N for signal N); DeepSpeed's is whichever it saw first


def explain(run_dir: Path, returncode: int, world_size: int, attempt: int = 0) -> Ending | None:
    """Which rank ended the job (that attempt of it), how, and at which step; None when the job succeeded."""
    if returncode == 0:
        return None
    records = read_records(run_dir, attempt)
    if not records:
        return Ending(f"the job ended with exit code {returncode} before any rank started", ("no rank", returncode))
    where = _where(run_dir, records)
    # A hung rank outside a collective (a data read, a checkpoint write) holds up the ones waiting for it in one;
    # among equals, the one that stopped first.
    hung = sorted(
        (r for r in records.values() if r.get("status") == "hung"),
        key=lambda r: (r["phase"] in COLLECTIVE_PHASES, r.get("progress_at", 0)),
    )
    if hung:
        r = hung[0]
        return Ending(
            f"{r['message']}{_others(records, r)}", ("hung", r["rank"], r["step"], r["phase"]), r["exit_code"]
        )
    crashed = [r for r in records.values() if r["crash"]]
    if crashed:
        r = crashed[0]
        line = f"rank {r['rank']} ({_host(r)}) crashed {_at(r, where)}: {r['crash']}{_others(records, r)}"
        return Ending(line, ("crashed", r["rank"], r["crash"], where), _signal_exit(r))
    silent = [r for r in records.values() if r.get("status") == "running" and not r["sigterm"]]
    if silent:
        r = silent[0]
        how = r.get("signal") or signal_of(returncode)
        if how:
            how = f"was killed by {how}" + (" (or the OOM killer)" if how == "SIGKILL" else "")
        else:
            how = f"ended with exit code {r['exit_code']}" if "exit_code" in r else "died without a word"
        line = f"rank {r['rank']} ({_host(r)}) {how} {where}{_others(records, r)}"
        return Ending(line, ("killed", r["rank"], how, where), _signal_exit(r))
    failed = sorted((r for r in records.values() if r.get("status") == "failed"), key=lambda r: r.get("ended", 0))
    if failed:
        r = failed[0]
        line = f"rank {r['rank']} ({_host(r)}) failed {_at(r, where)}: {r['message']}{_others(records, r)}"
        reported = any(f.get("reported") and f["message"] == r["message"] for f in failed)  # by another rank too
        return Ending(None if reported else line, ("failed", r["exit_code"], r["step"], r["message"]), r["exit_code"])
    if all(r["sigterm"] for r in records.values()):
        return Ending(f"every rank was stopped by SIGTERM {where}: the job was stopped from outside", ("stopped",))
    missing = sorted(set(range(world_size)) - set(records))
    if missing:
        line = f"rank {missing[0]} never started; the job ended with exit code {returncode}"
        return Ending(line, ("never started", missing[0]))
    return Ending(f"every rank finished its work, yet the job ended with exit code {returncode}", ("exit", returncode))


def _where(run_dir: Path, records: dict[int, dict]) -> str:
    """How far the job got: a rank's end record with its step and phase, else the last step in metrics.jsonl (a
    rank that was killed or terminated wrote no end record; rank 0 logs every step)."""
    front = max(records.values(), key=lambda r: r["step"])
    if front["step"]:
        return f"at step {front['step']} (rank {front['rank']} was in {front['phase']})"
    step = last_logged_step(Path(run_dir) / "metrics.jsonl")
    return f"after step {step}" if step else "before the first step"


def last_logged_step(metrics: Path) -> int:
    """The step of the last record in metrics.jsonl (its last 64 kB), 0 when there is none."""
    try:
        with open(metrics, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - (1 << 16)))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return 0


def _signal_exit(record: dict) -> int | None:
    """A shell's exit code for a rank its parent saw die of a signal (137 for SIGKILL)."""
    return 128 + signal.Signals[record["signal"]] if record.get("signal") else None


def _host(record: dict) -> str:
    return f"pid {record['pid']} on {record['host']}"


def _at(record: dict, where: str) -> str:
    return f"at step {record['step']} in {record['phase']}" if record["step"] else where


def _others(records: dict[int, dict], cause: dict) -> str:
    """How the other ranks ended: stopped by the launcher's SIGTERM, or failed or hung after the cause."""
    counts: dict[str, int] = {}
    for r in records.values():
        if r is not cause:
            how = "stopped by the launcher" if r["sigterm"] else {"hung": "hung after it"}.get(r.get("status"), "")
            how = how or ("failed after it" if r.get("status") == "failed" else "ended")
            counts[how] = counts.get(how, 0) + 1
    if not counts:
        return ""
    return "; the other ranks: " + ", ".join(f"{n} {how}" for how, n in counts.items())
