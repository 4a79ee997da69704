"""benchmarks/throughput.py runs end to end and its MFU arithmetic is consistent (no timing asserted)."""
import json
import subprocess
import sys

import pytest

from tests.helpers import REPO, child_env

pytestmark = pytest.mark.e2e


def test_throughput_benchmark_reports_tokens_per_s_and_mfu(tmp_path):
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, "benchmarks/throughput.py", "--recipe", "recipes/tiny.yaml",
                           "--steps", "6", "--skip", "2", "--peak-tflops", "0.5", "--json", str(out)],
                          cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(out.read_text())
    assert r["ranks"] == 2 and r["steps_timed"] == 4 and r["tokens_per_s"] > 0
    assert r["tokens_per_s"] == pytest.approx(r["global_batch"] * r["seq_len"] / r["step_time_s"], rel=1e-9)
    assert r["achieved_tflops"] == pytest.approx(r["tokens_per_s"] * r["train_flops_per_token"] / 1e12)
    assert r["mfu"] == pytest.approx(r["achieved_tflops"] / (0.5 * 2))
    assert "MFU" in proc.stdout
