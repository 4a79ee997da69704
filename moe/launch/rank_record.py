"""Each rank's record of how it ended, for the one line that says why a job stopped (moe/launch/job_end.py).

DeepSpeed's launcher ends a job when one rank exits non-zero: it terminates the others and exits with that rank's
return code (247 for a SIGKILL), logging the command line of the *last* rank it started, whichever rank died
(deepspeed/launcher/launch.py, sigkill_handler). So every rank keeps a record under runs/<run>/ranks/attempt<K>/:

- rank<R>.json: written at start (pid, host, "running"), rewritten at the end: "finished", "failed" (an
  exception, with its last line and whether the rank already printed it), or "hung" (moe/train/watchdog.py),
  with the step and phase it was in. A rank killed by a signal it cannot catch (SIGKILL, the OOM killer) leaves
  "running": that silence is what names it.
- rank<R>.sigterm: every thread's stack when the launcher's SIGTERM arrived (faulthandler, written in the signal
  handler without the GIL, so also while blocked in a collective; then the default action ends the process).
- rank<R>.crash: a fatal signal's traceback (SIGSEGV, SIGABRT, SIGBUS, SIGILL, SIGFPE), by faulthandler.
- rank<R>.exit: the rank's exit code and signal, written by its parent (moe/launch/rank_parent.py).

The launcher clears an attempt's folder before it starts it, and adds job_end.json (the line, and when the job
ended) after it ends.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import signal
import socket
import time
from pathlib import Path

from moe.config.args import restart_attempt
from moe.launch.rank_parent import tell_parent

RANKS_DIR = "ranks"
SUPERVISED_ENV = "MOE_SUPERVISED"  # set by moe/launch/launcher.py, which prints the job's end line itself


def ranks_dir(run_dir: Path, attempt: int | None = None) -> Path:
    """runs/<run>/ranks/attempt<K>: the records of one attempt of the job (K counts the launcher's automatic
    restarts, RESTART_ENV; 0 for the first)."""
    attempt = restart_attempt() if attempt is None else attempt
    return Path(run_dir) / RANKS_DIR / f"attempt{attempt}"


class RankRecord:
    """This rank's record; `start()` once the run folder is known, `end(...)` on the way out."""

    def __init__(self, run_dir: Path, rank: int, progress) -> None:
        self.folder, self.rank, self.progress = ranks_dir(run_dir), rank, progress
        self.path = self.folder / f"rank{rank}.json"
        self._files = []

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.fields = {"rank": self.rank, "pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        self._write(status="running")
        # kept open for the process's life: faulthandler writes to their fds from a signal handler
        crash = open(self.folder / f"rank{self.rank}.crash", "w")  # noqa: SIM115
        sigterm = open(self.folder / f"rank{self.rank}.sigterm", "w")  # noqa: SIM115
        self._files = [crash, sigterm]
        faulthandler.enable(file=crash, all_threads=True)
        faulthandler.register(signal.SIGTERM, file=sigterm, all_threads=True, chain=True)
        tell_parent(str(self.folder))

    def end(self, status: str, exit_code: int, message: str = "", reported: bool = False) -> None:
        """`reported`: the rank printed its own line for this ending (a ConfigError, a failed save)."""
        self._write(status=status, exit_code=exit_code, message=message, reported=reported, ended=time.time())

    def close(self) -> None:
        """Leave the fatal-signal handlers to the interpreter again before it finalizes."""
        if self._files:
            faulthandler.unregister(signal.SIGTERM)
            faulthandler.disable()
            for f in self._files:
                f.close()

    def _write(self, **fields) -> None:
        record = {**self.fields, **fields, "step": self.progress.step, "phase": self.progress.phase}
        record["progress_at"] = self.progress.wall  # wall clock of the rank's last progress
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record) + "\n")
        os.replace(tmp, self.path)  # a reader never sees half a record


def read_records(run_dir: Path, attempt: int | None = None) -> dict[int, dict]:
    """rank -> its record, with "sigterm" / "crash" holding the first line of those files when not empty, and
    "signal" / "exit_code" as its parent saw them (absent when it had none)."""
    records = {}
    for path in sorted(ranks_dir(run_dir, attempt).glob("rank*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for kind in ("sigterm", "crash"):
            side = path.with_suffix(f".{kind}")
            text = side.read_text(errors="replace").strip() if side.is_file() else ""
            record[kind] = text.splitlines()[0] if text else ""
        with contextlib.suppress(OSError, ValueError):
            record.update(json.loads(path.with_suffix(".exit").read_text()))
        records[int(record["rank"])] = record
    return records
