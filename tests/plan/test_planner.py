"""`python -m moe.plan` and the preflight memory check, on the shipped and published recipes."""

import re

import pytest

from moe.config import ConfigError, load_recipe, load_resolved
from moe.launch.preflight import check_memory
from moe.plan import make_plan, parse_bytes
from moe.plan.__main__ import main as plan_main
from moe.plan.stated_layout import stated_layout
from tests.helpers import REPO

PUBLISHED = sorted((REPO / "recipes" / "published").glob("*.yaml"))


def resolved_for(recipe, ds_config, world_size, overrides=(), cuda=True):
    return load_resolved(recipe, REPO / ds_config, list(overrides), world_size, cuda=cuda)


def test_every_published_recipe_names_its_layout():
    assert len(PUBLISHED) == 6
    for path in PUBLISHED:
        gpus, ds_config, _ = stated_layout(path)
        assert gpus >= 1 and (REPO / ds_config).is_file(), path.name


@pytest.mark.parametrize("recipe", PUBLISHED, ids=lambda p: p.stem)
def test_published_recipe_fits_80gb_at_its_stated_layout(recipe, capsys):
    gpus, ds_config, overrides = stated_layout(recipe)
    code = plan_main(
        [
            "--recipe",
            str(recipe),
            "--ds_config",
            str(REPO / ds_config),
            "--gpus",
            str(gpus),
            "--gpu-mem",
            "80GB",
            *overrides,
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "verdict            FITS" in out, out
    for part in (
        "total",
        "active",
        "FLOPs per token",
        "optimizer states",
        "with checkpointing",
        "MoE capacity buffers",
    ):
        assert part in out


def test_published_parameter_counts_match_the_papers():
    # DeepSpeed-MoE Table 1: 350M+MoE-128 = 13B, 1.3B+MoE-128 = 52B, 1.3B+PR-MoE-64/128 = 31B; Mixtral 8x7B = 46.7B
    expected = {
        "ds_moe_350m_moe128": 13e9,
        "ds_moe_1p3b_moe128": 52e9,
        "ds_moe_1p3b_pr_moe_64_128": 31e9,
        "mixtral_8x7b_autoep": 46.7e9,
    }
    for name, params in expected.items():
        path = REPO / "recipes" / "published" / f"{name}.yaml"
        gpus, ds_config, overrides = stated_layout(path)
        plan = make_plan(resolved_for(path, ds_config, gpus, overrides), parse_bytes("80GB"))
        assert plan.shape.cost.total_params == pytest.approx(params, rel=0.03), name


def test_plan_says_no_and_suggests_a_micro_batch():
    path = REPO / "recipes" / "published" / "ds_moe_350m_moe128.yaml"
    resolved = resolved_for(path, "ds_configs/zero2_bf16.json", 64, ["ds.train_micro_batch_size_per_gpu=64"])
    plan = make_plan(resolved, parse_bytes("80GB"))
    assert not plan.fits and 1 <= plan.suggested_micro_batch < 64
    smaller = resolved_for(
        path, "ds_configs/zero2_bf16.json", 64, [f"ds.train_micro_batch_size_per_gpu={plan.suggested_micro_batch}"]
    )
    assert make_plan(smaller, parse_bytes("80GB")).fits
    larger = resolved_for(
        path, "ds_configs/zero2_bf16.json", 64, [f"ds.train_micro_batch_size_per_gpu={plan.suggested_micro_batch + 1}"]
    )
    assert not make_plan(larger, parse_bytes("80GB")).fits


def test_zero_stages_and_offload_shrink_model_states():
    path = REPO / "recipes" / "published" / "ds_moe_1p3b_moe128.yaml"
    states = {}
    for name, overrides in {
        "zero1": ["ds.zero_optimization.stage=1"],
        "zero2": [],
        "offload": ["ds.zero_optimization.offload_optimizer.device=cpu"],
    }.items():
        plan = make_plan(resolved_for(path, "ds_configs/zero2_bf16.json", 128, overrides), parse_bytes("80GB"))
        states[name] = plan.memory.model_states + plan.memory.grads
        if name == "offload":
            assert plan.memory.host > 0 and plan.memory.optimizer_states == 0
    assert states["zero1"] > states["zero2"] > states["offload"]


def test_preflight_refuses_a_micro_batch_that_does_not_fit_with_one_line():
    path = REPO / "recipes" / "published" / "switch_base_top1.yaml"
    resolved = resolved_for(path, "ds_configs/zero1_bf16.json", 32, ["ds.train_micro_batch_size_per_gpu=4096"])
    with pytest.raises(ConfigError) as info:
        check_memory(resolved, cuda=True, gpu_mem="80GB")
    message = str(info.value)
    assert "\n" not in message and "micro-batch 4096 does not fit" in message
    assert re.search(r"micro-batch \d+ does \(ds\.train_micro_batch_size_per_gpu=\d+", message)


def test_preflight_refuses_a_model_too_big_for_any_micro_batch():
    resolved = resolved_for(
        REPO / "recipes/tiny.yaml", "ds_configs/zero1.json", 2, ["model.d_model=8192", "model.n_layers=32"], cuda=False
    )
    with pytest.raises(ConfigError, match="even at micro-batch 1"):
        check_memory(resolved, cuda=False)


SHIPPED = sorted((REPO / "recipes").glob("*.yaml"))
CPU_CHECKS = [
    (recipe, ds_config)
    for recipe in SHIPPED
    for ds_config in ("zero1.json", "zero2_bf16.json", "zero3.json")
    if "zero3" not in ds_config or load_recipe(recipe, []).moe.impl == "autoep"
]  # native MoE refuses ZeRO-3


@pytest.mark.parametrize("recipe, ds_config", CPU_CHECKS, ids=lambda v: getattr(v, "stem", v))
def test_shipped_recipes_pass_the_cpu_memory_check(recipe, ds_config):
    check_memory(resolved_for(recipe, f"ds_configs/{ds_config}", 2, cuda=False), cuda=False)


@pytest.mark.parametrize(
    "recipe", [r for r in [*SHIPPED, *PUBLISHED] if load_recipe(r, []).moe.impl == "deepspeed"], ids=lambda p: p.stem
)  # our GPT; HF families (AutoEP) have their own config classes
def test_planner_shape_agrees_with_the_model_config(recipe):
    from moe.model.configuration import config_from_recipe
    from moe.plan.shape import GptShape

    loaded = load_recipe(recipe, [])
    config, shape = config_from_recipe(loaded, vocab_size=1024), GptShape.of(loaded, 1024)
    for name in GptShape.__dataclass_fields__:
        assert getattr(shape, name) == getattr(config, name), name


def test_an_activation_checkpointing_section_lowers_the_planned_peak():
    path = REPO / "recipes" / "published" / "ds_moe_1p3b_moe128.yaml"
    plain = make_plan(resolved_for(path, "ds_configs/zero2_bf16.json", 128), parse_bytes("80GB"))
    checkpointed = make_plan(
        resolved_for(
            path, "ds_configs/zero2_bf16.json", 128, ["ds.activation_checkpointing={partition_activations: false}"]
        ),
        parse_bytes("80GB"),
    )
    assert checkpointed.memory.checkpointing and checkpointed.memory.peak < plain.memory.peak
    assert checkpointed.suggested_micro_batch > plain.suggested_micro_batch
