"""GPU precision and backend: fp16 with dynamic loss scaling, bf16 and fp32 on one CUDA GPU with the NCCL backend,
through the real launcher. Skipped only where no CUDA GPU is present (tests/conftest.py); CPU runs cover fp32 and
bf16 in tests/train/test_layouts.py, and DeepSpeed's CPU accelerator has no fp16."""

import math

import pytest

from tests.helpers import explain, launch_bash, read_metrics

pytestmark = [pytest.mark.gpu, pytest.mark.e2e]
STEPS = 30
TINY_ONE_GPU = (
    "--recipe",
    "recipes/tiny.yaml",
    f"train.max_steps={STEPS}",
    "train.eval_interval=0",
    "train.save_interval=0",
    "logging.progress_bar=false",
    "moe.ep_size=1",
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for name, ds_config in (("fp32", "zero1.json"), ("bf16", "zero1_bf16.json"), ("fp16", "zero1_fp16.json")):
        folder = tmp_path_factory.mktemp(name)
        proc = launch_bash(
            *TINY_ONE_GPU,
            "--ds_config",
            f"ds_configs/{ds_config}",
            f"logging.runs_dir={folder}",
            NUM_GPUS="1",
            timeout=900,
        )
        assert proc.returncode == 0, explain(proc)
        assert "nccl" in (proc.stdout + proc.stderr).lower()  # DeepSpeed's comm backend on CUDA
        assert "DeepSpeed Basic Optimizer = FusedAdam" in proc.stdout + proc.stderr  # the fused multi-tensor AdamW
        out[name] = [m for m in read_metrics(folder / "tiny") if "loss" in m]
    return out


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_is_finite_and_tracks_fp32(runs, precision):
    half, fp32 = runs[precision], runs["fp32"]
    assert len(half) == len(fp32) == STEPS and all(math.isfinite(m["loss"]) for m in half)

    # Stated tolerance: the last-5-step mean loss within 3% of fp32's (rounding of 8/11-bit mantissas over 30 steps)
    def tail(records: list[dict]) -> float:
        return sum(m["loss"] for m in records[-5:]) / 5

    assert tail(half) == pytest.approx(tail(fp32), rel=3e-2)


def test_fp16_logs_its_dynamic_loss_scale_and_skipped_steps(runs):
    fp16 = runs["fp16"]
    assert all({"loss_scale", "skipped_steps", "overflow"} <= set(m) for m in fp16)
    skipped = sum(m["overflow"] for m in fp16)
    assert fp16[-1]["skipped_steps"] == skipped  # every skipped (overflow) step is logged as one
    assert fp16[0]["loss_scale"] <= 2.0**16  # initial_scale_power 16, lowered on each overflow
