"""ZeRO-Infinity: parameters and optimizer states offloaded to a local folder standing in for an NVMe drive
(ds_configs/zero3_offload_nvme.json), against ZeRO-3 without offload, dense tiny model on 2 gloo ranks through the
launcher. DeepSpeed's async_io op needs libaio: tests/conftest.py fetches it where the system lacks it."""
import pytest

from tests.helpers import explain, launch_bash, read_metrics

pytestmark = [pytest.mark.nvme, pytest.mark.distributed]
COMMON = ("moe.enabled=false", "train.max_steps=3", "train.eval_interval=0", "train.save_interval=0",
          "logging.progress_bar=false")


def train(runs, ds_config, *overrides):
    proc = launch_bash("--recipe", "recipes/tiny.yaml", "--ds_config", f"ds_configs/{ds_config}", *COMMON,
                       f"logging.runs_dir={runs}", *overrides, timeout=900)
    assert proc.returncode == 0, explain(proc)
    return [m for m in read_metrics(runs / "tiny") if "loss" in m]


def test_nvme_offload_matches_zero3_in_memory(tmp_path, deepspeed_cpu_adam_built, deepspeed_async_io_built):
    nvme = tmp_path / "nvme"
    nvme.mkdir()
    offloaded = train(tmp_path / "offload", "zero3_offload_nvme.json",
                      f"ds.zero_optimization.offload_param.nvme_path={nvme}",
                      f"ds.zero_optimization.offload_optimizer.nvme_path={nvme}")
    in_memory = train(tmp_path / "memory", "zero3.json")
    assert any((nvme / "zero_stage_3").rglob("*")), "nothing was swapped to the NVMe folder"
    # DeepSpeedCPUAdam on swapped-in states against torch's AdamW: same math, float order only (measured 1e-7)
    assert [m["loss"] for m in offloaded] == pytest.approx([m["loss"] for m in in_memory], rel=1e-6)
    assert [m["grad_norm"] for m in offloaded] == pytest.approx([m["grad_norm"] for m in in_memory], rel=1e-5)
