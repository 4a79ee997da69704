"""benchmarks/gpu_mfu.py for real on one CUDA GPU (bf16, the recipes/gpu/ models at full size, 2 + 3 steps each).
Skipped only where no CUDA GPU is present (tests/conftest.py); tests/benchmarks/test_gpu_mfu.py runs it on CPU."""

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO, child_env

pytestmark = [pytest.mark.gpu, pytest.mark.e2e]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_mfu") / "gpu_mfu.json"
    env = child_env()
    env.pop("OMP_NUM_THREADS")  # the GPU runs' CPU side (model init, data) keeps every core
    cmd = [sys.executable, "benchmarks/gpu_mfu.py", "--steps", "3", "--warmup", "2", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert out.is_file(), proc.stdout[-4000:] + proc.stderr[-4000:]
    r = json.loads(out.read_text())
    assert proc.returncode == 0, json.dumps(r, indent=1)[-6000:]
    return r


def test_peak_is_a_bf16_matmul_below_the_datasheet(result):
    peak = result["peak"]
    assert result["device"]["type"] == "cuda" and peak["dtype"] == "bfloat16"
    assert peak["measured_tflops"] == max(peak["by_size"].values()) > 10
    if peak["datasheet_tflops"]:  # a GPU of moe.train.throughput.PEAK_BF16_TFLOPS
        assert peak["measured_tflops"] < 1.05 * peak["datasheet_tflops"]


def test_every_recipe_trains_with_mfu_against_both_peaks(result):
    peak, sheet = result["peak"]["measured_tflops"], result["peak"]["datasheet_tflops"]
    assert [r["name"] for r in result["runs"]] == ["dense_1b", "moe_1b_8x_top2", "moe_1b_8x_top2_autoep"]
    for row in result["runs"]:
        assert row["status"] == "ok" and row["steps_timed"] == 3, row.get("error")
        assert row["ds_config"] == "ds_configs/zero1_bf16.json" and row["seq_len"] == 2048
        assert 0 < row["mfu"] < 1
        assert row["mfu"] == pytest.approx(row["tflops_per_device"] / peak, rel=1e-9)
        assert row["trainer_mfu_median"] == pytest.approx(row["mfu"], rel=1e-6)  # the trainer had the same peak
        if sheet:
            assert row["mfu_datasheet"] == pytest.approx(row["tflops_per_device"] / sheet, rel=1e-9)
        assert row["memory_metric"] == "mem_peak_gb" and 0 < row["peak_memory_gb"] < 80
        assert all(row["split_ms"][k] > 0 for k in ("forward", "backward", "optimizer"))


def test_layer_benchmark_ran_in_bf16_at_the_recipe_shape(result):
    layer = result["moe_layer"]
    assert layer["status"] == "ok" and layer["ratios_to_native"]["deepspeed_native"] == 1.0
    shape = dict(zip(layer["argv"][::2], layer["argv"][1::2]))
    assert (shape["--dtype"], shape["--tokens"], shape["--d-model"], shape["--d-ff"]) == (
        "bfloat16",
        "8192",
        "2048",
        "2816",
    )
