"""A sweep is a YAML grid expanded by code into runs (recipes/scaling/*_grid.yaml):

    sweep: tiny-scaling                    # the W&B group of every run and the prefix of its name
    recipe: recipes/tiny.yaml
    ds_config: ds_configs/zero1.json
    sizes:                                 # named model shapes, the values of the `size` axis
      s: {model.d_model: 64, model.n_layers: 2}
    overrides: {train.max_steps: 20}       # every run
    grid:                                  # every combination of these
      gpus: [2]                            # rank count
      size: [s]
      moe.enabled: [false, true]
      moe.top_k: [1, 2]                    # any dotted recipe (or ds.) key
      moe.ep_size: [auto]                  # auto = the largest that divides the experts and the ranks

A run is a recipe, dotted overrides, a ds_config and a rank count; its name is made of the values that vary
(tiny-scaling-s-moe-k2). A dense run (moe.enabled false) ignores the moe.* axes, so it appears once. Every run goes
through the same resolve step a launch runs before anything starts, so a bad combination is one line naming the
run. Runs go to the real launcher (launch/pretrain_moe.sh) in sequence, over a DeepSpeed hostfile, or as SLURM
job arrays (launch/slurm_pretrain_moe.sbatch, one array per GPU count).
"""

from __future__ import annotations

import itertools
import math
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from moe.config import ConfigError, load_recipe, load_resolved
from moe.config.loader import from_dict

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = "launch/pretrain_moe.sh"
SLURM_LAUNCHER = "launch/slurm_pretrain_moe.sbatch"
SPECIAL_AXES = ("gpus", "size")
# short names of the usual axes in run names; any other key is named by its last part (optim.lr=0.001 -> lr0.001)
SHORT = {
    "moe.num_experts": "e",
    "moe.top_k": "k",
    "moe.capacity_factor": "cf",
    "moe.aux_loss_coef": "aux",
    "moe.ep_size": "ep",
    "gpus": "g",
    "size": "",
}


@dataclass
class SweepSpec:
    sweep: str
    recipe: str
    grid: dict
    ds_config: str = "ds_configs/zero1.json"
    sizes: dict = field(default_factory=dict)
    overrides: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Run:
    name: str
    recipe: str
    ds_config: str
    gpus: int
    overrides: tuple[str, ...]  # dotted key=value, run name and W&B group last

    def trainer_args(self) -> list[str]:
        return ["--recipe", self.recipe, "--ds_config", self.ds_config, *self.overrides]


def load_sweep(path: str | Path) -> SweepSpec:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    for key in ("sweep", "recipe", "grid"):
        if key not in raw:
            raise ConfigError(f"{path}: missing key '{key}' (a sweep needs sweep, recipe and grid)")
    spec = from_dict(SweepSpec, raw, where=str(path))
    if not re.fullmatch(r"[A-Za-z0-9._-]+", spec.sweep):
        raise ConfigError(f"{path}: sweep name {spec.sweep!r} may only hold letters, digits, '.', '_' and '-'")
    for axis, values in spec.grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: grid axis '{axis}' must be a non-empty list, got {values!r}")
    for size in spec.grid.get("size", []):
        if size not in spec.sizes:
            raise ConfigError(f"{path}: grid size '{size}' is not one of sizes: {', '.join(spec.sizes) or 'none'}")
    if any(not isinstance(g, int) or g < 1 for g in spec.grid.get("gpus", [1])):
        raise ConfigError(f"{path}: grid gpus must be positive integers, got {spec.grid['gpus']}")
    return spec


def expand(spec: SweepSpec, extra: list[str] = ()) -> list[Run]:
    """Every combination of the grid as a run, dense duplicates merged (validate() checks them)."""
    axes = list(spec.grid)
    varying = [a for a in axes if len(spec.grid[a]) > 1]
    runs: dict[str, Run] = {}
    for values in itertools.product(*(spec.grid[a] for a in axes)):
        point = dict(zip(axes, values))
        if point.get("moe.enabled") is False:  # a dense run: the moe.* axes mean nothing to it
            point = {k: v for k, v in point.items() if not k.startswith("moe.") or k == "moe.enabled"}
        gpus = point.pop("gpus", 1)
        size = point.pop("size", None)
        settings = {**spec.overrides, **(spec.sizes[size] if size else {}), **point}
        name = run_name(spec.sweep, {"gpus": gpus, "size": size, **point}, varying)
        if name in runs:
            continue
        settings = _auto_ep_size(settings, spec, gpus)
        overrides = [f"{k}={_yaml_value(v)}" for k, v in settings.items()] + list(extra)
        overrides += [f"logging.run_name={name}", f"logging.wandb_group={spec.sweep}"]
        runs[name] = Run(name, spec.recipe, spec.ds_config, gpus, tuple(overrides))
    return list(runs.values())


