"""What `launch/pretrain_moe.sh` does, run either way:

- `bash launch/pretrain_moe.sh [args]`: check everything (preflight), then start DeepSpeed's runner with
  recipes/pretrain_moe.py on NUM_GPUS ranks per node (NUM_NODES nodes, or a HOSTFILE).
- `deepspeed launch/pretrain_moe.sh [args]`: the runner already started one Python process per rank on this
  file; each one runs recipes/pretrain_moe.py. On a machine with no GPU the runner starts a single rank; that
  rank widens the job to NUM_GPUS ranks (default 2) through the path above, unless NUM_GPUS=1.

Launcher settings come from arguments (--num_gpus, --num_nodes, --hostfile, --master_port, --master_addr) or
from the environment (NUM_GPUS, NUM_NODES, HOSTFILE, MASTER_PORT, MASTER_ADDR); arguments win.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
from pathlib import Path

from moe.config import ConfigError
from moe.config.args import DEFAULT_DS_CONFIG, DEFAULT_RECIPE, parse_trainer_args
from moe.launch.build_locks import clear_and_report
from moe.launch.env_vars import PORTS, check_env_vars, env_int
from moe.launch.preflight import preflight
from moe.launch.restarts import supervise

REPO = Path(__file__).resolve().parents[2]  # the checkout this package is installed from (pip install -e .)
TRAINER = REPO / "recipes" / "pretrain_moe.py"
RANK_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_SIZE", "CROSS_RANK", "CROSS_SIZE", "MASTER_ADDR")
CPU_DEFAULT_RANKS = 2


def launcher_parser() -> argparse.ArgumentParser:
    """The launcher's settings; defaults from the environment, each variable parsed with a message naming it."""
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    env = os.environ.get
    p.add_argument("--num_gpus", type=int, default=env_int("NUM_GPUS", 0, lo=0) or None)
    p.add_argument("--num_nodes", type=int, default=env_int("NUM_NODES", 1, lo=1))
    p.add_argument("--hostfile", default=env("HOSTFILE") or None)
    p.add_argument("--master_port", type=int, default=env_int("MASTER_PORT", 29500, *PORTS))
    p.add_argument("--master_addr", default=env("MASTER_ADDR") or None)
    p.add_argument("--max_restarts", type=int, default=env_int("MAX_RESTARTS", 0, lo=0))
    p.add_argument("--restart_backoff_s", type=float, default=10.0)
    return p


def parse_launcher_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """(launcher settings, the trainer's arguments), or one ConfigError."""
    launch, trainer_argv = launcher_parser().parse_known_args(argv)
    for name, value, lo, hi in (
        ("--num_gpus", launch.num_gpus, 1, None),
        ("--num_nodes", launch.num_nodes, 1, None),
        ("--master_port", launch.master_port, *PORTS),
        ("--max_restarts", launch.max_restarts, 0, None),
        ("--restart_backoff_s", launch.restart_backoff_s, 0, None),
    ):
        if value is not None and (value < lo or (hi is not None and value > hi)):
            raise ConfigError(f"{name}={value} must be {f'between {lo} and {hi}' if hi else f'at least {lo}'}")
    return launch, trainer_argv


def main(argv: list[str]) -> None:
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        if _lone_cpu_rank():
            for key in RANK_ENV:  # this process becomes the launcher of a wider job
                os.environ.pop(key, None)
            argv = [a for a in argv if not a.startswith("--local_rank")]
            return spawn(argv)
        sys.argv = [str(TRAINER)] + with_defaults(argv)
        runpy.run_path(str(TRAINER), run_name="__main__")
        return
    spawn(argv)


def _lone_cpu_rank() -> bool:
    if os.environ.get("WORLD_SIZE") != "1" or os.environ.get("NUM_GPUS"):
        return False
    return not cuda_device_count()


# Where a GPU driver shows itself: NVIDIA's kernel module, AMD's ROCm compute device.
GPU_DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/kfd")


