"""Test helpers: real subprocesses with a free port and a timeout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from moe.launch.build_locks import clear_stale_build_locks
from moe.parallel import free_port

REPO = Path(__file__).resolve().parent.parent
LAUNCHER = REPO / "launch" / "pretrain_moe.sh"


# the tiny recipe's corpus and tokenizer (cached once per session), for the tests that run the bigger recipes
SMALL_DATA = ("data.max_documents=600", "data.val_fraction=0.1", "data.vocab_size=1024")
BASH_RUN_STEPS = 20  # the shared launcher run (tests/conftest.py `bash_run`)
# fp32 (not the launcher's bf16 default): the launcher tests compare these runs with fp32 references and exports
TINY = ("--recipe", "recipes/tiny.yaml", "--ds_config", "ds_configs/zero1.json", f"train.max_steps={BASH_RUN_STEPS}",
        "logging.progress_bar=false")  # fmt: skip


def child_env(**extra: str) -> dict:
    """The environment of a spawned process: one thread per rank (2 ranks on the 2-core CI machine), Python's
    tracebacks of every thread should it abort or crash in native code (faulthandler), and a free rendezvous port.
    `moe` comes from the editable install (requirements.txt), `tests` from the repository root, the child's working
    directory."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("PYTHONFAULTHANDLER", "1")
    env["MASTER_PORT"] = str(free_port())
    env.update(extra)
    return env


def run(cmd: list[str], timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """`cmd` run to the end, its output captured. On a timeout (or an interrupt) its whole process group is killed,
    a launcher and the ranks it started alike (subprocess.run kills only the first), and the JIT build locks they
    may have held are cleared (moe/launch/build_locks.py): a killed rank must not hang the tests after it."""
    with subprocess.Popen(
        cmd,
        cwd=REPO,
        env=child_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            clear_stale_build_locks(older_than_s=0)
            raise
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def launch_bash(*args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return run(["bash", str(LAUNCHER), *args], timeout=timeout, **env)


def launch_deepspeed(*args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    deepspeed_cli = Path(sys.executable).parent / "deepspeed"
    return run([str(deepspeed_cli), str(LAUNCHER), *args], timeout=timeout, **env)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"


def snapshot(folder: Path) -> dict:
    """Every file under `folder` with its bytes: equal snapshots mean nothing was touched."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
