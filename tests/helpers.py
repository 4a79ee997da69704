"""Test helpers: real subprocesses with a free port and a timeout."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from moe.parallel import free_port

REPO = Path(__file__).resolve().parent.parent
LAUNCHER = REPO / "launch" / "pretrain_moe.sh"


def child_env(**extra: str) -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["MASTER_PORT"] = str(free_port())
    env.update(extra)
    return env


def run(cmd: list[str], timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(**env), capture_output=True, text=True, timeout=timeout)
    return proc


def launch_bash(*args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return run(["bash", str(LAUNCHER), *args], timeout=timeout, **env)


def launch_deepspeed(*args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    deepspeed_cli = Path(sys.executable).parent / "deepspeed"
    return run([str(deepspeed_cli), str(LAUNCHER), *args], timeout=timeout, **env)


def run_distributed(script: Path, *args: str, ranks: int = 2, timeout: float = 600) -> subprocess.CompletedProcess:
    """Start `script` on `ranks` gloo ranks through DeepSpeed's real launcher."""
    port = free_port()
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(ranks), "--master_port", str(port),
           str(script), *args]
    return run(cmd, timeout=timeout)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"


def snapshot(folder: Path) -> dict:
    """Every file under `folder` with its bytes: equal snapshots mean nothing was touched."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def interrupted_copy(runs_dir: Path, source: str, name: str, last_step: int, saved_step: int) -> None:
    """runs_dir/<name>: a copy of runs_dir/<source> as if its job had died right after the step-`saved_step`
    checkpoint (the final step-`last_step` one removed; metrics past `saved_step` are dropped on resume)."""
    src, dst = runs_dir / source, runs_dir / name
    shutil.copytree(src, dst)
    shutil.rmtree(dst / "checkpoints" / f"global_step{last_step}")
    (dst / "checkpoints" / "latest").write_text(f"global_step{saved_step}")