def run_name(sweep: str, point: dict, varying: list[str]) -> str:
    parts = [sweep]
    for axis in varying:
        if axis not in point or point[axis] is None:
            continue
        value = point[axis]
        if axis == "moe.enabled":
            parts.append("moe" if value else "dense")
            continue
        text = "-".join(map(_short_value, value)) if isinstance(value, list) else _short_value(value)
        parts.append(SHORT.get(axis, axis.rsplit(".", 1)[-1]) + text)
    return re.sub(r"[^A-Za-z0-9._-]", "_", "-".join(parts))


def _short_value(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value).lower()


def _yaml_value(value) -> str:
    """A value as the override parser reads it back (YAML flow style: true, 0.01, [4, 8])."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _auto_ep_size(settings: dict, spec: SweepSpec, gpus: int) -> dict:
    """moe.ep_size: auto -> the largest expert-parallel size that divides the experts and the ranks."""
    if settings.get("moe.ep_size") != "auto":
        return settings
    from moe.simulate.gpu_counts import expert_parallel_size

    recipe = load_recipe(
        REPO / spec.recipe, [f"{k}={_yaml_value(v)}" for k, v in settings.items() if k.startswith("moe.num_experts")]
    )
    experts = recipe.moe.num_experts
    largest = max(experts) if isinstance(experts, list) else experts
    return {**settings, "moe.ep_size": expert_parallel_size(largest, experts, gpus)}


def validate(runs: list[Run], cuda: bool) -> None:
    """The launch's own resolve step for every run, before any of them starts."""
    for run in runs:
        try:
            load_resolved(REPO / run.recipe, REPO / run.ds_config, list(run.overrides), run.gpus, cuda=cuda)
        except ConfigError as e:
            raise ConfigError(f"run {run.name}: {e}") from None


def local_command(run: Run) -> list[str]:
    return ["bash", LAUNCHER, "--num_gpus", str(run.gpus), *run.trainer_args()]


def hostfile_command(run: Run, hostfile: Path, slots_per_node: int, out: Path) -> list[str]:
    """The run on the first nodes of `hostfile` it needs: a hostfile of just those nodes is written under `out`."""
    nodes = math.ceil(run.gpus / slots_per_node)
    if run.gpus > slots_per_node and run.gpus % slots_per_node:
        raise ConfigError(f"run {run.name}: {run.gpus} GPUs do not fill whole nodes of {slots_per_node} slots")
    hosts = [host for host in (line.split("#", 1)[0].strip() for line in hostfile.read_text().splitlines()) if host]
    if nodes > len(hosts):
        raise ConfigError(f"run {run.name} needs {nodes} nodes; {hostfile} lists {len(hosts)}")
    subset = out / "hostfiles" / f"{nodes}nodes"
    subset.parent.mkdir(parents=True, exist_ok=True)
    subset.write_text("".join(h + "\n" for h in hosts[:nodes]))
    per_node = ["--num_gpus", str(run.gpus)] if run.gpus < slots_per_node else []
    return ["bash", LAUNCHER, "--hostfile", str(subset), *per_node, *run.trainer_args()]


def slurm_arrays(
    sweep: str, runs: list[Run], grid_path: str, extra: list[str], gpus_per_node: int, out: Path
) -> dict[Path, list[Run]]:
    """One job-array script per GPU count; task i re-expands the grid and starts the i-th run of that count."""
    arrays = {}
    for gpus in sorted({r.gpus for r in runs}):
        members = [r for r in runs if r.gpus == gpus]
        nodes, per_node = math.ceil(gpus / gpus_per_node), min(gpus, gpus_per_node)
        if gpus > gpus_per_node and gpus % gpus_per_node:
            raise ConfigError(f"{gpus} GPUs do not fill whole nodes of {gpus_per_node} GPUs")
        task = (
            shlex.join(["python", "launch/sweep.py", grid_path, "--slurm-task"])
            + ' "$SLURM_ARRAY_TASK_ID" '
            + shlex.join(["--gpus", str(gpus), *extra])
        )
        script = out / "slurm" / f"{sweep}_g{gpus}.sbatch"
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(
            "#!/usr/bin/env bash\n"
            f"#SBATCH --job-name={sweep}-g{gpus}\n"
            f"#SBATCH --array=0-{len(members) - 1}\n"
            f"#SBATCH --nodes={nodes}\n#SBATCH --ntasks-per-node=1\n#SBATCH --gpus-per-node={per_node}\n"
            "#SBATCH --exclusive\n#SBATCH --output=%x-%A_%a.out\n"
            f"# task i runs the i-th of these {len(members)} runs: " + ", ".join(r.name for r in members) + "\n"
            "set -euo pipefail\n"
            f"cd {shlex.quote(str(REPO))}\n"
            f"exec {task}\n"
        )
        arrays[script] = members
    return arrays


