"""Pipeline parallelism settings (ds_config `pipeline` section, moe/config/pipeline_parallel.py): what resolves, and
every combination that cannot run refused in one line, before any rank starts, naming the combination that works."""

import pytest

from moe.config import ConfigError, load_ds_config, load_recipe, resolve
from tests.helpers import REPO

PIPELINE2 = REPO / "ds_configs/pipeline2.json"


def resolve_pipeline(overrides=(), ds_overrides=(), world_size=2, recipe="tiny.yaml"):
    recipe = load_recipe(REPO / "recipes" / recipe, list(overrides))
    return resolve(recipe, load_ds_config(PIPELINE2, list(ds_overrides)), world_size, "pipeline2.json")


@pytest.mark.parametrize(
    "overrides, world_size, dp_size",
    [
        (["moe.enabled=false"], 2, 1),
        (["moe.ep_size=1"], 2, 1),
        (["moe.ep_size=2"], 4, 2),  # PP=2 x EP=2: experts split over the 2 data-parallel ranks of each stage
    ],
)
def test_pipeline_resolves_with_data_parallel_size_per_stage(overrides, world_size, dp_size):
    r = resolve_pipeline(overrides, world_size=world_size)
    assert r.dp_size == dp_size
    assert r.ds_config["train_batch_size"] == 8 * 2 * dp_size  # micro-batch x accumulation x data-parallel ranks
    assert r.ds_config["pipeline"] == {"stages": 2, "partition": "type:BlockPipe", "activation_checkpoint_interval": 0}


def test_zero0_and_one_stage_resolve():
    assert resolve_pipeline(["moe.ep_size=1"], ["zero_optimization.stage=0"]).dp_size == 1
    assert resolve_pipeline(["moe.ep_size=1"], ["pipeline.stages=1"]).dp_size == 2  # one stage: no pipeline


WORKS = r"use ds_configs/pipeline2\.json \(ZeRO-1, fp32\) with moe\.impl=deepspeed"


@pytest.mark.parametrize(
    "overrides, ds_overrides, world_size, message",
    [
        (
            ["moe.ep_size=1"],
            [],
            3,
            r"world size 3 is not divisible by pipeline\.stages=2 .*launch a multiple of 2 ranks",
        ),
        (
            ["moe.ep_size=1", "model.n_layers=3"],
            [],
            2,
            r"model\.n_layers=3 does not split evenly over pipeline\.stages=2 .*use a multiple of 2 layers",
        ),
        (
            [],
            [],
            2,
            r"moe\.ep_size=2 must divide the 1 data-parallel ranks .*set moe\.ep_size to a divisor of 1 or launch 4",
        ),
        (
            ["moe.ep_size=1"],
            ["zero_optimization.stage=2"],
            2,
            r"PipelineEngine refuses ZeRO-2 .*use ZeRO 0 or 1: " + WORKS[4:],
        ),
        (["moe.enabled=false"], ["zero_optimization.stage=3"], 2, r"PipelineEngine refuses ZeRO-3 .*use ZeRO 0 or 1"),
        (
            ["moe.ep_size=1", "train.precision=bf16"],
            ["bf16.enabled=true"],
            2,
            r"train\.precision=bf16 with pipeline\.stages=2 .*fp32 only; " + WORKS,
        ),
        (
            ["moe.ep_size=1", "model.tie_embeddings=true"],
            [],
            2,
            r"tie_embeddings=true .*set model\.tie_embeddings=false",
        ),
        (
            ["moe.ep_size=1", "moe.bias_update_rate=0.001", "moe.top2_2nd_expert_sampling=false"],
            [],
            2,
            r"moe\.bias_update_rate .*set moe\.bias_update_rate=0",
        ),
        (["moe.ep_size=1"], ["pipeline.stages=auto"], 2, r"pipeline\.stages must be a positive integer, got 'auto'"),
        (["moe.ep_size=1"], ["pipeline.partition=by_magic"], 2, r"pipeline\.partition must be type:BlockPipe"),
        (
            ["moe.ep_size=1"],
            ["pipeline.activation_checkpoint_interval=-1"],
            2,
            r"activation_checkpoint_interval must be an integer >= 0",
        ),
    ],
)
def test_refused_combinations_are_one_line_config_errors(overrides, ds_overrides, world_size, message):
    with pytest.raises(ConfigError, match=message) as error:
        resolve_pipeline(overrides, ds_overrides, world_size)
    assert "\n" not in str(error.value)


def test_autoep_with_a_pipeline_is_refused_with_the_working_alternatives():
    with pytest.raises(
        ConfigError,
        match=r"needs moe\.impl=deepspeed: AutoEP .*run AutoEP with ds_configs/zero1\.json, "
        r"or " + WORKS,
    ) as error:
        resolve_pipeline(recipe="autoep.yaml", world_size=4)
    assert "\n" not in str(error.value)
