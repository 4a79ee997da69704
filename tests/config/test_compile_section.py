"""The ds_config `compile` section (torch.compile, moe/train/compile.py): what resolve fills in and refuses."""

import pytest

from moe.config import ConfigError
from tests.config.test_memory_saving import resolved


def test_autoep_compiles_around_its_moe_layers():
    r = resolved("zero1_bf16_compile.json", recipe="autoep.yaml")
    assert r.ds_config["compile"] == {"autoep_non_moe": True}
    assert resolved("zero1_bf16_compile.json").ds_config["compile"] == {}  # our GPT: regions chosen by moe.train


def test_autoep_full_graph_and_native_autoep_key_are_refused():
    with pytest.raises(ConfigError, match="compile.autoep_non_moe=false would trace AutoEP"):
        resolved(
            "zero1_bf16_compile.json",
            recipe="autoep.yaml",
            ds_edit=lambda ds: ds["compile"].update(autoep_non_moe=False),
        )
    with pytest.raises(ConfigError, match="compile.autoep_non_moe is for moe.impl=autoep"):
        resolved("zero1_bf16_compile.json", ds_edit=lambda ds: ds["compile"].update(autoep_non_moe=True))


def test_deepcompile_and_pipeline_are_refused():
    with pytest.raises(ConfigError, match="compile.deepcompile is not wired"):
        resolved("zero1_bf16_compile.json", ds_edit=lambda ds: ds["compile"].update(deepcompile=True))
    with pytest.raises(ConfigError, match="compile with pipeline.stages=2 is not wired"):
        resolved("pipeline2.json", "moe.ep_size=1", ds_edit=lambda ds: ds.update(compile={}))
