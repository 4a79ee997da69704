"""Run a sweep's runs on this machine, several at once, and pick up where a stopped sweep left off.

    python launch/sweep.py GRID                   # one run after another, its output on this terminal
    python launch/sweep.py GRID --parallel auto   # as many at once as the machine holds, each on its own devices
    python launch/sweep.py GRID --parallel 4      # four at once, the machine's devices split four ways

Devices: on CPU the cores of this process's affinity mask (os.sched_getaffinity); a run goes under
`taskset -c <its cores>` and its ranks split those cores among themselves (moe/launch/threads.py). On GPUs the
GPUs that `nvidia-smi -L` lists (or CUDA_VISIBLE_DEVICES, when set); a run gets CUDA_VISIBLE_DEVICES=<its GPUs>,
which the launcher hands to DeepSpeed's runner as --include (moe/launch/launcher.py).
`auto` gives a run of G ranks G devices, so a sweep of single-rank runs on N cores runs N at once; `--parallel N`
splits the devices into N equal slots. Each run at once gets its own rendezvous port (--master_port) and writes
its output to runs/sweeps/<sweep>/logs/<run>.log; this process prints a line when a run starts and ends.

A run whose folder is finished (moe/scaling/run_folder.py) is skipped; one with a checkpoint is started with
--resume; any other starts fresh. A failed run is reported and the others go on; the sweep exits 1 at the end if
any failed. SIGTERM or Ctrl-C stops the runs it started, every process of them (they keep their checkpoints),
records them as pending and exits 128 + the signal.
The sweep state file (moe/scaling/sweep_state.py) records every start and end.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from moe.config import ConfigError
from moe.scaling.run_folder import can_resume, run_finished
from moe.scaling.sweep_state import DONE, PENDING, SweepState, now

REPO = Path(__file__).resolve().parents[2]  # where runs start: the launcher paths are relative to it
AUTO = None  # --parallel auto
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


@dataclass(frozen=True)
class SweepJob:
    """One run as the runner sees it: its name and rank count, where its folder is, and its launch command."""

    name: str
    ranks: int
    run_dir: Path
    command: Callable[[bool, int | None], list[str]]  # (resume, master port or None) -> the launcher command
    max_steps: int | None = None  # the step it is finished at


def parse_parallel(text: str) -> int | None:
    """--parallel: a positive integer or `auto` (None)."""
    if text == "auto":
        return AUTO
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"--parallel takes a positive integer or auto, got {text!r}")
    return int(text)


def cpu_devices() -> list[str]:
    return [str(c) for c in sorted(os.sched_getaffinity(0))]


def gpu_devices() -> list[str]:
    """The GPUs runs may take: CUDA_VISIBLE_DEVICES when set, else every GPU `nvidia-smi -L` lists."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if visible:
        return [d.strip() for d in visible.split(",") if d.strip()]
    listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
    return [m.group(1) for m in re.finditer(r"^GPU (\d+):", listing, re.MULTILINE)]


