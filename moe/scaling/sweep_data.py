"""Before a sweep's runs start: tokenize each distinct data set once, so runs started side by side do not all
build the same shards at once.

    python -m moe.data.prepare --recipe R --ds_config C [data.* overrides]   # once per (recipe, data.* overrides)

Skipped where moe/data/prepare.py has no `main` (a tree without that command: each run then prepares its own data,
as before).
"""

from __future__ import annotations

import importlib
import shlex
import subprocess
import sys
from pathlib import Path


def prepare_available() -> bool:
    try:
        module = importlib.import_module("moe.data.prepare")
    except ImportError:
        return False
    return hasattr(module, "main")


def prepare_commands(runs: list) -> list[tuple[list[str], list[str]]]:
    """(command, names of the runs that share its data) per distinct (recipe, data.* overrides), in run order.
    `runs`: the sweep's runs (moe/scaling/sweep.py Run: recipe, ds_config, overrides, name)."""
    groups: dict[tuple, tuple[list[str], list[str]]] = {}
    for run in runs:
        data = tuple(o for o in run.overrides if o.startswith("data."))
        key = (run.recipe, data)
        if key not in groups:
            command = [sys.executable, "-m", "moe.data.prepare", "--recipe", run.recipe, "--ds_config", run.ds_config]
            groups[key] = (command + list(data), [])
        groups[key][1].append(run.name)
    return list(groups.values())


def prepare_data(runs: list, cwd: Path, logs: Path | None = None) -> bool:
    """Run each prepare command (its output to logs/prepare-<i>.log, or this terminal); False if one failed."""
    if not runs or not prepare_available():
        return True
    commands = prepare_commands(runs)
    for i, (command, names) in enumerate(commands, 1):
        log = logs / f"prepare-{i}.log" if logs else None
        where = f", log {log}" if log else ""
        print(f"data {i}/{len(commands)} for {len(names)} run(s){where}: {shlex.join(command)}", flush=True)
        if log:
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("a") as out:
                code = subprocess.run(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT).returncode
        else:
            code = subprocess.run(command, cwd=cwd).returncode
        if code:
            print(f"error: preparing the data of {', '.join(names)} failed (exit {code}){where}", file=sys.stderr)
            return False
    return True
