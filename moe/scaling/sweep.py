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

`grid` may also be a list of such mappings: the sweep is then the union of their runs (a study of runs that are not
one product: a dense baseline, a wider dense model, MoE at several expert counts; recipes/scaling/cpu_study.yaml).
A mapping of that list may hold `overrides` of its own, fixed for its runs and not part of their names (a learning
rate per model family).

A run is a recipe, dotted overrides, a ds_config and a rank count; its name is made of the values that vary
(tiny-scaling-s-moe-k2). A dense run (moe.enabled false) ignores the moe.* axes, so it appears once. Every run goes
through the same resolve step a launch runs before anything starts, so a bad combination is one line naming the
run. Runs go to the real launcher (launch/pretrain_moe.sh) in sequence, several at once on this machine
(--parallel N|auto, moe/scaling/sweep_runner.py), over a DeepSpeed hostfile, or as SLURM job arrays
(launch/slurm_pretrain_moe.sbatch, one array per GPU count, requeued tasks resume).

A sweep survives being stopped: the same command again skips the runs whose folder is finished and resumes the
others from their latest checkpoint (moe/scaling/run_folder.py); <runs_dir>/sweeps/<sweep>/state.json records what
each attempt did (moe/scaling/sweep_state.py), and --status prints each run's progress (moe/scaling/sweep_status.py).
Each distinct data set is tokenized once before the runs start (moe/scaling/sweep_data.py).
"""

from __future__ import annotations

import itertools
import math
import re
import shlex
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import yaml

from moe.config import ConfigError, Resolved, load_recipe, load_resolved
from moe.config.loader import from_dict
from moe.scaling.run_folder import can_resume, run_finished
from moe.scaling.sweep_data import prepare_data
from moe.scaling.sweep_runner import Runner, SweepJob, SweepStoppedError, parse_parallel
from moe.scaling.sweep_state import DONE, SweepState
from moe.scaling.sweep_status import format_table, run_status

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = "launch/pretrain_moe.sh"
SLURM_LAUNCHER = "launch/slurm_pretrain_moe.sbatch"
STATE_FILE = "state.json"  # under the sweep's out folder (moe/scaling/sweep_state.py)
SPECIAL_AXES = ("gpus", "size")
GRID_OVERRIDES = "overrides"  # in a list of grids: one grid's fixed settings, not an axis
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
    grid: dict | list[dict]  # one product of axes, or a list of them (their union)
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

    def trainer_args(self, resume: bool = False) -> list[str]:
        return ["--recipe", self.recipe, "--ds_config", self.ds_config, *(["--resume"] * resume), *self.overrides]


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
    if isinstance(spec.grid, list) and (not spec.grid or not all(isinstance(g, dict) for g in spec.grid)):
        raise ConfigError(f"{path}: grid must be a mapping of axes or a non-empty list of them, got {spec.grid!r}")
    for grid in grids(spec):
        _check_grid(grid, spec, path)
    return spec


def _check_grid(grid: dict, spec: SweepSpec, path: Path) -> None:
    if GRID_OVERRIDES in grid and (not isinstance(grid[GRID_OVERRIDES], dict) or not isinstance(spec.grid, list)):
        raise ConfigError(f"{path}: '{GRID_OVERRIDES}' inside a grid must be a mapping, in a list of grids")
    for axis, values in axes_of(grid).items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: grid axis '{axis}' must be a non-empty list, got {values!r}")
    for size in grid.get("size", []):
        if size not in spec.sizes:
            raise ConfigError(f"{path}: grid size '{size}' is not one of sizes: {', '.join(spec.sizes) or 'none'}")
    if any(not isinstance(g, int) or g < 1 for g in grid.get("gpus", [1])):
        raise ConfigError(f"{path}: grid gpus must be positive integers, got {grid['gpus']}")


def axes_of(grid: dict) -> dict:
    """A grid's axes: every key but its own fixed overrides."""
    return {axis: values for axis, values in grid.items() if axis != GRID_OVERRIDES}


def grids(spec: SweepSpec) -> list[dict]:
    """The sweep's products of axes: its one grid, or each of its list."""
    return spec.grid if isinstance(spec.grid, list) else [spec.grid]


