"""The linter and the formatter (ruff, configured in pyproject.toml: lines of at most 120 characters) pass on the
whole repository: the test command runs them, so a change that breaks either fails CI."""

import subprocess
import sys

from tests.helpers import REPO

SOURCES = ("moe", "tests", "benchmarks", "launch", "recipes")  # not a virtual environment made inside the checkout


def ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, *SOURCES], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_ruff_lint_passes():
    proc = ruff("check")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_ruff_format_leaves_every_file_as_it_is():
    proc = ruff("format", "--check")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
