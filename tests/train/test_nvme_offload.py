"""ZeRO-Infinity: parameters and optimizer states offloaded to a local folder standing in for an NVMe drive
(ds_configs/zero3_offload_nvme.json), against ZeRO-3 without offload, dense tiny model on 2 gloo ranks (one spawn,
both runs through the real Trainer). DeepSpeed's async_io op needs libaio: tests/conftest.py fetches it where the
system lacks it."""

import json

import pytest

from tests.harness import resolved_for, run_on_ranks

pytestmark = [pytest.mark.nvme, pytest.mark.distributed]
COMMON = ["moe.enabled=false", "train.max_steps=3", "train.eval_interval=0", "train.save_interval=0"]


def train_offloaded_and_in_memory(rank: int, world_size: int, out: str) -> None:
    from moe.train.trainer import Trainer

    nvme = f"{out}/nvme"
    runs = {
        "offload": (
            "zero3_offload_nvme.json",
            [
                f"ds.zero_optimization.offload_param.nvme_path={nvme}",
                f"ds.zero_optimization.offload_optimizer.nvme_path={nvme}",
            ],
        ),
        "memory": ("zero3.json", []),
    }
    results = {}
    for name, (ds_config, extra) in runs.items():
        trainer = Trainer(resolved_for(out, name, ds_config, [*COMMON, *extra], world_size), rank)
        records = [trainer.train_step() for _ in range(trainer.recipe.train.max_steps)]
        results[name] = {key: [r[key] for r in records] for key in ("loss", "grad_norm")}
        trainer.engine.destroy()
    if rank == 0:
        with open(f"{out}/results.json", "w") as f:
            json.dump(results, f)


def test_nvme_offload_matches_zero3_in_memory(tmp_path, deepspeed_cpu_adam_built, deepspeed_async_io_env):
    (tmp_path / "nvme").mkdir()
    run_on_ranks(train_offloaded_and_in_memory, tmp_path, ranks=2, timeout=900, **deepspeed_async_io_env)
    results = json.loads((tmp_path / "results.json").read_text())
    assert any((tmp_path / "nvme" / "zero_stage_3").rglob("*")), "nothing was swapped to the NVMe folder"
    offloaded, in_memory = results["offload"], results["memory"]
    assert len(offloaded["loss"]) == 3
    # DeepSpeedCPUAdam on swapped-in states against torch's AdamW: same math, float order only (measured 1e-7)
    assert offloaded["loss"] == pytest.approx(in_memory["loss"], rel=1e-6)
    assert offloaded["grad_norm"] == pytest.approx(in_memory["grad_norm"], rel=1e-5)
