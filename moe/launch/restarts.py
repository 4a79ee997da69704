"""The launcher's supervision of a job: run DeepSpeed's runner, say in one line why a failed attempt ended
(moe/launch/job_end.py), and restart it from the latest complete checkpoint up to `--max_restarts` times.

A restart waits a backoff first (`--restart_backoff_s`, doubled each time, at most 5 minutes), adds `--resume` when
the run has a complete checkpoint, and tells the ranks its number and cause (RESTART_ENV, RESTART_REASON_ENV):
rank 0 logs them to metrics.jsonl and the W&B run's summary, and the W&B run continues (its id is in the checkpoint). A
deterministic failure is not restarted: a config error (exit code 2), or the same failure at the same step twice
(the same NaN stop, the same kill or crash at the same point).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from moe.checkpoint.metadata import latest_tag
from moe.config.args import RESTART_ENV, RESTART_REASON_ENV
from moe.launch.job_end import Ending, explain, last_logged_step
from moe.launch.rank_record import SUPERVISED_ENV, ranks_dir

CONFIG_ERROR = 2
JOB_END = "job_end.json"
MAX_BACKOFF_S = 300.0


def supervise(cmd: list[str], run_dir: Path, world_size: int, max_restarts: int = 0, backoff_s: float = 10.0) -> int:
    """Run `cmd` (DeepSpeed's runner; its last arguments are the trainer's) until it succeeds, fails in a way a
    restart cannot mend, or the restarts are used up; its last exit code."""
    previous: Ending | None = None
    for attempt in range(max_restarts + 1):
        env = {SUPERVISED_ENV: "1", RESTART_ENV: str(attempt)}
        if previous:
            env[RESTART_REASON_ENV] = previous.line or " ".join(map(str, previous.cause))
        returncode, stopped_by = run_attempt(resumable(cmd, run_dir, attempt), ranks_dir(run_dir, attempt), env)
        ending = explain(run_dir, returncode, world_size, attempt)
        if ending and ending.exit_code:  # the failing rank's code, not whichever rank DeepSpeed's launcher saw first
            returncode = ending.exit_code
        write_job_end(run_dir, attempt, returncode, ending)
        if ending is None:
            return 0
        if ending.line:
            print(f"error: {ending.line}", file=sys.stderr, flush=True)
        refusal = f"the job was stopped by {stopped_by}" if stopped_by else no_restart(returncode, ending, previous)
        if refusal or attempt == max_restarts:
            if max_restarts:
                why = refusal or f"all {max_restarts} restart(s) used"
                print(f"error: not restarting: {why}; the checkpoints are as they were", file=sys.stderr, flush=True)
            return returncode
        wait = min(MAX_BACKOFF_S, backoff_s * 2**attempt)
        tag = latest_tag(run_dir)
        print(f"restart {attempt + 1}/{max_restarts} in {wait:g} s, from {tag or 'the start'}", flush=True)
        time.sleep(wait)
        previous = ending
    return returncode


def no_restart(returncode: int, ending: Ending, previous: Ending | None) -> str | None:
    """Why a restart cannot help, or None."""
    if returncode == CONFIG_ERROR or ending.cause[:2] == ("failed", CONFIG_ERROR):
        return "a config error fails the same way every time"
    if previous is not None and previous.cause == ending.cause:
        return "the same failure at the same step twice"
    return None


def resumable(cmd: list[str], run_dir: Path, attempt: int) -> list[str]:
    """A restart resumes from the latest complete checkpoint; one before the first checkpoint starts over."""
    if attempt == 0 or "--resume" in cmd or not latest_tag(run_dir):
        return cmd
    return [*cmd, "--resume"]


def run_attempt(cmd: list[str], records: Path, env: dict) -> tuple[int, str | None]:
    """One attempt of the job: (its exit code, the signal that stopped it from outside, if one did). A scheduler's
    SIGTERM, a kill of this process or Ctrl-C goes to the whole job, and then nothing restarts it.

    A SIGTERM goes to every process of the job: DeepSpeed's local runner does not pass it on
    (deepspeed/launcher/runner.py handles it for pdsh only), so a SIGTERM to the runner alone would leave its
    launch.py and the ranks training as orphans. Ctrl-C reaches them all already (they share the terminal's
    process group), so SIGINT is only noted."""
    import psutil  # a dependency of DeepSpeed's launcher

    shutil.rmtree(records, ignore_errors=True)  # an earlier job's attempt of the same number
    child = subprocess.Popen(cmd, env={**os.environ, **env})
    stopped_by = []

    def forward(signum, _frame):
        stopped_by.append(signal.Signals(signum).name)
        if signum == signal.SIGTERM:
            with contextlib.suppress(psutil.Error):
                for process in [psutil.Process(child.pid), *psutil.Process(child.pid).children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        process.send_signal(signum)

    handlers = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        returncode = child.wait()
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
    return (returncode if returncode >= 0 else 128 - returncode), (stopped_by[0] if stopped_by else None)


def write_job_end(run_dir: Path, attempt: int, returncode: int, ending: Ending | None) -> None:
    """The attempt's end beside its ranks' records: exit code, line, cause, when (the time to detect a dead rank
    is this minus its parent's `exited_at`) and the last step in metrics.jsonl (a restart then rewinds it)."""
    records = ranks_dir(run_dir, attempt)
    records.mkdir(parents=True, exist_ok=True)
    end = {"exit_code": returncode, "ended": time.time()}
    end["last_logged_step"] = last_logged_step(Path(run_dir) / "metrics.jsonl")
    if ending:
        end.update(line=ending.line, cause=list(ending.cause))
    (records / JOB_END).write_text(json.dumps(end) + "\n")


def read_job_end(records: Path) -> Ending | None:
    try:
        end = json.loads((records / JOB_END).read_text())
    except (OSError, ValueError):
        return None
    return Ending(end.get("line"), tuple(end["cause"])) if "cause" in end else None


def main(argv: list[str] | None = None) -> int:
    """For launch/slurm_pretrain_moe.sbatch, whose requeue is the restart under SLURM:
    `resume-flag [trainer args]` prints `--resume` when the run has a complete checkpoint to continue from;
    `after-failure --exit_code RC --attempt K --world_size N [trainer args]` prints the line that says why attempt K
    ended and exits 0 when a requeue can help (not a config error, not the cause of attempt K-1 again)."""
    import argparse

    from moe.config import ConfigError, load_resolved
    from moe.config.args import trainer_parser

    parser = argparse.ArgumentParser(prog="python -m moe.launch.restarts")
    parser.add_argument("action", choices=["resume-flag", "after-failure"])
    parser.add_argument("--exit_code", type=int, default=1)
    parser.add_argument("--attempt", type=int, default=0)
    parser.add_argument("--world_size", type=int, default=1)
    ours, rest = parser.parse_known_args(argv)
    args = trainer_parser().parse_args(rest)
    try:
        run_dir = load_resolved(args.recipe, args.ds_config, args.overrides, ours.world_size).run_dir
    except ConfigError as e:  # resume-flag runs before the preflight, which says it in its own line
        if ours.action == "after-failure":
            print(f"error: {e}", file=sys.stderr)
        return 2
    if ours.action == "resume-flag":
        if latest_tag(run_dir) and not args.resume:
            print("--resume")
        return 0
    ending = explain(run_dir, ours.exit_code, ours.world_size, ours.attempt)
    write_job_end(run_dir, ours.attempt, ours.exit_code, ending)
    if ending and ending.line:
        print(f"error: {ending.line}", file=sys.stderr, flush=True)
    previous = read_job_end(ranks_dir(run_dir, ours.attempt - 1)) if ours.attempt else None
    refusal = no_restart(ours.exit_code, ending, previous) if ending else None
    if refusal:
        print(f"error: not requeueing: {refusal}; the checkpoints are as they were", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
