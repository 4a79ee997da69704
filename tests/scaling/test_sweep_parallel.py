"""A parallel sweep that is stopped and started again (moe/scaling/sweep_runner.py), with real runs: two
single-rank tiny runs at once, one per core; SIGTERM to the sweep process once the short run has finished and the
long one has a checkpoint (the sweep must end every process of its runs); --status on what is left; then the same
command again, beside an uninterrupted reference of the long run. Two run start-ups in turn: 50-70 s on 2 cores."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import yaml

from moe.checkpoint.metadata import latest_tag, tag_step
from moe.scaling.run_folder import run_finished
from moe.scaling.sweep import expand, load_sweep
from moe.scaling.sweep_status import format_tokens
from tests.helpers import LAUNCHER, REPO, child_env, explain, read_metrics, run

SHORT, LONG = "resume-max_steps8", "resume-max_steps64"
GRID = {
    "sweep": "resume",
    "recipe": "recipes/tiny.yaml",
    "ds_config": "ds_configs/zero1.json",
    "overrides": {
        "moe.ep_size": 1,
        "train.save_interval": 8,
        "train.eval_interval": 32,
        "train.warmup_steps": 1,
        "logging.progress_bar": False,
    },
    "grid": {"gpus": [1], "train.max_steps": [8, 64]},
}
RANK_LINE = re.compile(r"rank 0: 1 thread\(s\) on core\(s\) ([\d,]+)")


def sweep_cli(grid, runs, *args: str, cores: str | None = None) -> list[str]:
    pin = ["taskset", "-c", cores] if cores else []
    return [*pin, sys.executable, str(REPO / "launch/sweep.py"), str(grid), *args, f"logging.runs_dir={runs}"]


def train_losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir) if "tokens_per_s" in r]


def last_val_loss(run_dir) -> float:
    return [r["val_loss"] for r in read_metrics(run_dir) if "val_loss" in r][-1]


def stop_when(proc: subprocess.Popen, ready, timeout: float) -> int:
    """SIGTERM the sweep process `proc` alone (as `kill PID` or a job scheduler does) once `ready()` holds; its
    exit code. Whatever is left of its process group (its launchers and their ranks) is then SIGKILLed."""
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, "the sweep ended before it could be stopped"
            assert time.monotonic() < deadline, "no checkpoint to stop the sweep at in time"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        left = processes_under(proc.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):  # an empty group: nothing was left
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not left, f"the stopped sweep left these running: {left}"
    return code


def processes_under(group: int) -> list[str]:
    """Command lines of the processes still in process group `group` (the sweep's launchers and ranks)."""
    import psutil

    left = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if process.pid != group and os.getpgid(process.pid) == group:
                left.append(" ".join(process.info["cmdline"] or [])[:200])
    return left


def test_a_stopped_parallel_sweep_resumes_to_the_uninterrupted_result(tmp_path):
    cores = [str(c) for c in sorted(os.sched_getaffinity(0))]
    assert len(cores) >= 2, "the test runs two runs side by side"
    grid, runs, reference = tmp_path / "grid.yaml", tmp_path / "runs", tmp_path / "reference"
    grid.write_text(yaml.safe_dump(GRID, sort_keys=False))
    sweep_dir = runs / "sweeps" / "resume"
    short_dir, long_dir = runs / SHORT, runs / LONG

    # 1. Both runs at once, each on its own core; the sweep stopped while the long run trains past a checkpoint.
    with (tmp_path / "first.out").open("w") as out:
        first = subprocess.Popen(sweep_cli(grid, runs, "--parallel", "2"), cwd=REPO, env=child_env(), stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        code = stop_when(first, lambda: run_finished(short_dir) and latest_tag(long_dir) is not None, timeout=300)
    printed = (tmp_path / "first.out").read_text()
    assert code == 128 + signal.SIGTERM and f"{LONG}: stopped; the next sweep resumes it" in printed, printed
    assert not run_finished(long_dir), "the long run finished before the stop: make it longer"
    starts = [m.start() for m in re.finditer(r": start \(attempt 1\) on core\(s\) ", printed)]
    first_end = printed.find(": done in ")  # -1: stopped before the sweep saw the short run end
    assert len(starts) == 2 and (first_end == -1 or max(starts) < first_end), printed  # both started at once
    pinned = {name: RANK_LINE.findall((sweep_dir / "logs" / f"{name}.log").read_text()) for name in (SHORT, LONG)}
    assert len(pinned[SHORT]) == len(pinned[LONG]) == 1 and pinned[SHORT] != pinned[LONG], pinned  # 2 cores
    stopped_at = tag_step(latest_tag(long_dir))

    # 2. --status: the short run done, the long one stopped part-way.
    status = run(sweep_cli(grid, runs, "--status"), timeout=120)
    assert status.returncode == 0, explain(status)
    rows = {line.split()[0]: line.split() for line in status.stdout.splitlines()[1:]}
    done = json.loads((short_dir / "done.json").read_text())
    assert rows[SHORT] == [SHORT, "done", "8/8", format_tokens(done["tokens"]), f"{done['val_loss']:.3f}", "-"]
    state, step = rows[LONG][1], int(rows[LONG][2].split("/")[0])
    assert state == "stopped" and rows[LONG][2].endswith("/64") and stopped_at <= step < 64, status.stdout

    # 3. The same command again on one core, beside an uninterrupted reference of the long run on the other.
    (long_run,) = [r for r in expand(load_sweep(grid), [f"logging.runs_dir={reference}"]) if r.name == LONG]
    with (tmp_path / "reference.out").open("w") as out:
        ref = subprocess.Popen(["taskset", "-c", cores[1], "bash", str(LAUNCHER), "--num_gpus", "1",
                                *long_run.trainer_args()], cwd=REPO, env=child_env(), stdout=out,
                               stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            again = run(sweep_cli(grid, runs, "--parallel", "auto", cores=cores[0]), timeout=240)
            assert ref.wait(timeout=240) == 0, (tmp_path / "reference.out").read_text()[-4000:]
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(ref.pid, signal.SIGKILL)
    assert again.returncode == 0, explain(again)
    assert f"[1/2] {SHORT}: finished ({short_dir}), skipped" in again.stdout
    assert f"[2/2] {LONG}: start (attempt 2) on core(s) {cores[0]}" in again.stdout
    log = (sweep_dir / "logs" / f"{LONG}.log").read_text()
    assert f"resumed from global_step{stopped_at}" in log and "--resume" in log.split("# attempt 2", 1)[1]

    # The state file: the finished run was not started again; the stopped one twice.
    recorded = json.loads((sweep_dir / "state.json").read_text())["runs"]
    assert {n: (r["state"], r["attempts"]) for n, r in recorded.items()} == {SHORT: ("done", 1), LONG: ("done", 2)}
    # --resume restores everything: every step's loss and the last validation are exactly the reference's.
    reference_dir = reference / LONG
    assert train_losses(long_dir) == train_losses(reference_dir) and len(train_losses(long_dir)) == 64
    assert last_val_loss(long_dir) == last_val_loss(reference_dir)
    assert json.loads((long_dir / "done.json").read_text()) == json.loads((reference_dir / "done.json").read_text())
