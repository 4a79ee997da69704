"""The README and docs/ name real things: every repository path they cite exists, every `file.py::test_name` they
point to is a test of that file, and the README stays a short front page (at most 200 lines)."""

import re
from pathlib import Path

import pytest

from tests.helpers import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "benchmarks" / "RESULTS.md"]
TOP = ("moe", "tests", "benchmarks", "recipes", "ds_configs", "launch", "docs")
# a path of the repository: not part of a longer one (runs/x/plots/, ~/.cache/moe-recipes/...), no wildcard
PATH = re.compile(rf"(?<![\w/.~-])((?:{'|'.join(TOP)})/[\w/.-]*[\w/])(?![\w*{{<])")
TEST_REF = re.compile(r"((?:[\w/]+/)?test_\w+\.py)::(\w+)")


def ids(page: Path) -> str:
    return str(page.relative_to(REPO))


@pytest.mark.parametrize("page", PAGES, ids=ids)
def test_every_cited_path_exists(page):
    missing = sorted({m for m in PATH.findall(page.read_text()) if not (REPO / m).exists()})
    assert not missing, f"{ids(page)} cites paths that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=ids)
def test_every_cited_test_exists(page):
    tests = list((REPO / "tests").rglob("test_*.py"))
    missing = []
    for file, name in TEST_REF.findall(page.read_text()):
        matches = [REPO / file] if "/" in file else [t for t in tests if t.name == file]
        if not any(t.exists() and re.search(rf"^def {name}\b", t.read_text(), re.M) for t in matches):
            missing.append(f"{file}::{name}")
    assert not missing, f"{ids(page)} cites tests that do not exist: {missing}"


def test_readme_is_at_most_200_lines():
    assert len((REPO / "README.md").read_text().splitlines()) <= 200
