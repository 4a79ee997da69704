"""Two "nodes" on this one machine: the per-node commands of launch/slurm_pretrain_moe.sbatch (one
`python -m deepspeed.launcher.launch --node_rank N` each, a shared master address and port, world info
{"node0": [0], "node1": [0]}) train the tiny recipe, and their losses equal a single-node 2-rank run's.

The nodes share this machine's filesystem (run folder, data cache), as a cluster's nodes share theirs. SLURM itself is
faked only to print the commands (see tests/launch/test_slurm.py); the commands and the training are real.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import BASH_RUN_STEPS, REPO, TINY, child_env, explain, free_port, read_metrics, run
from tests.launch.test_slurm import SBATCH, fake_slurm, launcher_args, node_commands

pytestmark = pytest.mark.e2e
REL_TOL = 1e-6


def losses(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    lines = read_metrics(run_dir)
    return {key: [(m["step"], m[key]) for m in lines if key in m] for key in ("loss", "val_loss")}


def test_two_nodes_match_one_node_with_two_ranks(bash_run, tmp_path):
    """The one-node reference is the shared `bash_run`: the same tiny recipe and steps on 2 ranks of one node."""
    runs = tmp_path / "two_nodes"
    env = fake_slurm(
        tmp_path,
        ["node0", "node1"],
        gpus_per_node=1,
        DRY_RUN="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
    )
    dry = run(["bash", str(SBATCH), *TINY, f"logging.runs_dir={runs}"], timeout=60, **env)
    assert dry.returncode == 0, explain(dry)
    commands = node_commands(dry.stdout)
    assert [launcher_args(commands[n][1])["node_rank"] for n in (0, 1)] == ["0", "1"]
    nodes = [
        subprocess.Popen(
            ["bash", "-c", commands[n][1]],
            cwd=REPO,
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for n in (0, 1)
    ]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    for node, output in zip(nodes, outputs):
        assert node.returncode == 0, output[-6000:]
    assert "dist_world_size=2" in outputs[0] and "nnodes=2, num_local_procs=1, node_rank=1" in outputs[1]

    one, two = losses(bash_run[1]), losses(runs / "tiny")
    assert [s for s, _ in two["loss"]] == list(range(1, BASH_RUN_STEPS + 1)) and len(two["val_loss"]) >= 2
    for key in ("loss", "val_loss"):
        assert [s for s, _ in two[key]] == [s for s, _ in one[key]]
        for (step, a), (_, b) in zip(two[key], one[key]):
            assert abs(a - b) <= REL_TOL * abs(b), f"{key} at step {step}: two nodes {a}, one node {b}"
