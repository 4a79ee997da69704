"""benchmarks/moe_layer.py runs end to end at tiny sizes: four implementations that agree, positive times.
No speed is asserted."""

import json
import sys

import pytest

from tests.helpers import run


def test_moe_layer_benchmark_times_four_matching_implementations(tmp_path):
    top_k = 2
    out = tmp_path / "moe_layer.json"
    proc = run(
        [
            sys.executable,
            "benchmarks/moe_layer.py",
            "--device",
            "cpu",
            "--tokens",
            "96",
            "--d-model",
            "16",
            "--d-ff",
            "24",
            "--experts",
            "4",
            "--top-k",
            str(top_k),
            "--iters",
            "2",
            "--warmup",
            "1",
            "--json",
            str(out),
        ],
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(out.read_text())
    assert [row["implementation"] for row in r["rows"]] == [
        "deepspeed_native",
        "deepspeed_native_batched",
        "autoep_grouped",
        "hf_eager",
    ]
    assert r["autoep_expert_path"] == "torch._grouped_mm" and r["top_k"] == top_k and r["dtype"] == "float32"
    for row in r["rows"]:
        assert row["tokens"] == 96 and len(row["iter_s"]) == 2 and all(t > 0 for t in row["iter_s"])
        assert row["us_per_token"] == pytest.approx(row["median_s"] / 96 * 1e6)
    assert r["rows"][0]["ratio_to_native"] == 1.0
    # The script refuses to time implementations that compute different functions; this is what it checked.
    assert r["check"]["matched"]
    for part in ("output", "input_grad"):
        for name, agreement in r["check"][part].items():
            assert agreement["tokens_agreeing"] == 1.0 and agreement["max_abs_diff"] < 1e-5, (part, name)
    assert "us/token" in proc.stdout and "autoep_grouped" in proc.stdout
