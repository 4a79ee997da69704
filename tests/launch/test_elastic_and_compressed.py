"""ds_configs/elastic.json through the real launcher, and the refusals of an elastic world size out of range and of
the compressed-communication optimizers (removed from DeepSpeed 0.19.8) before any rank starts."""

import json
import time

import pytest

from tests.helpers import explain, launch_bash, read_metrics

pytestmark = pytest.mark.e2e
TINY = ("--recipe", "recipes/tiny.yaml")


def test_elastic_config_trains_two_steps_with_the_elastic_batch(tmp_path):
    proc = launch_bash(
        *TINY,
        "--ds_config",
        "ds_configs/elastic.json",
        "train.max_steps=2",
        "train.warmup_steps=1",
        "logging.progress_bar=false",
        f"logging.runs_dir={tmp_path}",
        timeout=600,
    )
    assert proc.returncode == 0, explain(proc)
    steps = [m for m in read_metrics(tmp_path / "tiny") if "loss" in m]
    assert [m["step"] for m in steps] == [1, 2]
    ds = json.loads((tmp_path / "tiny" / "ds_config.json").read_text())
    # 2 ranks: the elastic batch 16 (valid on 1, 2, 4, 8 GPUs) = micro-batch 4 x accumulation 2 x 2 ranks
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (
        16,
        4,
        2,
    )
    assert "elasticity" not in ds


# extra launcher args, then words the one error line must hold
ONEBIT = {
    "type": "OneBitAdam",
    "params": {"lr": 3e-3, "freeze_step": 2, "cuda_aware": False, "comm_backend_name": "nccl"},
}
ZERO_ONE = {
    "type": "ZeroOneAdam",
    "params": {
        "lr": 3e-3,
        "var_freeze_step": 2,
        "var_update_scaler": 16,
        "local_step_scaler": 32678,
        "local_step_clipper": 16,
        "cuda_aware": False,
        "comm_backend_name": "nccl",
    },
}
CASES = {
    "elastic world size out of range": ({"NUM_GPUS": "3"}, None, ["world size 3", "valid GPU counts: 1, 2, 4, 8"]),
    "1-bit Adam": ({}, ONEBIT, ["optimizer.type=OneBitAdam", "has removed", "optimizer.type=AdamW"]),
    "0/1 Adam": ({}, ZERO_ONE, ["optimizer.type=ZeroOneAdam", "has removed", "optimizer.type=AdamW"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_refused_in_one_line_before_any_rank(case, tmp_path):
    env, optimizer, must_mention = CASES[case]
    ds_config = "ds_configs/elastic.json"
    if optimizer:  # the shape DeepSpeed's 1-bit / 0/1 Adam tutorials used, on ZeRO-0 fp32
        ds_config = tmp_path / "compressed.json"
        ds_config.write_text(
            json.dumps({"train_micro_batch_size_per_gpu": 4, "optimizer": optimizer, "zero_optimization": {"stage": 0}})
        )
    start = time.monotonic()
    proc = launch_bash(
        *TINY, "--ds_config", str(ds_config), "moe.ep_size=1", f"logging.runs_dir={tmp_path}", timeout=60, **env
    )
    elapsed = time.monotonic() - start
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), explain(proc)
    for words in must_mention:
        assert words in lines[0], f"{words!r} not in: {lines[0]}"
    assert "launch:" not in proc.stdout and not (tmp_path / "tiny").exists()
    assert elapsed < 10, f"took {elapsed:.1f}s"
