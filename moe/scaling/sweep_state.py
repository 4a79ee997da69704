"""runs/sweeps/<sweep>/state.json: what a sweep did to each of its runs, replaced atomically on every change.

    {"sweep": "tiny-scaling", "host": "node0", "pid": 4242, "updated": "2026-01-02T10:00:00",
     "runs": {"tiny-scaling-s-moe-k2": {"state": "running", "attempts": 2, "started": "...", "finished": null,
                                        "exit_code": null, "log": "runs/sweeps/tiny-scaling/logs/...log"}}}

state is pending, running, done or failed. The file is a record, not the truth: a sweep started again decides from
the run folders (moe/scaling/run_folder.py) what is finished and what resumes, and only keeps the attempts and the
history from here. `pid` and `host` name the sweep process that wrote it last, so `--status` can tell a running run
from one whose sweep was killed.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
STATES = (PENDING, RUNNING, DONE, FAILED)


def now() -> str:
    return datetime.now().isoformat(timespec="seconds")


@dataclass
class RunRecord:
    state: str = PENDING
    attempts: int = 0  # launches by any sweep, the first one included
    started: str | None = None  # the latest attempt's start and end (local time, ISO 8601)
    finished: str | None = None
    exit_code: int | None = None
    log: str | None = None


@dataclass
class SweepState:
    path: Path
    sweep: str
    runs: dict[str, RunRecord] = field(default_factory=dict)
    pid: int | None = None
    host: str | None = None

    @classmethod
    def load(cls, path: Path, sweep: str) -> SweepState:
        """The state file at `path`, or an empty state when there is none yet."""
        path = Path(path)
        if not path.is_file():
            return cls(path, sweep)
        raw = json.loads(path.read_text())
        runs = {name: RunRecord(**record) for name, record in raw.get("runs", {}).items()}
        return cls(path, raw.get("sweep", sweep), runs, raw.get("pid"), raw.get("host"))

    def record(self, name: str) -> RunRecord:
        return self.runs.setdefault(name, RunRecord())

    def set(self, name: str, state: str) -> RunRecord:
        assert state in STATES, state
        record = self.record(name)
        record.state = state
        return record

    def started(self, name: str, log: Path | None) -> None:
        record = self.set(name, RUNNING)
        record.attempts += 1
        record.started, record.finished, record.exit_code = now(), None, None
        record.log = str(log) if log else None
        self.save()

    def ended(self, name: str, exit_code: int) -> None:
        record = self.set(name, DONE if exit_code == 0 else FAILED)
        record.finished, record.exit_code = now(), exit_code
        self.save()

    def owned_by_this_process(self) -> None:
        self.pid, self.host = os.getpid(), socket.gethostname()

    def writer_alive(self) -> bool:
        """Whether the sweep process that wrote the file last still runs (on this host; elsewhere: assumed)."""
        if self.pid is None:
            return False
        if self.host != socket.gethostname():
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # a process of another user holds the pid: not ours
            return False
        return True

    def save(self) -> None:
        """Write to a temporary file beside it, then os.replace: a reader sees the old file or the new one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "sweep": self.sweep,
            "host": self.host,
            "pid": self.pid,
            "updated": now(),
            "runs": {name: asdict(record) for name, record in self.runs.items()},
        }
        tmp = self.path.with_name(f"{self.path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, self.path)