def slurm_task_command(runs: list[Run], gpus: int, index: int) -> list[str]:
    """What array task `index` of the `gpus`-GPU array runs: DeepSpeed's per-node launch through our sbatch."""
    members = [r for r in runs if r.gpus == gpus]
    if not 0 <= index < len(members):
        raise ConfigError(f"no run {index} among the {len(members)} runs of {gpus} GPUs")
    return ["bash", SLURM_LAUNCHER, *members[index].trainer_args()]


def _has_gpu() -> bool:
    """A GPU on this machine, checked as launch/slurm_pretrain_moe.sbatch does (without importing torch)."""
    import shutil
    import subprocess

    return (
        bool(shutil.which("nvidia-smi")) and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0
    )


def main(argv: list[str] | None = None) -> int:
    import argparse
    import os
    import subprocess

    p = argparse.ArgumentParser(
        prog="python launch/sweep.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("grid", help="recipes/scaling/<grid>.yaml")
    p.add_argument("--dry-run", action="store_true", help="check every run, print every command, start nothing")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--hostfile", type=Path, help="run each on the first nodes of this DeepSpeed hostfile")
    where.add_argument("--slurm", action="store_true", help="write one SLURM job array per GPU count and sbatch it")
    p.add_argument("--gpus-per-node", type=int, default=8, help="--slurm: GPUs per node (default 8)")
    p.add_argument("--out", type=Path, default=None, help="generated files (default runs/sweeps/<sweep>)")
    p.add_argument("--only", action="append", default=None, metavar="NAME", help="just this run (repeatable)")
    p.add_argument("--slurm-task", type=int, default=None, help=argparse.SUPPRESS)  # inside an array task
    p.add_argument("--gpus", type=int, default=None, help=argparse.SUPPRESS)  # with --slurm-task
    p.add_argument("overrides", nargs="*", metavar="key=value", help="added to every run")
    args = p.parse_intermixed_args(argv)  # overrides may come after options
    try:
        spec = load_sweep(args.grid)
        runs = expand(spec, args.overrides)
        if args.only:
            unknown = sorted(set(args.only) - {r.name for r in runs})
            if unknown:
                raise ConfigError(f"no run named {unknown[0]}; runs: {', '.join(r.name for r in runs)}")
            runs = [r for r in runs if r.name in args.only]
        if args.slurm_task is not None:
            command = slurm_task_command(runs, args.gpus, args.slurm_task)
            os.chdir(REPO)
            os.execvp(command[0], command)
        validate(runs, cuda=bool(args.hostfile or args.slurm) or _has_gpu())
        out = args.out or REPO / "runs" / "sweeps" / spec.sweep
        if args.slurm:
            grid = str(Path(args.grid).resolve())  # the array tasks read it from the repository root
            arrays = slurm_arrays(spec.sweep, runs, grid, args.overrides, args.gpus_per_node, out)
            commands = [
                (f"array {script.stem} ({len(members)} tasks)", ["sbatch", str(script)])
                for script, members in arrays.items()
            ]
        elif args.hostfile:
            from moe.launch.launcher import hostfile_slots

            if not args.hostfile.is_file():
                raise ConfigError(f"hostfile not found: {args.hostfile}")
            slots = min(hostfile_slots(str(args.hostfile)))
            commands = [(run.name, hostfile_command(run, args.hostfile, slots, out)) for run in runs]
        else:
            commands = [(run.name, local_command(run)) for run in runs]
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"sweep {spec.sweep}: {len(runs)} runs, W&B group {spec.sweep}")
    if args.slurm:
        for gpus in sorted({r.gpus for r in runs}):
            for i, run in enumerate(r for r in runs if r.gpus == gpus):
                print(f"  {spec.sweep}_g{gpus} task {i}: {run.name}: {shlex.join(slurm_task_command(runs, gpus, i))}")
    for i, (label, command) in enumerate(commands):
        print(f"[{i + 1}/{len(commands)}] {label}: {shlex.join(command)}", flush=True)
        if args.dry_run:
            continue
        if subprocess.run(command, cwd=REPO).returncode:
            print(f"error: {label} failed; what comes after it did not start", file=sys.stderr)
            return 1
    return 0
