"""ZeRO-Offload / ZeRO-Infinity and activation-checkpointing sections: what resolve sets, and what it refuses
(one line, before any rank starts). NVMe folders and libaio: tests/launch/test_environment.py."""

import json

import pytest

from moe.config import ConfigError, load_ds_config, load_recipe, resolve
from tests.helpers import REPO


def resolved(ds_name: str, *overrides: str, recipe="tiny.yaml", ds_edit=None):
    ds = load_ds_config(REPO / "ds_configs" / ds_name)
    if ds_edit:
        ds_edit(ds)
    return resolve(load_recipe(REPO / "recipes" / recipe, list(overrides)), ds, 2, ds_name)


def test_cpu_offload_steps_with_deepspeed_cpu_adam():
    r = resolved("zero2_offload.json")
    assert r.ds_config["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert r.ds_config["optimizer"]["params"]["torch_adam"] is False  # DeepSpeedCPUAdam, not torch's AdamW
    assert resolved("zero2.json").ds_config["optimizer"]["params"]["torch_adam"] is True  # no offload: torch AdamW


def test_offload_needs_a_partitioned_optimizer():
    with pytest.raises(ConfigError, match="offload_optimizer needs ZeRO stage 1, 2 or 3.*zero2_offload.json"):
        resolved("zero2_offload.json", ds_edit=lambda ds: ds["zero_optimization"].update(stage=0))


def test_parameter_offload_needs_zero3(tmp_path):
    def edit(ds):
        ds["zero_optimization"]["offload_param"] = {"device": "cpu"}

    with pytest.raises(ConfigError, match="offload_param needs ZeRO stage 3"):
        resolved("zero2.json", ds_edit=edit)


def test_unknown_offload_device_is_refused():
    with pytest.raises(ConfigError, match="device must be one of none, cpu, nvme, got 'disk'"):
        resolved(
            "zero2_offload.json", ds_edit=lambda ds: ds["zero_optimization"]["offload_optimizer"].update(device="disk")
        )


def test_nvme_offload_needs_its_folder_named():
    with pytest.raises(ConfigError, match="offload_param.device=nvme needs nvme_path"):
        resolved(
            "zero3_offload_nvme.json",
            "moe.enabled=false",
            ds_edit=lambda ds: ds["zero_optimization"]["offload_param"].pop("nvme_path"),
        )
    r = resolved("zero3_offload_nvme.json", "moe.enabled=false")  # a folder that may not exist here: preflight's
    assert r.ds_config["optimizer"]["params"]["torch_adam"] is False  # DeepSpeedCPUAdam steps the host states


@pytest.mark.parametrize("key", ["partition_activations", "contiguous_memory_optimization", "cpu_checkpointing"])
def test_tensor_parallel_activation_options_are_refused(key):
    with pytest.raises(ConfigError, match=f"activation_checkpointing.{key} needs tensor model parallelism"):
        resolved("zero1_activation_ckpt.json", ds_edit=lambda ds: ds["activation_checkpointing"].update({key: True}))


def test_activation_checkpointing_is_refused_for_autoep():
    with pytest.raises(ConfigError, match="activation_checkpointing is wired for moe.impl=deepspeed"):
        resolved("zero1_activation_ckpt.json", recipe="autoep.yaml")


def test_fp16_config_has_dynamic_loss_scaling_and_is_refused_on_cpu():
    ds = json.loads((REPO / "ds_configs/zero1_fp16.json").read_text())
    assert ds["fp16"]["enabled"] and ds["fp16"]["loss_scale"] == 0  # 0 = dynamic
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        resolved("zero1_fp16.json")
    r = resolve(load_recipe(REPO / "recipes/tiny.yaml"), ds, 2, "zero1_fp16.json", cuda=True)
    assert r.recipe.train.precision == "fp16"


def test_accumulation_config_multiplies_into_the_global_batch():
    r = resolved("zero1_accum4.json")
    assert (r.recipe.train.micro_batch_size, r.recipe.train.grad_accum) == (2, 4)
    assert r.ds_config["train_batch_size"] == 2 * 4 * 2


def test_selective_recompute_needs_the_section_and_a_known_mode():
    assert resolved("zero1_activation_ckpt.json", "train.recompute=mlp").recipe.train.recompute == "mlp"
    with pytest.raises(
        ConfigError,
        match="train.recompute=mlp selects what activation checkpointing recomputes.*zero1_activation_ckpt.json",
    ):
        resolved("zero1.json", "train.recompute=mlp")
    with pytest.raises(ConfigError, match="train.recompute='attention': expected one of blocks, mlp"):
        resolved("zero1_activation_ckpt.json", "train.recompute=attention")
