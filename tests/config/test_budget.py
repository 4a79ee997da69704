"""Run length from steps or a token budget, warmup and decay as fractions, and the combinations refused."""

import pytest

from moe.config import ConfigError, load_ds_config, load_recipe, resolve, split_overrides
from moe.config.budget import decay_steps
from moe.train.schedule import warmup_cosine
from tests.helpers import REPO


def _train(*overrides, world_size=2):
    recipe_overrides, ds_overrides = split_overrides(["train.max_steps=null", "train.warmup_steps=null", *overrides])
    recipe = load_recipe(REPO / "recipes/default.yaml", recipe_overrides)
    return resolve(recipe, load_ds_config(REPO / "ds_configs/zero1.json", ds_overrides), world_size).recipe.train


def test_max_tokens_fixes_tokens_across_batch_sizes_and_ranks():
    # zero1.json: 8 blocks of 128 tokens per rank and micro-step
    assert _train("train.max_tokens=1000000").max_steps == 489  # ceil(1e6 / (2 * 8 * 128))
    assert _train("train.max_tokens=1000000", "moe.ep_size=1", world_size=1).max_steps == 977
    assert _train("train.max_tokens=1000000", "ds.train_micro_batch_size_per_gpu=16").max_steps == 245
    assert _train().max_steps == 200  # neither given: the default length


def test_warmup_and_decay_as_fractions_of_the_run():
    t = _train("train.max_tokens=1000000", "train.warmup_fraction=0.1", "train.decay_fraction=0.2")
    assert (t.max_steps, t.warmup_steps, decay_steps(t)) == (489, 48, 98)
    lr = [warmup_cosine(s, t.warmup_steps, t.max_steps, 0.1, decay_steps(t)) for s in range(t.max_steps + 1)]
    assert lr[47] == 1.0 and lr[200] == 1.0 and lr[391] == 1.0  # constant until the decay phase
    assert lr[392] < 1.0 and lr[-1] == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.max_tokens=1000", "train.max_steps=10"], "both set the run's length"),
        (["train.max_tokens=0"], "max_tokens must be at least 1"),
        (["train.warmup_fraction=0.1", "train.warmup_steps=5"], "both set the warmup"),
        (["train.warmup_fraction=1.5"], "warmup_fraction must be in"),
        (["train.warmup_fraction=0.5", "train.decay_fraction=0.6"], "exceed train.max_steps"),
        (["data.mixture=[{source: stdlib, weight: 0}]"], r"mixture\[0\].weight must be positive"),
        (["data.mixture=[{source: files}]"], r"mixture\[0\].source=files needs"),
        (["data.weight=0.5"], "belong to the entries of data.mixture"),
        (["train.eval_blocks=-1"], "eval_blocks must be 0 or more"),
    ],
)
def test_bad_budgets_and_mixtures_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        _train(*overrides)
