"""The records a rank leaves of how it ended, its parent's view of the exit, the one line the launcher prints from
them, and the restart rules: real processes, real signals (the whole-job versions are in test_launcher.py)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

from moe.launch.job_end import Ending, explain, signal_of
from moe.launch.rank_record import RankRecord, ranks_dir, read_records
from moe.launch.restarts import no_restart, resumable
from moe.train.watchdog import Progress
from tests.helpers import child_env

RANK_BODY = """
import os, signal, sys, threading, time
from pathlib import Path
from moe.launch.rank_parent import run_with_parent

def main():
    from moe.launch.rank_record import RankRecord
    from moe.train.watchdog import Progress
    progress = Progress()
    record = RankRecord(Path(sys.argv[1]), int(os.environ["RANK"]), progress)
    record.start()
    progress.report("forward", 7)
    print(os.getpid(), flush=True)
    {action}

run_with_parent(main)
"""


def start_rank(run_dir, action: str, rank: int = 0) -> subprocess.Popen:
    code = RANK_BODY.format(action=textwrap.indent(action, "    ").strip())
    env = child_env(RANK=str(rank))
    return subprocess.Popen([sys.executable, "-c", code, str(run_dir)], env=env, stdout=subprocess.PIPE, text=True)


def test_a_sigkilled_rank_is_named_with_its_signal_by_its_parent(tmp_path):
    proc = start_rank(tmp_path, "os.kill(os.getpid(), signal.SIGKILL)", rank=1)
    child_pid = int(proc.stdout.readline())
    assert proc.wait(timeout=60) == -signal.SIGKILL  # the parent ends the way the rank did: the launcher sees -9
    record = read_records(tmp_path)[1]
    assert record["pid"] == child_pid and record["signal"] == "SIGKILL" and record["status"] == "running"
    line = explain(tmp_path, 247, world_size=1).line
    assert line.startswith(f"rank 1 (pid {child_pid} on ") and "was killed by SIGKILL" in line, line


def test_a_rank_terminated_while_blocked_in_c_leaves_its_stacks(tmp_path):
    """The launcher's SIGTERM reaches a rank blocked in native code (here a lock wait; in a job, a collective):
    faulthandler writes the stacks from the signal handler, then the default action ends the process."""
    proc = start_rank(tmp_path, "threading.Event().wait()")
    child_pid = int(proc.stdout.readline())
    time.sleep(0.5)
    os.kill(child_pid, signal.SIGTERM)
    assert proc.wait(timeout=60) == -signal.SIGTERM
    record = read_records(tmp_path)[0]
    assert record["signal"] == "SIGTERM" and record["sigterm"].startswith(("Thread", "Current thread"))
    assert "in main" in (ranks_dir(tmp_path) / "rank0.sigterm").read_text()


def test_a_rank_exit_code_passes_through_its_parent(tmp_path):
    proc = start_rank(tmp_path, "sys.exit(5)")
    assert proc.wait(timeout=60) == 5
    assert read_records(tmp_path)[0]["exit_code"] == 5


def test_the_rank_that_hung_outside_a_collective_is_named_before_the_ones_waiting_for_it(tmp_path):
    ranks = {}
    ranks_dir(tmp_path).mkdir(parents=True)
    for rank, phase in ((0, "forward"), (1, "data"), (2, "forward")):
        progress = Progress()
        ranks[rank] = RankRecord(tmp_path, rank, progress)
        ranks[rank].fields = {"rank": rank, "pid": 100 + rank, "host": "h"}  # start() would take over this process
        progress.report(phase, 3)
        ranks[rank].end("hung", 3, f"rank {rank} made no progress")
    ending = explain(tmp_path, 3, world_size=3)
    assert ending.line == "rank 1 made no progress; the other ranks: 2 hung after it" and ending.cause[:2] == (
        "hung",
        1,
    )


def test_signal_of_reads_deepspeed_launcher_exit_codes():
    assert signal_of(247) == "SIGKILL" and signal_of(-9) == "SIGKILL" and signal_of(241) == "SIGTERM"
    assert signal_of(1) is None and signal_of(3) is None and signal_of(0) is None


def test_a_restart_resumes_only_when_there_is_a_complete_checkpoint(tmp_path):
    cmd = ["runner", "recipes/pretrain_moe.py", "train.max_steps=9"]
    assert resumable(cmd, tmp_path, attempt=1) == cmd  # failed before its first checkpoint: start over
    tag = tmp_path / "checkpoints" / "global_step5"
    tag.mkdir(parents=True)
    (tag.parent / "latest").write_text("global_step5")
    assert resumable(cmd, tmp_path, attempt=1) == cmd  # not committed (no COMPLETE): still nothing to resume
    (tag / "COMPLETE").write_text("")
    assert resumable(cmd, tmp_path, attempt=0) == cmd and resumable(cmd, tmp_path, attempt=1) == [*cmd, "--resume"]


def test_a_restart_is_refused_for_a_config_error_or_the_same_failure_twice():
    nan_stop = Ending(None, ("failed", 4, 8, "2 steps in a row skipped ..."))
    killed = Ending("rank 1 ... was killed by SIGKILL", ("killed", 1, "was killed by SIGKILL", "after step 6"))
    assert no_restart(2, killed, None) and no_restart(1, Ending(None, ("failed", 2, 0, "bad")), None)
    assert no_restart(4, nan_stop, None) is None and no_restart(247, killed, nan_stop) is None
    assert no_restart(4, nan_stop, nan_stop) == "the same failure at the same step twice"