def cuda_device_count() -> int:
    """torch's count of CUDA (or ROCm) devices, without importing torch (3 s) on a machine with no GPU driver: a bad
    input on a CPU machine is then refused in about a second."""
    if not any(Path(f).exists() for f in GPU_DRIVER_FILES):
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def with_defaults(argv: list[str]) -> list[str]:
    out = list(argv)
    if not any(a == "--recipe" or a.startswith("--recipe=") for a in argv):
        out = ["--recipe", DEFAULT_RECIPE] + out
    if not any(a == "--ds_config" or a.startswith("--ds_config=") for a in argv):
        out = ["--ds_config", DEFAULT_DS_CONFIG] + out
    return out


def hostfile_slots(path: str) -> list[int]:
    slots = []
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            fields = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
            slots.append(int(fields.get("slots", 1)))
    return slots


def spawn(argv: list[str]) -> None:
    try:
        launch, trainer_argv = parse_launcher_args(argv)
        check_env_vars()
    except ConfigError as e:
        _fail(str(e))
    trainer_argv = with_defaults(trainer_argv)
    devices = cuda_device_count()
    cuda = devices > 0
    gpus = launch.num_gpus or (devices if cuda else CPU_DEFAULT_RANKS)
    nodes = launch.num_nodes
    if launch.hostfile:
        if not Path(launch.hostfile).is_file():
            _fail(f"hostfile not found: {launch.hostfile}")
        slots = hostfile_slots(launch.hostfile)[:nodes] if nodes > 1 else hostfile_slots(launch.hostfile)
        world_size = gpus * len(slots) if launch.num_gpus else sum(slots)
    else:
        world_size = gpus * nodes

    try:
        resolved = preflight(parse_trainer_args(trainer_argv), world_size, cuda)
        prepare_shards(resolved)
    except ConfigError as e:
        _fail(str(e))
    clear_and_report("launch")  # a stale one would hang every rank at its first op load

    cmd = [sys.executable, "-u", "-m", "deepspeed.launcher.runner", "--master_port", str(launch.master_port)]
    if launch.hostfile:
        cmd += ["--hostfile", launch.hostfile]
        if nodes > 1:
            cmd += ["--num_nodes", str(nodes)]
        if launch.num_gpus:
            cmd += ["--num_gpus", str(gpus)]
        if launch.master_addr:
            cmd += ["--master_addr", launch.master_addr]
    else:
        if nodes > 1:
            _fail(f"NUM_NODES={nodes} needs a HOSTFILE listing the nodes")
        cmd += local_device_args(gpus, cuda)
    cmd += [str(TRAINER)] + trainer_argv
    print(f"launch: {world_size} rank(s): {' '.join(cmd[3:])}", flush=True)
    sys.exit(supervise(cmd, resolved.run_dir, world_size, launch.max_restarts, launch.restart_backoff_s))


def prepare_shards(resolved) -> None:
    """Tokenize the run's data here, before any rank exists, when its shards are missing (every core of this
    host); then check them all (checksums, the run's tokenizer and sequence length, one global batch of tokens)."""
    from moe.data.prepare import check_shards, describe, plan, prepare_data
    from moe.data.shards import ShardError

    data = resolved.recipe.data
    try:
        shards = plan(data)
        if shards.missing():
            print(f"data: preparing {', '.join(shards.missing())} before the ranks start", flush=True)
            print(f"data: {describe(prepare_data(data, log=print), data.seq_len)}", flush=True)
        check_shards(shards, resolved.global_batch_tokens, full=True)
    except (ShardError, ValueError, OSError) as e:
        raise ConfigError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None


def local_device_args(gpus: int, cuda: bool) -> list[str]:
    """The runner's device arguments for a job on this node. Under CUDA_VISIBLE_DEVICES (a parallel sweep's run on
    its GPUs) they are `--include localhost:<those GPUs>`: with --num_gpus DeepSpeed's runner drops the variable and
    numbers its ranks' GPUs from 0 (deepspeed/launcher/runner.py, "ignoring it because ... --num_gpus")."""
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if cuda and visible:
        return ["--include", "localhost:" + ",".join(visible[:gpus])]
    return ["--num_gpus", str(gpus)]


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)