def varying_axes(spec: SweepSpec) -> list[str]:
    """The axes that take more than one value over the whole sweep (they name its runs), in first-seen order."""
    values: dict[str, set] = {}
    for grid in grids(spec):
        for axis, axis_values in axes_of(grid).items():
            values.setdefault(axis, set()).update(map(_yaml_value, axis_values))
    # an axis that only some of the grids set tells their runs apart, even with one value
    return [a for a, seen in values.items() if len(seen) > 1 or any(a not in axes_of(g) for g in grids(spec))]


def expand(spec: SweepSpec, extra: list[str] = ()) -> list[Run]:
    """Every combination of each grid as a run, duplicates (dense runs, runs two grids share) merged; validate()
    checks them."""
    varying = varying_axes(spec)
    runs: dict[str, Run] = {}
    for grid in grids(spec):
        axes, fixed = axes_of(grid), grid.get(GRID_OVERRIDES, {})
        for values in itertools.product(*axes.values()):
            _add_run(runs, spec, dict(zip(axes, values)), varying, extra, fixed)
    return list(runs.values())


def _add_run(
    runs: dict[str, Run], spec: SweepSpec, point: dict, varying: list[str], extra: list[str], fixed: dict
) -> None:
    if point.get("moe.enabled") is False:  # a dense run: the moe.* axes mean nothing to it
        point = {k: v for k, v in point.items() if not k.startswith("moe.") or k == "moe.enabled"}
    gpus = point.pop("gpus", 1)
    size = point.pop("size", None)
    settings = {**spec.overrides, **fixed, **(spec.sizes[size] if size else {}), **point}
    name = run_name(spec.sweep, {"gpus": gpus, "size": size, **point}, varying)
    settings = _auto_ep_size(settings, spec, gpus)
    overrides = [f"{k}={_yaml_value(v)}" for k, v in settings.items()] + list(extra)
    overrides += [f"logging.run_name={name}", f"logging.wandb_group={spec.sweep}"]
    run = Run(name, spec.recipe, spec.ds_config, gpus, tuple(overrides))
    if name in runs and sorted(runs[name].overrides) != sorted(run.overrides):  # two grids, one name
        raise ConfigError(f"two runs of the sweep are named {name} but differ; give one of them an axis that names it")
    runs.setdefault(name, run)


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


def validate(runs: list[Run], cuda: bool) -> dict[str, Resolved]:
    """The launch's own resolve step for every run, before any of them starts; each run's resolved config."""
    resolved = {}
    for run in runs:
        try:
            resolved[run.name] = resolve_run(run, cuda)
        except ConfigError as e:
            raise ConfigError(f"run {run.name}: {e}") from None
    return resolved


def resolve_run(run: Run, cuda: bool) -> Resolved:
    return load_resolved(REPO / run.recipe, REPO / run.ds_config, list(run.overrides), run.gpus, cuda=cuda)


def run_dir(resolved: Resolved) -> Path:
    """The run folder, from the repository root (where the launcher starts) when logging.runs_dir is relative."""
    return REPO / resolved.run_dir


def local_command(run: Run, resume: bool = False, master_port: int | None = None) -> list[str]:
    port = ["--master_port", str(master_port)] if master_port else []
    return ["bash", LAUNCHER, "--num_gpus", str(run.gpus), *port, *run.trainer_args(resume)]


def hostfile_command(run: Run, hostfile: Path, slots_per_node: int, out: Path, resume: bool = False) -> list[str]:
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
    return ["bash", LAUNCHER, "--hostfile", str(subset), *per_node, *run.trainer_args(resume)]


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
            "#SBATCH --exclusive\n#SBATCH --requeue\n#SBATCH --output=%x-%A_%a.out\n"
            f"# task i runs the i-th of these {len(members)} runs: " + ", ".join(r.name for r in members) + "\n"
            "set -euo pipefail\n"
            f"cd {shlex.quote(str(REPO))}\n"
            f"exec {task}\n"
        )
        arrays[script] = members
    return arrays


def slurm_task_run(runs: list[Run], gpus: int, index: int) -> Run:
    members = [r for r in runs if r.gpus == gpus]
    if not 0 <= index < len(members):
        raise ConfigError(f"no run {index} among the {len(members)} runs of {gpus} GPUs")
    return members[index]


