"""The ds_config's `compile` section (torch.compile, moe/train/compile.py), checked before any rank starts."""

from __future__ import annotations

from moe.config.loader import ConfigError


def check_compile(ds: dict, impl: str, pipeline_stages: int, where: str) -> None:
    """Refuse what these recipes do not compile: DeepCompile, a pipeline, and AutoEP's full-graph mode."""
    section = ds.get("compile")
    if section is None:
        return
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: 'compile' must be an object of DeepSpeed compile options ({{}} = defaults)")
    if section.get("deepcompile"):
        raise ConfigError(
            f"{where}: compile.deepcompile is not wired into these recipes (its ZeRO passes are "
            f"untested here); remove it to compile the blocks with torch.compile"
        )
    if pipeline_stages > 1:
        raise ConfigError(
            f"{where}: compile with pipeline.stages={pipeline_stages} is not wired (PipelineModule "
            f"stages are built from layer specs); remove the 'compile' section or use "
            f"ds_configs/zero1.json"
        )
    non_moe = section.get("autoep_non_moe")
    if impl == "autoep" and non_moe is False:
        raise ConfigError(
            f"{where}: compile.autoep_non_moe=false would trace AutoEP's token movement and "
            f"collectives; remove the key (these recipes compile around the MoE layers)"
        )
    if impl != "autoep" and non_moe:
        raise ConfigError(
            f"{where}: compile.autoep_non_moe is for moe.impl=autoep; moe.impl=deepspeed compiles "
            f"each block around its MoE layer by itself: remove the key"
        )


def compile_autoep_around_moe_layers(ds: dict, impl: str) -> None:
    """AutoEP: set DeepSpeed's compile.autoep_non_moe, so every decoder layer compiles and its MoE layer stays eager."""
    if impl == "autoep" and isinstance(ds.get("compile"), dict):
        ds["compile"]["autoep_non_moe"] = True
