"""benchmarks/throughput.py runs end to end and its MFU arithmetic is consistent (no timing asserted)."""

import json
import sys

import pytest

from tests.helpers import run

pytestmark = pytest.mark.e2e


def test_throughput_benchmark_reports_tokens_per_s_and_mfu(tmp_path):
    out = tmp_path / "result.json"
    proc = run(
        [
            sys.executable,
            "benchmarks/throughput.py",
            "--recipe",
            "recipes/tiny.yaml",
            "--steps",
            "6",
            "--skip",
            "2",
            "--peak-tflops",
            "0.5",
            "--json",
            str(out),
        ],
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(out.read_text())
    assert r["ranks"] == 2 and r["steps_timed"] == 4 and r["tokens_per_s"] > 0
    assert r["tokens_per_s"] == pytest.approx(r["global_batch"] * r["seq_len"] / r["step_time_s"], rel=1e-9)
    assert r["achieved_tflops"] == pytest.approx(r["tokens_per_s"] * r["train_flops_per_token"] / 1e12)
    assert r["mfu"] == pytest.approx(r["achieved_tflops"] / (0.5 * 2))
    assert "MFU" in proc.stdout


def test_speed_ab_runs_every_arm_and_reports_each_against_the_first(tmp_path):
    """benchmarks/speed_ab.py: two arms of real launcher runs; the optimizer choice changes nothing but speed."""
    out = tmp_path / "ab.json"
    proc = run(
        [
            sys.executable,
            "benchmarks/speed_ab.py",
            "--recipe",
            "recipes/tiny.yaml",
            "--steps",
            "4",
            "--skip",
            "1",
            "--rounds",
            "1",
            "--arm",
            "foreach=ds.optimizer.params.fused=false",
            "--arm",
            "fused=",
            "--json",
            str(out),
            "data.max_documents=600",
            "data.vocab_size=1024",
        ],
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(out.read_text())
    assert list(r["arms"]) == ["foreach", "fused"] and r["arms"]["foreach"]["step_vs_first"] == 1.0
    for arm in r["arms"].values():
        assert len(arm["runs"]) == 1 and arm["step_ms"] > 0 and arm["optimizer_ms"] > 0 and arm["fwd_ms"] > 0
        assert arm["step_vs_first"] == pytest.approx(arm["step_ms"] / r["arms"]["foreach"]["step_ms"])
    assert r["arms"]["fused"]["last_loss"] == pytest.approx(r["arms"]["foreach"]["last_loss"], rel=1e-5)
