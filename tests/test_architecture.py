"""The package's layers, read from the source with `ast`: every import of a `moe` module, at the top of a file or
inside a function, goes down the layers or stays inside its own package, and the imports form no cycle.

    config -> data, model -> parallel -> checkpoint -> train -> plan -> simulate -> launch -> scaling -> entry points
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import REPO

PACKAGE = REPO / "moe"
# package (or top-level module) under moe/ -> its layer; a module imports only from lower layers and its own package
LAYERS = {
    "": 0,
    "config": 1,
    "data": 2,
    "model": 2,
    "parallel": 3,
    "checkpoint": 4,
    "train": 5,
    "plan": 6,
    "simulate": 7,
    "launch": 8,
    "scaling": 9,
    "export": 10,
    "reshard": 10,
    "plot": 10,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """The moe modules `path` (module `name`) imports anywhere in its source: `from a.b import c` names the module
    a.b.c when c is one, else a.b."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names if alias.name.split(".")[0] == "moe"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            if base.split(".")[0] != "moe":
                continue
            for alias in node.names:
                out.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return out - {name}


def layer(name: str) -> tuple[str, int]:
    """(top-level package under moe, its layer) of module `name`."""
    top = name.split(".")[1] if name.count(".") else ""
    assert top in LAYERS, f"{name}: add moe/{top} to LAYERS in tests/test_architecture.py"
    return top, LAYERS[top]


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(path, name, known) for name, path in known.items()}


def test_imports_go_down_the_layers():
    upward = []
    for source, targets in graph().items():
        top, rank = layer(source)
        for target in sorted(targets):
            target_top, target_rank = layer(target)
            if target_top != top and target_rank >= rank:
                upward.append(f"{source} (layer {rank}) imports {target} (layer {target_rank})")
    assert not upward, "\n".join(upward)


def test_imports_form_no_cycle():
    edges, state, cycles = graph(), {}, []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                cycles.append(
                    " -> ".join(path[path.index(target) :] + [node, target])
                    if target in path
                    else f"{node} -> {target}"
                )
            elif target not in state:
                visit(target, path + [node])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert not cycles, "\n".join(cycles)


def test_no_loose_modules_beside_the_packages():
    loose = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert loose == {"export", "reshard", "plot"}, loose  # the thin command-line entry points
