"""launch/slurm_pretrain_moe.sbatch under a faked SLURM allocation.

There is no SLURM here: `scontrol` and `srun` are stand-ins on PATH (scontrol expands the node list to the hosts the
test chose; srun records how it was called) and the SLURM_* variables are set as sbatch sets them. Everything else is
real: the script, its preflight, and the per-node commands it prints (tests/launch/test_multinode.py runs them).
"""

from __future__ import annotations

import base64
import json
import os
import shlex
from pathlib import Path

import pytest

from tests.helpers import REPO, explain, run

pytestmark = pytest.mark.e2e
SBATCH = REPO / "launch" / "slurm_pretrain_moe.sbatch"
FAKE_SCONTROL = """#!/usr/bin/env bash
if [[ "$1" == requeue ]]; then echo "$*" >> "$FAKE_SCONTROL_LOG"; exit 0; fi
[[ "$1 $2" == "show hostnames" && "$3" == "$SLURM_JOB_NODELIST" ]] || { echo "scontrol: unexpected $*" >&2; exit 1; }
printf '%s\\n' $FAKE_HOSTS
"""
FAKE_SRUN = """#!/usr/bin/env bash
printf '%s\\n' "MOE_SLURM_NODE_TASK=$MOE_SLURM_NODE_TASK" "$@" > "$FAKE_SRUN_LOG"
exit "${FAKE_SRUN_EXIT:-0}"
"""


def fake_slurm(tmp_path: Path, hosts: list[str], gpus_per_node: int, **extra: str) -> dict:
    """Environment of an sbatch job on `hosts`, with stand-in scontrol and srun first on PATH."""
    bin_dir = tmp_path / "fake_slurm_bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("scontrol", FAKE_SCONTROL), ("srun", FAKE_SRUN)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": "fake-nodelist",
        "FAKE_HOSTS": " ".join(hosts),
        "SLURM_NNODES": str(len(hosts)),
        "SLURM_GPUS_ON_NODE": str(gpus_per_node),
        "SLURM_JOB_ID": "4242",
        "SLURM_SUBMIT_DIR": str(REPO),
        "FAKE_SRUN_LOG": str(tmp_path / "srun.log"),
        "FAKE_SCONTROL_LOG": str(tmp_path / "scontrol.log"),
        "MASTER_ADDR": "",
        "MASTER_PORT": "",
        **extra,
    }  # empty = unset: the script derives them


def node_commands(stdout: str) -> dict[int, tuple[str, str]]:
    """{node rank: (host, shell command)} from the dry run's `node R (HOST): COMMAND` lines."""
    out = {}
    for line in stdout.splitlines():
        if line.startswith("node "):
            head, command = line.split(": ", 1)
            rank, host = head[len("node ") :].split(" ", 1)
            out[int(rank)] = (host.strip("()"), command)
    return out


def launcher_args(command: str) -> dict:
    """The deepspeed.launcher.launch options and the rank script's arguments of one node's command."""
    words = shlex.split(command.split(" && ", 1)[1])
    start, script = words.index("deepspeed.launcher.launch") + 1, words.index(str(REPO / "launch" / "pretrain_moe.sh"))
    options = dict(word[2:].split("=", 1) for word in words[start:script])
    return {**options, "script_args": words[script + 1 :]}


TRAINER_ARGS = [
    "--recipe",
    "recipes/tiny.yaml",
    "--ds_config",
    "ds_configs/zero2.json",
    "moe.top_k=1",
    "logging.run_name=slurm run",
]


def test_dry_run_prints_one_launcher_per_node_with_the_same_master_and_world(tmp_path):
    hosts = ["gpu-a01", "gpu-a02", "gpu-b17"]
    env = fake_slurm(tmp_path, hosts, gpus_per_node=4, DRY_RUN="1")
    proc = run(["bash", str(SBATCH), *TRAINER_ARGS, f"logging.runs_dir={tmp_path}"], timeout=60, **env)
    assert proc.returncode == 0, explain(proc)
    assert "on 12 ranks" in proc.stdout  # the preflight checked the whole job: 3 nodes x 4 GPUs
    commands = node_commands(proc.stdout)
    assert sorted(commands) == [0, 1, 2] and [commands[i][0] for i in range(3)] == hosts
    for rank, (_, command) in commands.items():
        args = launcher_args(command)
        assert args["node_rank"] == str(rank)
        assert args["master_addr"] == "gpu-a01" and args["master_port"] == str(29500 + 4242 % 1000)
        world = json.loads(base64.urlsafe_b64decode(args["world_info"]))
        assert list(world) == hosts and all(ids == [0, 1, 2, 3] for ids in world.values())  # rank order = host order
        assert args["script_args"] == [*TRAINER_ARGS, f"logging.runs_dir={tmp_path}"]  # passed through, one word each
    assert not (tmp_path / "srun.log").exists()  # a dry run starts nothing


