"""benchmarks/faults.py, one fault of it at 10 steps through the real launcher (the whole table takes minutes)."""

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO, child_env

pytestmark = pytest.mark.e2e


def test_a_killed_rank_is_measured_detected_restarted_and_bit_exact(tmp_path):
    out = tmp_path / "faults.json"
    cmd = [sys.executable, "benchmarks/faults.py", "--steps", "10", "--only", "inside a collective", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads(out.read_text())["faults"]
    assert row["exit_code"] == 0 and row["restarts"] == 1 and row["resumed_from"] == "global_step5"
    assert 0 < row["detect_s"] < 60 and row["steps_lost"] in (2, 3) and row["bit_exact"] and row["final_step"] == 10
    assert row["lines"][0].startswith("error: rank 1 (pid ") and "SIGKILL" in row["lines"][0]