def slot_width(ranks: int, parallel: int | None, devices: int, gpu: bool) -> int:
    """How many of the machine's `devices` cores (or GPUs) a run of `ranks` ranks takes: its rank count under
    auto, an N-th of them under --parallel N. A CPU run's ranks may share cores; a GPU run needs one GPU a rank."""
    width = ranks if parallel is AUTO else max(1, devices // parallel)
    if not gpu:
        return min(width, devices)
    if ranks > min(width, devices):
        room = f"--parallel {parallel} leaves {width} per run" if parallel else f"this machine has {devices}"
        raise ConfigError(f"a run of {ranks} ranks needs {ranks} GPUs; {room}")
    return ranks


class DevicePool:
    """The devices no running run holds; a run takes the lowest-numbered free ones."""

    def __init__(self, devices: list[str]):
        self.order = {d: i for i, d in enumerate(devices)}
        self.free = list(devices)

    def take(self, width: int) -> tuple[str, ...] | None:
        if width > len(self.free):
            return None
        taken, self.free = tuple(self.free[:width]), self.free[width:]
        return taken

    def give(self, devices: tuple[str, ...]) -> None:
        self.free = sorted([*self.free, *devices], key=self.order.__getitem__)


def pinning(devices: tuple[str, ...], gpu: bool) -> tuple[list[str], dict[str, str]]:
    """(command prefix, environment) that confine a run to `devices`; nothing for an unpinned run."""
    if not devices:
        return [], {}
    if gpu:
        return [], {"CUDA_VISIBLE_DEVICES": ",".join(devices)}
    return ["taskset", "-c", ",".join(devices)], {}


def free_port(taken: set[int]) -> int:
    """A TCP port free now and not handed to another running run (moe.parallel.free_port without importing
    torch into the sweep process)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in taken:
            return port


@dataclass
class Active:
    """A run this sweep started and has not seen end."""

    index: int  # its place in the sweep, from 1
    job: SweepJob
    proc: subprocess.Popen
    devices: tuple[str, ...]
    port: int | None
    start: float
    log: Path | None


class SweepStoppedError(Exception):
    """This sweep got SIGTERM or SIGINT (Ctrl-C); the runs it started were stopped."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


class Runner:
    """Starts a sweep's unfinished runs, `parallel` at once, each on free devices, and records each start and end.
    parallel=1 runs them one after another unpinned, their output on this terminal, as the sweep always did (and
    as a hostfile sweep runs)."""

    def __init__(self, state: SweepState, parallel: int | None = 1, logs: Path | None = None, gpu: bool = False):
        self.state, self.parallel, self.logs, self.gpu = state, parallel, logs, gpu
        self.plain = parallel == 1
        devices = [] if self.plain else (gpu_devices() if gpu else cpu_devices())
        if not self.plain and not devices:
            raise ConfigError("nvidia-smi -L lists no GPU" if gpu else "no CPU in this process's affinity mask")
        self.devices, self.pool = devices, DevicePool(devices)
        self.running: dict[str, Active] = {}

    def run(self, jobs: list[SweepJob], indices: dict[str, int] | None = None, total: int | None = None,
            poll_s: float = 0.2) -> list[str]:  # fmt: skip
        """Run `jobs` (each printed as run `indices[name]` of `total`); the names of those that failed. Raises
        SweepStoppedError on SIGTERM or SIGINT, after stopping the runs."""
        width = {j.name: 0 if self.plain else slot_width(j.ranks, self.parallel, len(self.devices), self.gpu)
                 for j in jobs}  # fmt: skip
        at_once = self.parallel or len(jobs)
        self.total = total or len(jobs)
        index = indices or {job.name: i for i, job in enumerate(jobs, 1)}
        pending, failed = list(jobs), []
        self.deferred = None
        previous = {sig: signal.signal(sig, self._on_stop_signal) for sig in STOP_SIGNALS}
        self.state.owned_by_this_process()
        self.state.save()
        try:
            while pending or self.running:
                for job in list(pending):
                    if len(self.running) >= at_once:
                        break
                    taken = () if self.plain else self.pool.take(width[job.name])
                    if taken is None:
                        continue  # wider than what is free now: a narrower one further on may fit
                    pending.remove(job)
                    self.deferred = 0  # a stop signal now waits until the run is recorded as running
                    self.running[job.name] = self._start(index[job.name], job, taken)
                    if self.deferred:
                        raise SweepStoppedError(self.deferred)
                    self.deferred = None
                for name, active in list(self.running.items()):
                    code = active.proc.wait() if self.plain else active.proc.poll()
                    if code is not None:
                        del self.running[name]
                        self.pool.give(active.devices)
                        self._ended(active, code)
                        failed += [name] if code else []
                if self.running:
                    time.sleep(poll_s)
        except SweepStoppedError:
            self._stop()
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return failed

    def _on_stop_signal(self, signum, frame):
        if self.deferred is None:
            raise SweepStoppedError(signum)
        self.deferred = signum

    def _start(self, index: int, job: SweepJob, devices: tuple[str, ...]) -> Active:
        port = None if self.plain else free_port({a.port for a in self.running.values()})
        prefix, env = pinning(devices, self.gpu)
        command = prefix + job.command(can_resume(job.run_dir), port)
        log = None if self.plain or self.logs is None else self.logs / f"{job.name}.log"
        self.state.started(job.name, log)
        head, out = f"[{index}/{self.total}] {job.name}", None
        if log is None:
            print(f"{head}: {shlex.join(command)}", flush=True)
        else:
            attempt = self.state.record(job.name).attempts
            where = f"{'GPU(s)' if self.gpu else 'core(s)'} {','.join(devices)}"
            print(f"{head}: start (attempt {attempt}) on {where}, log {log}", flush=True)
            log.parent.mkdir(parents=True, exist_ok=True)
            out = log.open("a")  # every attempt of a run goes to its one log, one after another
            out.write(f"# attempt {attempt}, {time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(command)}\n")
            out.flush()
        try:
            proc = subprocess.Popen(
                command, cwd=REPO, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT if out else None
            )
        finally:
            if out:
                out.close()  # the child holds its own copy
        return Active(index, job, proc, devices, port, time.monotonic(), log)

    def _ended(self, active: Active, code: int) -> None:
        self.state.ended(active.job.name, code)
        head, took = f"[{active.index}/{self.total}] {active.job.name}", f"{time.monotonic() - active.start:.0f} s"
        if code == 0:
            print(f"{head}: done in {took}", flush=True)
        else:
            where = f", log {active.log}" if active.log else ""
            print(f"{head}: failed (exit {code}) after {took}{where}", file=sys.stderr, flush=True)

    def _stop(self) -> None:
        """End the runs this sweep started, every process of each, and record them as pending: the next sweep
        resumes them from their latest checkpoint. Each process is signalled: on one node DeepSpeed's runner
        passes no signal on to deepspeed.launcher.launch and its ranks (runner.py does only under pdsh)."""
        import psutil  # a DeepSpeed requirement

        active = list(self.running.values())
        below = []  # the launch and the ranks under each run's launcher process (which is ours to wait for)
        for a in active:
            with contextlib.suppress(psutil.NoSuchProcess):
                below += psutil.Process(a.proc.pid).children(recursive=True)
        for process in below:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.terminate()
        for a in active:
            if a.proc.poll() is None:
                a.proc.terminate()
        _, alive = psutil.wait_procs(below, timeout=30)
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        for a in active:
            try:
                a.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                a.proc.kill()
                a.proc.wait()
            finished = run_finished(a.job.run_dir, a.job.max_steps)  # it may have ended as the signal came
            record = self.state.set(a.job.name, DONE if finished else PENDING)
            record.exit_code, record.finished = a.proc.returncode, now()
            if not finished:
                print(f"[{a.index}/{self.total}] {a.job.name}: stopped; the next sweep resumes it", file=sys.stderr)
        self.running.clear()
        self.state.save()
