"""The ds_config `elasticity` section (moe/config/elastic.py): one global batch over a range of world sizes."""

import pytest

from moe.config import ConfigError, load_ds_config, load_recipe, resolve
from moe.config.elastic import elastic_batch
from tests.helpers import REPO

ELASTIC = REPO / "ds_configs" / "elastic.json"


def _resolve(world_size, recipe_overrides=(), ds_overrides=()):
    recipe = load_recipe(REPO / "recipes/tiny.yaml", ["moe.ep_size=1", *recipe_overrides])
    return resolve(recipe, load_ds_config(ELASTIC, list(ds_overrides)), world_size, "elastic.json")


def test_the_rule_gives_deepspeeds_own_answers():
    """DeepSpeed's tests/unit/elasticity/test_elastic.py pinned these for compute_elastic_config (removed in 0.19.8)."""
    batch, valid = elastic_batch([8, 12, 16, 17], 10000, min_gpus=32, max_gpus=1500)
    assert (batch, len(valid)) == (9792, 23)
    assert all(batch % n == 0 and any(batch // n % m == 0 for m in (8, 12, 16, 17)) for n in valid)
    assert max(m for m in (8, 12, 16, 17) if batch // 64 % m == 0) == 17  # its micro-batch at 64 GPUs


@pytest.mark.parametrize("world_size, micro, accum", [(1, 4, 4), (2, 4, 2), (4, 4, 1), (8, 2, 1)])
def test_every_valid_world_size_gets_the_same_global_batch(world_size, micro, accum):
    ds = _resolve(world_size).ds_config
    assert ds["train_batch_size"] == 16  # max_train_batch_size 16 over micro-batches [2, 4]: valid on 1, 2, 4, 8
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (micro, accum)
    assert "elasticity" not in ds  # DeepSpeed 0.19.8 rejects the section; it gets only the result


def test_the_recipe_sees_the_elastic_micro_batch_and_accumulation():
    r = _resolve(2)
    assert (r.recipe.train.micro_batch_size, r.recipe.train.grad_accum) == (4, 2)


@pytest.mark.parametrize(
    "world_size, recipe_overrides, ds_overrides, message",
    [
        (3, [], [], "world size 3 is not valid for the elastic batch 16 of elastic.json; valid GPU counts: 1, 2, 4, 8"),
        (16, [], [], "valid GPU counts: 1, 2, 4, 8"),
        (
            2,
            ["train.micro_batch_size=4"],
            [],
            "train.micro_batch_size=4 in the recipe, but elastic.json enables elasticity",
        ),
        (2, ["train.grad_accum=2"], [], "set it in one place (remove train.grad_accum)"),
        (2, [], ["gradient_accumulation_steps=2"], "gradient_accumulation_steps is set beside an enabled 'elasticity'"),
        (2, [], ["elasticity.max_gpu=8"], "unknown key 'elasticity.max_gpu'"),
        (2, [], ["elasticity.version=0.2"], "elasticity.version=0.2 is not supported; use 0.1"),
        (2, [], ["elasticity.micro_batch_sizes=[32]"], "micro_batch_sizes [32] exceed max_train_batch_size=16"),
        (2, [], ["elasticity.min_gpus=9"], "needs 1 <= min_gpus <= max_gpus"),
        (2, [], ["pipeline.stages=2"], "elasticity (version 0.1) does not support pipeline parallelism"),
    ],
)
def test_refusals_name_the_fix(world_size, recipe_overrides, ds_overrides, message):
    with pytest.raises(ConfigError) as e:
        _resolve(world_size, recipe_overrides, ds_overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_ignore_non_elastic_batch_info_drops_the_ds_config_batch():
    ds = _resolve(
        2,
        ds_overrides=[
            "train_micro_batch_size_per_gpu=8",
            "train_batch_size=99",
            "elasticity.ignore_non_elastic_batch_info=true",
        ],
    ).ds_config
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (
        4,
        2,
        16,
    )


def test_a_disabled_section_is_dropped_and_the_usual_batch_applies():
    ds = _resolve(2, ds_overrides=["elasticity.enabled=false"]).ds_config
    assert "elasticity" not in ds and ds["train_batch_size"] == 8 * 1 * 2  # the defaults: micro 8, accumulation 1
