"""The range of every numeric setting (moe/config/ranges.py): each recipe field and each ds_config value DeepSpeed
reads has a range, and a value just outside it is one ConfigError naming the key, from the pure resolve step."""

import math
import typing

import pytest

from moe.config import ConfigError, load_resolved
from moe.config.ranges import DS_RANGES, RECIPE_RANGES, Bound
from moe.config.schema import Recipe
from tests.helpers import REPO


def numeric_fields() -> list[str]:
    """Every recipe field whose type holds an int or a float (an int | list[int], a list[float] | None ...)."""

    def numeric(tp) -> bool:
        return tp in (int, float) or any(numeric(a) for a in typing.get_args(tp))

    return [
        f"{section}.{name}"
        for section, cls in typing.get_type_hints(Recipe).items()
        for name, tp in typing.get_type_hints(cls).items()
        if numeric(tp)
    ]


def is_integral(key: str) -> bool:
    section, name = key.split(".")
    tp = typing.get_type_hints(typing.get_type_hints(Recipe)[section])[name]
    return int in (tp, *typing.get_args(tp))


def just_outside(bound: Bound, integral: bool) -> float:
    """A value the bound refuses, next to its edge."""
    if bound.lo is not None:
        return bound.lo if bound.lo_open else bound.lo - (1 if integral else 0.5)
    return bound.hi if bound.hi_open else bound.hi + 1


def resolve(*overrides: str, ds_config: str = "zero1.json"):
    return load_resolved(REPO / "recipes/tiny.yaml", REPO / "ds_configs" / ds_config, list(overrides), 2)


def test_every_numeric_recipe_field_has_a_range():
    assert sorted(numeric_fields()) == sorted(RECIPE_RANGES)


def test_the_shipped_ranges_admit_the_defaults():
    resolve()  # tiny + ZeRO-1
    resolve(ds_config="zero2_offload.json")


RANGED = [k for k, b in RECIPE_RANGES.items() if b is not None]


@pytest.mark.parametrize("key", RANGED)
def test_a_recipe_value_just_outside_its_range_is_refused_naming_it(key):
    integral = is_integral(key)
    bad = just_outside(RECIPE_RANGES[key], integral)
    value = f"[0.9, {bad}]" if key == "optim.betas" else (int(bad) if integral else bad)
    with pytest.raises(ConfigError, match=rf"{key}\b") as refusal:
        resolve(f"{key}={value}")
    assert "\n" not in str(refusal.value)


@pytest.mark.parametrize("key", list(DS_RANGES))
def test_a_ds_config_value_just_outside_its_range_is_refused_naming_it(key):
    bad = just_outside(DS_RANGES[key], integral=True)
    with pytest.raises(ConfigError, match=key.split(".")[-1]):
        resolve(f"ds.{key}={int(bad) if float(bad).is_integer() else bad}")


@pytest.mark.parametrize(
    "override, words",
    [
        ("optim.lr=-1", ["optim.lr", "optimizer.params.lr", "positive", "-1"]),
        ("ds.gradient_clipping=-1", ["train.grad_clip", "gradient_clipping", "0 or more"]),
        ("ds.optimizer.params.lr=.nan", ["optim.lr", "nan"]),
        ("ds.zero_optimization.reduce_bucket_size=auto", ["reduce_bucket_size", "must be a number", "auto"]),
        ("optim.betas=[0.9, 1.0]", ["optim.betas", "[0, 1)"]),
    ],
)
def test_refusals_name_the_key_the_range_and_the_value(override, words):
    with pytest.raises(ConfigError) as refusal:
        resolve(override)
    for word in words:
        assert word in str(refusal.value)


def test_bounds_treat_edges_and_non_finite_values_as_stated():
    assert Bound(0, lo_open=True).admits(1e-12) and not Bound(0, lo_open=True).admits(0)
    assert Bound(0, 1, hi_open=True).admits(0) and not Bound(0, 1, hi_open=True).admits(1)
    assert not Bound(0).admits(math.inf) and not Bound(0).admits(math.nan)
    assert Bound(0, 1, hi_open=True).describe() == "in [0, 1)" and Bound(1).describe() == "at least 1"