def test_the_job_starts_one_srun_task_per_node_that_runs_the_printed_command(tmp_path):
    hosts = ["gpu-a01", "gpu-a02"]
    args = [*TRAINER_ARGS, f"logging.runs_dir={tmp_path}"]
    dry = run(["bash", str(SBATCH), *args], timeout=60, **fake_slurm(tmp_path, hosts, 2, DRY_RUN="1"))
    job = run(["bash", str(SBATCH), *args], timeout=60, **fake_slurm(tmp_path, hosts, 2))
    assert dry.returncode == 0 and job.returncode == 0, explain(dry) + explain(job)
    srun = (tmp_path / "srun.log").read_text().splitlines()
    assert srun == [
        "MOE_SLURM_NODE_TASK=1",
        "--nodes=2",
        "--ntasks-per-node=1",
        "--kill-on-bad-exit=1",
        "bash",
        str(SBATCH),
        *args,
    ]
    # what srun's task on node 1 then executes (PYTHON=echo prints it instead of starting DeepSpeed's launcher)
    task_env = {
        **fake_slurm(tmp_path, hosts, 2),
        "MOE_SLURM_NODE_TASK": "1",
        "SLURM_NODEID": "1",
        "PYTHON": "echo",
        "MASTER_ADDR": "gpu-a01",
        "MASTER_PORT": str(29500 + 4242 % 1000),
        "MOE_WORLD_INFO": launcher_args(node_commands(dry.stdout)[1][1])["world_info"],
    }
    task = run(["bash", str(SBATCH), *args], timeout=60, **task_env)
    printed = shlex.split(node_commands(dry.stdout)[1][1].split(" && ", 1)[1])
    assert task.returncode == 0 and task.stdout.strip() == " ".join(printed[1:]), explain(task)


def test_missing_gpu_count_is_one_line_before_anything_starts(tmp_path):
    env = fake_slurm(tmp_path, ["gpu-a01"], gpus_per_node=1)
    env["SLURM_GPUS_ON_NODE"] = ""
    proc = run(["bash", str(SBATCH), "--recipe", "recipes/tiny.yaml"], timeout=60, **env)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: ") and "GPUs per node" in proc.stderr
    assert not (tmp_path / "srun.log").exists()


def test_bad_config_stops_the_job_before_srun(tmp_path):
    env = fake_slurm(tmp_path, ["gpu-a01", "gpu-a02"], gpus_per_node=1)
    proc = run(["bash", str(SBATCH), "--recipe", "recipes/tiny.yaml", "moe.num_experts=3"], timeout=60, **env)
    assert proc.returncode != 0 and "error: moe.num_experts=3 is not divisible" in proc.stderr, explain(proc)
    assert not (tmp_path / "srun.log").exists()


def test_a_failed_job_requeues_itself_and_resumes_and_the_same_failure_twice_does_not(tmp_path):
    """srun's exit code is the job's (a stand-in srun fails here); a requeue is SLURM_RESTART_COUNT + 1."""
    hosts, args = ["gpu-a01", "gpu-a02"], [*TRAINER_ARGS, f"logging.runs_dir={tmp_path}"]
    first = run(["bash", str(SBATCH), *args], timeout=60, **fake_slurm(tmp_path, hosts, 2, FAKE_SRUN_EXIT="1"))
    assert first.returncode == 1 and "restart 1/3: requeueing job 4242" in first.stdout, explain(first)
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"
    assert first.stderr.count("error: ") == 1 and "before any rank started" in first.stderr, explain(first)

    ckpt = tmp_path / "slurm run" / "checkpoints"  # the first attempt had saved global_step5 before it failed
    (ckpt / "global_step5").mkdir(parents=True)
    (ckpt / "global_step5" / "COMPLETE").write_text("")
    (ckpt / "latest").write_text("global_step5")
    requeued = fake_slurm(tmp_path, hosts, 2, SLURM_RESTART_COUNT="1", DRY_RUN="1")
    dry = run(["bash", str(SBATCH), *args], timeout=60, **requeued)
    assert dry.returncode == 0, explain(dry)
    assert all(launcher_args(c)["script_args"] == [*args, "--resume"] for _, c in node_commands(dry.stdout).values())

    again = run(["bash", str(SBATCH), *args], timeout=60, **{**requeued, "DRY_RUN": "0", "FAKE_SRUN_EXIT": "1"})
    assert again.returncode == 1 and "error: not requeueing: the same failure at the same step twice" in again.stderr
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n", explain(again)  # no second requeue


def test_a_config_error_inside_the_job_is_not_requeued(tmp_path):
    env = fake_slurm(tmp_path, ["gpu-a01"], 2, FAKE_SRUN_EXIT="2")
    proc = run(["bash", str(SBATCH), *TRAINER_ARGS, f"logging.runs_dir={tmp_path}"], timeout=60, **env)
    assert proc.returncode == 2 and "not requeueing: a config error" in proc.stderr, explain(proc)
    assert not (tmp_path / "scontrol.log").exists()
