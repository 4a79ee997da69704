"""`moe.impl` picks the MoE path, and each path has its own rules:

- `deepspeed` (native): our GPT (`model.family: gpt`) with `deepspeed.moe.layer.MoE`; ZeRO 0/1/2 (DeepSpeed
  refuses native MoE under ZeRO-3); capacity, RTS, noisy gates, Residual-MoE, PR-MoE and our router losses.
- `autoep`: a stock HF family trained through DeepSpeed's AutoEP (the ds_config `expert_parallel` section, which
  `merge_expert_parallel_section` writes from the recipe); ZeRO 1/2/3; dropless, so the native routing options are
  refused.

The rules that need the disk (an `model.init_from` folder's config, the family's transformers config class) are
preflight's (moe/launch/environment.py).
"""

from __future__ import annotations

from moe.config.autoep_families import FAMILIES
from moe.config.checks import ROUTER_LOSS_KEYS
from moe.config.loader import ConfigError
from moe.config.schema import MoEConfig, Recipe

IMPLS = ("deepspeed", "autoep")
# Native-path options (deepspeed.moe.layer.MoE) and their defaults; AutoEP is dropless and has none of them.
NATIVE_ONLY = {
    "capacity_factor": 1.0,
    "eval_capacity_factor": 1.0,
    "min_capacity": 4,
    "noisy_gate_policy": None,
    "use_residual": False,
    "routed_scaling_factor": 1.0,
}


def zero_stage(ds: dict) -> int:
    return (ds.get("zero_optimization") or {}).get("stage", 0) or 0


def check_moe_path(recipe: Recipe, ds: dict, where: str) -> None:
    m, moe = recipe.model, recipe.moe
    if moe.impl not in IMPLS:
        raise ConfigError(f"moe.impl must be one of {', '.join(IMPLS)}, got {moe.impl!r}")
    if m.upcycle and not m.init_from:
        raise ConfigError("model.upcycle needs model.init_from: the dense HF Llama folder to copy into the experts")
    if m.init_from and recipe.data.tokenizer == "bpe":
        raise ConfigError("model.init_from needs the checkpoint's own tokenizer: set data.tokenizer to its folder")
    if moe.impl == "deepspeed":
        _check_native(recipe, ds, where)
    else:
        _check_autoep(recipe, ds, where)


def _check_native(recipe: Recipe, ds: dict, where: str) -> None:
    m, moe = recipe.model, recipe.moe
    if m.family != "gpt":
        raise ConfigError(
            f"model.family={m.family} is an HF family, trained through AutoEP: set moe.impl=autoep "
            f"(moe.impl=deepspeed trains model.family=gpt)"
        )
    if m.hf_config:
        raise ConfigError("model.hf_config applies to moe.impl=autoep families only")
    if ds.get("expert_parallel", {}).get("enabled"):
        raise ConfigError(
            f"{where} enables expert_parallel (AutoEP), which needs moe.impl=autoep and an HF "
            f"model.family; remove the section for moe.impl=deepspeed"
        )
    if moe.enabled and zero_stage(ds) == 3:
        raise ConfigError(
            f"{where}: DeepSpeed refuses native MoE (deepspeed.moe.layer.MoE) under ZeRO-3; "
            f"use ds_configs/zero2.json (ZeRO 0/1/2), or moe.enabled=false for a dense model"
        )


def _check_autoep(recipe: Recipe, ds: dict, where: str) -> None:
    m, moe = recipe.model, recipe.moe
    if moe.enabled:
        _refuse_native_routing_options(moe)
    if m.family not in FAMILIES:
        raise ConfigError(f"moe.impl=autoep needs model.family in {', '.join(FAMILIES)}, got {m.family!r}")
    if not moe.enabled:
        raise ConfigError(
            "moe.impl=autoep needs moe.enabled=true; a dense baseline is moe.impl=deepspeed with moe.enabled=false"
        )
    if m.upcycle:
        raise ConfigError("model.upcycle applies to moe.impl=deepspeed (our GPT); remove it for moe.impl=autoep")
    family = FAMILIES[m.family]
    if moe.interval != 1 and not family.any_interval:
        raise ConfigError(
            f"model.family={m.family} makes every layer MoE: set moe.interval=1 (qwen3_moe interleaves dense layers)"
        )
    if moe.aux_loss_coef and not family.aux_loss:
        raise ConfigError(
            f"model.family={m.family} computes no aux loss in transformers (it balances with a "
            f"routing bias): set moe.aux_loss_coef=0"
        )
    if m.family == "deepseek_v3" and m.n_kv_heads not in (None, m.n_heads):
        raise ConfigError(
            "model.family=deepseek_v3 uses multi-head latent attention, which has no grouped-query "
            "heads: remove model.n_kv_heads"
        )
    if zero_stage(ds) == 0:
        raise ConfigError(
            f"{where}: AutoEP is supported (and tested) under ZeRO 1, 2 and 3; use ds_configs/zero1.json, "
            f"zero2.json or zero3.json"
        )


def _refuse_native_routing_options(moe: MoEConfig) -> None:
    if isinstance(moe.num_experts, list):
        raise ConfigError(
            f"moe.num_experts={moe.num_experts} (PR-MoE, one count per layer) needs moe.impl=deepspeed; "
            f"AutoEP gives every MoE layer of an HF family the same moe.num_experts"
        )
    for key in ROUTER_LOSS_KEYS:
        if getattr(moe, key):
            why = (
                "DeepSpeed's AutoEP rejects load_balance_coeff, its aux-loss-free balancing"
                if key == "bias_update_rate"
                else "AutoEP routes with the HF family's own router"
            )
            raise ConfigError(
                f"moe.{key}={getattr(moe, key)} needs moe.impl=deepspeed ({why}); remove it for moe.impl=autoep"
            )
    for key, default in NATIVE_ONLY.items():
        if getattr(moe, key) != default:
            raise ConfigError(
                f"moe.{key}={getattr(moe, key)} is a deepspeed.moe option; AutoEP routes dropless "
                f"without it: remove it, or use moe.impl=deepspeed"
            )


def merge_expert_parallel_section(recipe: Recipe, ds: dict, where: str) -> None:
    """AutoEP: write the ds_config `expert_parallel` section from the recipe (enabled, autoep_size = moe.ep_size,
    preset_model = model.family); a section the ds_config already has must agree on those three."""
    if recipe.moe.impl != "autoep":
        return
    m, moe = recipe.model, recipe.moe
    wanted = {"enabled": True, "autoep_size": moe.ep_size, "preset_model": m.family}
    recipe_side = {
        "enabled": "moe.impl=autoep",
        "autoep_size": f"moe.ep_size={moe.ep_size}",
        "preset_model": f"model.family={m.family}",
    }
    section = ds.setdefault("expert_parallel", {})
    for key, value in wanted.items():
        if key in section and section[key] != value:
            raise ConfigError(
                f"expert_parallel.{key}={section[key]} in {where} disagrees with {recipe_side[key]} in "
                f"the recipe; set it in one place"
            )
        section[key] = value
