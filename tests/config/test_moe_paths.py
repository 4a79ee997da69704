"""moe.impl picks the MoE path (moe/config/moe_paths.py); every AutoEP combination that cannot work is refused before
any rank spawns. The refusals that read an HF folder or config class are tests/launch/test_environment.py's."""

import pytest

from moe.config import ConfigError, load_ds_config, load_recipe, resolve
from tests.helpers import REPO


def _resolve(overrides=(), ds_name="zero1.json", ds_overrides=None, recipe="recipes/autoep.yaml", world_size=2):
    ds = load_ds_config(REPO / "ds_configs" / ds_name)
    ds.update(ds_overrides or {})
    return resolve(load_recipe(REPO / recipe, list(overrides)), ds, world_size, ds_name)


def test_autoep_section_is_generated_from_the_recipe():
    r = _resolve(["moe.ep_size=2"], "zero3.json")
    assert r.ds_config["expert_parallel"] == {"enabled": True, "autoep_size": 2, "preset_model": "mixtral"}


def test_a_matching_autoep_section_is_accepted():
    section = {
        "expert_parallel": {"enabled": True, "autoep_size": 2, "preset_model": "mixtral", "use_grouped_mm": True}
    }
    assert _resolve(ds_overrides=section).ds_config["expert_parallel"]["use_grouped_mm"] is True


@pytest.mark.parametrize(
    "overrides, ds_name, section, message",
    [
        (
            ["model.family=gpt"],
            "zero1.json",
            None,
            "moe.impl=autoep needs model.family in mixtral, qwen3_moe, deepseek_v3",
        ),
        (["moe.impl=autoep2"], "zero1.json", None, "moe.impl must be one of deepspeed, autoep"),
        ([], "zero0.json", None, "AutoEP is supported (and tested) under ZeRO 1, 2 and 3"),
        (["moe.enabled=false"], "zero1.json", None, "moe.impl=autoep needs moe.enabled=true"),
        (["moe.capacity_factor=1.25"], "zero1.json", None, "moe.capacity_factor=1.25 is a deepspeed.moe option"),
        (["moe.use_residual=true"], "zero1.json", None, "moe.use_residual=True is a deepspeed.moe option"),
        (["moe.interval=2"], "zero1.json", None, "model.family=mixtral makes every layer MoE: set moe.interval=1"),
        (["model.family=deepseek_v3"], "zero1.json", None, "computes no aux loss in transformers"),
        (["model.family=deepseek_v3", "moe.aux_loss_coef=0"], "zero1.json", None, "remove model.n_kv_heads"),
        (["model.init_from=/nonexistent/model"], "zero1.json", None, "needs the checkpoint's own tokenizer"),
        (
            ["model.upcycle=true", "model.init_from=/a", "data.tokenizer=/a"],
            "zero1.json",
            None,
            "model.upcycle applies to moe.impl=deepspeed",
        ),
        (
            [],
            "zero1.json",
            {"autoep_size": 1},
            "expert_parallel.autoep_size=1 in zero1.json disagrees with moe.ep_size=2",
        ),
        ([], "zero1.json", {"preset_model": "qwen3_moe"}, "disagrees with model.family=mixtral"),
        (["moe.num_experts=3"], "zero1.json", None, "moe.num_experts=3 is not divisible by moe.ep_size=2"),
    ],
)
def test_autoep_refusals(overrides, ds_name, section, message):
    ds_overrides = {"expert_parallel": section} if section else None
    with pytest.raises(ConfigError) as err:
        _resolve(overrides, ds_name, ds_overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.family=mixtral"], "model.family=mixtral is an HF family, trained through AutoEP: set moe.impl=autoep"),
        (["model.hf_config={a: 1}"], "model.hf_config applies to moe.impl=autoep families only"),
    ],
)
def test_native_path_refusals(overrides, message):
    with pytest.raises(ConfigError, match=message):
        _resolve(overrides, recipe="recipes/default.yaml")


def test_native_path_refuses_an_enabled_autoep_section():
    with pytest.raises(ConfigError, match="enables expert_parallel"):
        _resolve([], ds_overrides={"expert_parallel": {"enabled": True}}, recipe="recipes/default.yaml")
