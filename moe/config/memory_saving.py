"""The ds_config's memory-saving sections, checked before any rank starts: ZeRO-Offload / ZeRO-Infinity
(`zero_optimization.offload_optimizer`, `offload_param`) and activation checkpointing (`activation_checkpointing`).

DeepSpeed accepts some combinations it cannot run, or runs them differently from what the section promises;
those are refused here in one line, naming what works instead. Whether an NVMe folder is writable and DeepSpeed's
async_io op can be built is preflight's question (moe/launch/environment.py).
"""

from __future__ import annotations

from moe.config.loader import ConfigError

OFFLOAD_DEVICES = ("none", "cpu", "nvme")
# Activation-checkpointing keys that shard or move saved activations across tensor-model-parallel ranks: these
# recipes have no tensor parallelism (no mpu), so DeepSpeed would fail or silently do nothing with them.
TENSOR_PARALLEL_ONLY = ("partition_activations", "contiguous_memory_optimization", "cpu_checkpointing")
RECOMPUTE = ("blocks", "mlp")  # train.recompute: what the section recomputes (moe/train/activation_checkpointing.py)


def offload_devices(ds: dict) -> dict[str, str]:
    """{'offload_optimizer' | 'offload_param': device} of the sections whose device is not none."""
    zero = ds.get("zero_optimization") or {}
    devices = {
        section: (zero.get(section) or {}).get("device", "none") for section in ("offload_optimizer", "offload_param")
    }
    return {section: device for section, device in devices.items() if device != "none"}


def check_memory_saving(ds: dict, impl: str, pipeline_stages: int, where: str) -> None:
    """Validate the offload and activation-checkpointing sections of the ds_config `ds`."""
    zero = ds.get("zero_optimization") or {}
    stage = zero.get("stage", 0)
    for section in ("offload_optimizer", "offload_param"):
        device = (zero.get(section) or {}).get("device", "none")
        if device not in OFFLOAD_DEVICES:
            raise ConfigError(
                f"{where}: zero_optimization.{section}.device must be one of "
                f"{', '.join(OFFLOAD_DEVICES)}, got {device!r}"
            )
        if device == "none":
            continue
        if section == "offload_param" and stage != 3:
            raise ConfigError(
                f"{where}: offload_param needs ZeRO stage 3 (stage {stage} keeps whole parameters on "
                f"every rank); use ds_configs/zero3_offload_nvme.json or offload_optimizer alone"
            )
        if stage == 0:
            raise ConfigError(
                f"{where}: offload_optimizer needs ZeRO stage 1, 2 or 3 (stage 0 has no partitioned "
                f"optimizer to move); use ds_configs/zero2_offload.json"
            )
        if device == "nvme" and not zero[section].get("nvme_path"):
            raise ConfigError(
                f"{where}: zero_optimization.{section}.device=nvme needs nvme_path (a directory on a local NVMe drive)"
            )
    _check_activation_checkpointing(ds, impl, pipeline_stages, where)


def check_recompute(recompute: str, ds: dict, where: str) -> None:
    """train.recompute (selective activation checkpointing) names what the ds_config's section recomputes."""
    if recompute not in RECOMPUTE:
        raise ConfigError(f"train.recompute={recompute!r}: expected one of {', '.join(RECOMPUTE)}")
    if recompute != "blocks" and ds.get("activation_checkpointing") is None:
        raise ConfigError(
            f"train.recompute={recompute} selects what activation checkpointing recomputes, but {where} "
            f"has no activation_checkpointing section; use ds_configs/zero1_activation_ckpt.json"
        )


def _check_activation_checkpointing(ds: dict, impl: str, pipeline_stages: int, where: str) -> None:
    section = ds.get("activation_checkpointing")
    if section is None:
        return
    for key in TENSOR_PARALLEL_ONLY:
        if section.get(key):
            raise ConfigError(
                f"{where}: activation_checkpointing.{key} needs tensor model parallelism, which these "
                f"recipes do not use; remove it (every block is recomputed without it)"
            )
    if pipeline_stages > 1:
        raise ConfigError(
            f"{where}: activation_checkpointing with a pipeline (stages={pipeline_stages}) is not "
            f"supported by these recipes; remove one of the two sections"
        )
    if impl == "autoep":
        raise ConfigError(
            f"{where}: activation_checkpointing is wired for moe.impl=deepspeed (our GPT); AutoEP "
            f"models train without it: remove the section or use moe.impl=deepspeed"
        )
