"""launch/sweep.py expands a YAML grid into validated runs and starts them (moe/scaling/sweep.py)."""

import os
import re
import shlex
import subprocess

import pytest
import yaml

from tests.helpers import REPO, run
from tests.scaling.conftest import RUN

SWEEP_CLI = ["python", str(REPO / "launch" / "sweep.py")]


def _dry_run(*args):
    proc = run([*SWEEP_CLI, *args, "--dry-run"], timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _commands(stdout: str) -> dict[str, list[str]]:
    """{run name: command} from the '[i/N] name: command' lines of a dry run."""
    out = {}
    for line in stdout.splitlines():
        if re.match(r"\[\d+/\d+\] ", line):  # not a library's log line, which may start with "[" too
            label, command = line.split(": ", 1)
            out[label.split("] ", 1)[1]] = shlex.split(command)
    return out


def _overrides(command: list[str]) -> dict[str, str]:
    return dict(a.split("=", 1) for a in command if "=" in a and not a.startswith("-"))


def test_tiny_grid_expands_into_one_dense_run_and_two_moe_runs_per_size():
    commands = _commands(_dry_run("recipes/scaling/tiny_grid.yaml"))
    expected = {f"tiny-scaling-{size}-{kind}" for size in ("xs", "s", "m") for kind in ("dense", "moe-k1", "moe-k2")}
    assert set(commands) == expected
    sizes = {"xs": ("32", "2"), "s": ("64", "2"), "m": ("96", "4")}
    for name, command in commands.items():
        assert command[:4] == ["bash", "launch/pretrain_moe.sh", "--num_gpus", "2"]
        assert command[4:8] == ["--recipe", "recipes/tiny.yaml", "--ds_config", "ds_configs/zero1.json"]
        o = _overrides(command)
        assert (o["logging.run_name"], o["logging.wandb_group"], o["logging.wandb"]) == (name, "tiny-scaling", "true")
        size = name.split("-")[2]
        assert (o["model.d_model"], o["model.n_layers"]) == sizes[size]
        if name.endswith("dense"):
            assert o["moe.enabled"] == "false" and "moe.top_k" not in o and "moe.num_experts" not in o
        else:
            assert o["moe.enabled"] == "true" and o["moe.top_k"] == name[-1] and o["moe.ep_size"] == "2"
            assert (o["moe.num_experts"], o["moe.capacity_factor"], o["moe.aux_loss_coef"]) == ("4", "1.5", "0.01")


def test_paper_grid_becomes_one_slurm_array_per_gpu_count(tmp_path):
    stdout = _dry_run("recipes/scaling/dsmoe_paper_grid.yaml", "--slurm", "--out", str(tmp_path))
    scripts = sorted((tmp_path / "slurm").glob("*.sbatch"))
    assert [s.name for s in scripts] == ["dsmoe-paper_g128.sbatch", "dsmoe-paper_g64.sbatch"]
    for script, nodes in zip(scripts, (16, 8)):
        text = script.read_text()
        assert "#SBATCH --array=0-9\n" in text and f"#SBATCH --nodes={nodes}\n" in text
        assert "#SBATCH --gpus-per-node=8\n" in text and '--slurm-task "$SLURM_ARRAY_TASK_ID"' in text
        assert "#SBATCH --requeue\n" in text  # a preempted task comes back and resumes its run
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
        assert f"sbatch {script}" in stdout
    tasks = [line for line in stdout.splitlines() if " task " in line]
    assert len(tasks) == 20 and all("launch/slurm_pretrain_moe.sbatch" in t for t in tasks)
    # auto expert parallelism: 128 experts on 64 GPUs -> 64, on 128 GPUs -> 128
    e128 = {line.split(": ")[1]: line for line in tasks if "-e128-k1" in line}
    assert "moe.ep_size=64" in e128["dsmoe-paper-g64-1.3b-moe-e128-k1"]
    assert "moe.ep_size=128" in e128["dsmoe-paper-g128-1.3b-moe-e128-k1"]


def test_an_array_task_starts_its_run_through_the_slurm_launcher(tmp_path):
    """What task 4 of the tiny grid's 2-GPU array executes: our sbatch in DRY_RUN mode, on a fake 1-node allocation
    (its preflight checks the run; DRY_RUN prints the node's DeepSpeed command instead of starting it)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho node0\n")
    (bin_dir / "scontrol").chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "DRY_RUN": "1",
        "SLURM_JOB_NODELIST": "node0",
        "SLURM_NNODES": "1",
        "SLURM_GPUS_ON_NODE": "2",
    }
    proc = run(
        [
            *SWEEP_CLI,
            "recipes/scaling/tiny_grid.yaml",
            "--slurm-task",
            "4",
            "--gpus",
            "2",
            f"logging.runs_dir={tmp_path / 'runs'}",
        ],
        timeout=120,
        **env,
    )
    assert proc.returncode == 0, proc.stderr
    (node,) = [line for line in proc.stdout.splitlines() if line.startswith("node ")]
    assert "deepspeed.launcher.launch" in node and "logging.run_name=tiny-scaling-s-moe-k1" in node
    assert not (tmp_path / "runs").exists()


def test_hostfile_runs_get_a_hostfile_of_just_the_nodes_they_need(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("".join(f"node{i} slots=8\n" for i in range(16)))
    commands = _commands(
        _dry_run("recipes/scaling/dsmoe_paper_grid.yaml", "--hostfile", str(hostfile), "--out", str(tmp_path / "out"))
    )
    assert len(commands) == 20
    for name, command in commands.items():
        nodes = 8 if "-g64-" in name else 16
        subset = command[command.index("--hostfile") + 1]
        assert subset == str(tmp_path / "out" / "hostfiles" / f"{nodes}nodes")
        assert (tmp_path / "out" / "hostfiles" / f"{nodes}nodes").read_text().splitlines()[
            -1
        ] == f"node{nodes - 1} slots=8"


def test_a_list_of_grids_is_the_union_of_their_runs(tmp_path):
    from moe.config import ConfigError
    from moe.scaling.sweep import expand, load_sweep

    path = tmp_path / "union.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "sweep": "u",
                "recipe": "recipes/tiny.yaml",
                "overrides": {"moe.ep_size": 1},
                "grid": [
                    {"moe.enabled": [False]},
                    {"moe.enabled": [False], "model.d_ff": [512]},
                    {"moe.enabled": [True, False], "moe.num_experts": [4, 8]},  # its dense point is the first grid's
                    {"moe.enabled": [True], "moe.num_experts": [8], "moe.top_k": [2], "moe.expert_d_ff": [64]}
                    | {"overrides": {"optim.lr": 0.001}},  # fixed for this grid's runs, not in their names
                ],
            },
            sort_keys=False,
        )
    )
    runs = {r.name: dict(o.split("=", 1) for o in r.overrides) for r in expand(load_sweep(path))}
    assert list(runs) == ["u-dense", "u-dense-d_ff512", "u-moe-e4", "u-moe-e8", "u-moe-e8-k2-expert_d_ff64"]
    assert runs["u-dense-d_ff512"]["model.d_ff"] == "512" and "model.d_ff" not in runs["u-dense"]
    assert runs["u-moe-e8-k2-expert_d_ff64"]["moe.top_k"] == "2" and runs["u-moe-e8"].get("moe.top_k") is None
    assert runs["u-moe-e8-k2-expert_d_ff64"]["optim.lr"] == "0.001" and "optim.lr" not in runs["u-moe-e8"]
    clash = [{"moe.enabled": [False]}, {"moe.enabled": [False], "overrides": {"optim.lr": 0.001}}]
    path.write_text(yaml.safe_dump({"sweep": "u", "recipe": "recipes/tiny.yaml", "grid": clash}))
    with pytest.raises(ConfigError, match="two runs of the sweep are named u but differ"):
        expand(load_sweep(path))
    path.write_text(yaml.safe_dump({"sweep": "u", "recipe": "recipes/tiny.yaml", "grid": [{"moe.top_k": 2}]}))
    proc = run([*SWEEP_CLI, str(path), "--dry-run"], timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"error: {path}: grid axis 'moe.top_k' must be a non-empty list, got 2"
    )


def test_a_bad_grid_point_is_one_line_before_anything_starts(tmp_path):
    grid = yaml.safe_load((REPO / "recipes/scaling/tiny_grid.yaml").read_text())
    grid["grid"]["moe.top_k"] = [2, 5]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    proc = run([*SWEEP_CLI, str(path), f"logging.runs_dir={tmp_path / 'runs'}"], timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: run tiny-scaling-xs-moe-k5: moe.top_k=5 must be between 1 and moe.num_experts=4"
    )
    assert proc.stdout == "" and not (tmp_path / "runs").exists()


def test_sweep_run_trains_with_its_name_and_wandb_group(sweep_run):
    proc, run_dir = sweep_run
    assert f"[1/1] {RUN}: bash launch/pretrain_moe.sh --num_gpus 2" in proc.stdout
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert recipe["logging"]["run_name"] == RUN and recipe["logging"]["wandb_group"] == "tiny-scaling"
    assert (recipe["moe"]["top_k"], recipe["model"]["d_model"], recipe["train"]["max_steps"]) == (2, 64, 4)
    offline = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 1 and b"tiny-scaling" in offline[0].read_bytes()  # the W&B run records its group