def slurm_task_command(
    runs: list[Run], gpus: int, index: int, folder: Path | None = None, max_steps: int | None = None
) -> list[str] | None:
    """What array task `index` of the `gpus`-GPU array runs: DeepSpeed's per-node launch through our sbatch. Given
    the run's folder `folder`: None when the run there is finished (at `max_steps`), and --resume when it holds a
    checkpoint, so a requeued (or resubmitted) task continues its run."""
    run = slurm_task_run(runs, gpus, index)
    if folder is not None and run_finished(folder, max_steps):
        return None
    return ["bash", SLURM_LAUNCHER, *run.trainer_args(resume=folder is not None and can_resume(folder))]


def _has_gpu() -> bool:
    """A GPU on this machine, checked as launch/slurm_pretrain_moe.sbatch does (without importing torch)."""
    import shutil
    import subprocess

    return (
        bool(shutil.which("nvidia-smi")) and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0
    )


def parser():
    import argparse

    p = argparse.ArgumentParser(
        prog="python launch/sweep.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("grid", help="recipes/scaling/<grid>.yaml")
    p.add_argument("--dry-run", action="store_true", help="check every run, print every command, start nothing")
    p.add_argument("--status", action="store_true", help="print each run's state, step, tokens, val loss and ETA")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--parallel", default="1", metavar="N|auto", help="runs at once here, each on its own cores or GPUs (default 1)"
    )
    where.add_argument("--hostfile", type=Path, help="run each on the first nodes of this DeepSpeed hostfile")
    where.add_argument("--slurm", action="store_true", help="write one SLURM job array per GPU count and sbatch it")
    p.add_argument("--gpus-per-node", type=int, default=8, help="--slurm: GPUs per node (default 8)")
    p.add_argument("--out", type=Path, default=None, help="state, logs, scripts (default <runs_dir>/sweeps/<sweep>)")
    p.add_argument("--only", action="append", default=None, metavar="NAME", help="just this run (repeatable)")
    p.add_argument("--slurm-task", type=int, default=None, help=argparse.SUPPRESS)  # inside an array task
    p.add_argument("--gpus", type=int, default=None, help=argparse.SUPPRESS)  # with --slurm-task
    p.add_argument("overrides", nargs="*", metavar="key=value", help="added to every run")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_intermixed_args(argv)  # overrides may come after options
    try:
        spec = load_sweep(args.grid)
        runs = select(expand(spec, args.overrides), args.only)
        if args.slurm_task is not None:
            return slurm_task(runs, args.gpus, args.slurm_task)
        parallel = parse_parallel(args.parallel)
        resolved = validate(runs, cuda=bool(args.hostfile or args.slurm) or _has_gpu())
        out = args.out or sweep_folder(spec, resolved)
        state = SweepState.load(out / STATE_FILE, spec.sweep)
        if args.status:
            print(status_table(runs, resolved, state))
            return 0
        if args.slurm:
            return submit_slurm(spec, runs, args, out)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return run_here(spec, runs, resolved, state, args, parallel, out)


def sweep_folder(spec: SweepSpec, resolved: dict[str, Resolved]) -> Path:
    """<logging.runs_dir>/sweeps/<sweep> (runs/sweeps/<sweep> by default): the state file, the logs, the
    generated hostfiles and array scripts."""
    runs_dir = next(iter(resolved.values())).recipe.logging.runs_dir if resolved else "runs"
    return REPO / runs_dir / "sweeps" / spec.sweep


def select(runs: list[Run], only: list[str] | None) -> list[Run]:
    if not only:
        return runs
    unknown = sorted(set(only) - {r.name for r in runs})
    if unknown:
        raise ConfigError(f"no run named {unknown[0]}; runs: {', '.join(r.name for r in runs)}")
    return [r for r in runs if r.name in only]


def slurm_task(runs: list[Run], gpus: int, index: int) -> int:
    """Inside array task `index`: exec the run's launch, resumed when its folder holds a checkpoint; nothing (exit
    0) when it is finished."""
    import os

    resolved = resolve_run(slurm_task_run(runs, gpus, index), cuda=True)
    command = slurm_task_command(runs, gpus, index, run_dir(resolved), resolved.recipe.train.max_steps)
    if command is None:
        print(f"{resolved.recipe.logging.run_name}: finished ({run_dir(resolved)}), nothing to do", flush=True)
        return 0
    os.chdir(REPO)
    os.execvp(command[0], command)


def status_table(runs: list[Run], resolved: dict[str, Resolved], state: SweepState) -> str:
    alive = state.writer_alive()
    rows = [
        run_status(
            run.name,
            run_dir(resolved[run.name]),
            resolved[run.name].recipe.train.max_steps,
            resolved[run.name].global_batch_tokens,
            state.runs.get(run.name),
            alive,
        )
        for run in runs
    ]
    return format_table(rows)


def submit_slurm(spec: SweepSpec, runs: list[Run], args, out: Path) -> int:
    import subprocess

    grid = str(Path(args.grid).resolve())  # the array tasks read it from the repository root
    arrays = slurm_arrays(spec.sweep, runs, grid, args.overrides, args.gpus_per_node, out)
    print(f"sweep {spec.sweep}: {len(runs)} runs, W&B group {spec.sweep}")
    for gpus in sorted({r.gpus for r in runs}):
        for i, run in enumerate(r for r in runs if r.gpus == gpus):
            print(f"  {spec.sweep}_g{gpus} task {i}: {run.name}: {shlex.join(slurm_task_command(runs, gpus, i))}")
    for i, (script, members) in enumerate(arrays.items()):
        command = ["sbatch", str(script)]
        print(f"[{i + 1}/{len(arrays)}] array {script.stem} ({len(members)} tasks): {shlex.join(command)}", flush=True)
        if not args.dry_run and subprocess.run(command, cwd=REPO).returncode:
            print(f"error: sbatch {script} failed; the arrays after it were not submitted", file=sys.stderr)
            return 1
    return 0


def run_here(spec, runs, resolved, state, args, parallel, out: Path) -> int:
    """Start the unfinished runs on this machine (or over the hostfile), skipping the finished ones; 1 if any
    failed, 128 + the signal if this sweep was stopped."""
    try:
        commands = job_commands(runs, args.hostfile, out)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"sweep {spec.sweep}: {len(runs)} runs, W&B group {spec.sweep}")
    jobs = []
    for i, run in enumerate(runs, 1):
        folder, max_steps = run_dir(resolved[run.name]), resolved[run.name].recipe.train.max_steps
        if run_finished(folder, max_steps):
            state.set(run.name, DONE)
            print(f"[{i}/{len(runs)}] {run.name}: finished ({folder}), skipped", flush=True)
            continue
        jobs.append((i, SweepJob(run.name, run.gpus, folder, commands[run.name], max_steps)))
    if args.dry_run:
        for i, job in jobs:
            print(f"[{i}/{len(runs)}] {job.name}: {shlex.join(job.command(can_resume(job.run_dir), None))}")
        return 0
    logs = None if parallel == 1 else out / "logs"
    fresh = {job.name for _, job in jobs if not can_resume(job.run_dir)}  # a resumed run has its data already
    if not prepare_data([r for r in runs if r.name in fresh], REPO, logs):
        return 1
    try:
        runner = Runner(state, parallel, logs, gpu=not args.hostfile and _has_gpu())
        failed = runner.run([job for _, job in jobs], {job.name: i for i, job in jobs}, total=len(runs))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SweepStoppedError as e:
        return 128 + e.signum
    done = len(runs) - len(failed)
    print(f"sweep {spec.sweep}: {done}/{len(runs)} runs done" + (f", failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def job_commands(runs: list[Run], hostfile: Path | None, out: Path) -> dict:
    """Each run's (resume, master port) -> launcher command, locally or on the first nodes of `hostfile`."""
    if not hostfile:
        return {run.name: partial(local_command, run) for run in runs}
    from moe.launch.launcher import hostfile_slots

    if not hostfile.is_file():
        raise ConfigError(f"hostfile not found: {hostfile}")
    slots = min(hostfile_slots(str(hostfile)))
    for run in runs:
        hostfile_command(run, hostfile, slots, out)  # every run's nodes checked before any starts
    return {run.name: partial(_on_hosts, run, hostfile, slots, out) for run in runs}


def _on_hosts(run: Run, hostfile: Path, slots: int, out: Path, resume: bool, master_port: int | None) -> list[str]:
    return hostfile_command(run, hostfile, slots, out, resume)
