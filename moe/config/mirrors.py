"""The settings a recipe and a ds_config can both hold, merged into one value; and what the ds_config derives.

Each mirrored setting (micro-batch, accumulation, clipping, precision, optimizer fields) may be set in the recipe or
in the ds_config. Set in both and different is an error naming both places; set in neither takes the default below.
The resolved ds_config holds the final value. train_batch_size is derived (micro x accumulation x data-parallel
ranks): a ds_config that sets it differently is an error.
"""

from __future__ import annotations

from typing import Any

from moe.config.loader import ConfigError
from moe.config.memory_saving import offload_devices
from moe.config.schema import Recipe

# (recipe field, ds_config key path, default when neither sets it)
MIRRORED = [
    ("train.micro_batch_size", "train_micro_batch_size_per_gpu", 8),
    ("train.grad_accum", "gradient_accumulation_steps", 1),
    ("train.grad_clip", "gradient_clipping", 1.0),
    ("optim.type", "optimizer.type", "AdamW"),
    ("optim.lr", "optimizer.params.lr", 3e-4),
    ("optim.betas", "optimizer.params.betas", [0.9, 0.95]),
    ("optim.eps", "optimizer.params.eps", 1e-8),
    ("optim.weight_decay", "optimizer.params.weight_decay", 0.1),
]
PRECISIONS = ("fp32", "bf16", "fp16")


def get_path(tree: dict, dotted: str) -> Any:
    """tree["a"]["b"] for "a.b"; None where a part is missing."""
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[last] = value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


def merge_mirrors(recipe: Recipe, ds: dict, where: str) -> None:
    """Write each mirrored setting into both the recipe and the ds_config (see the module doc)."""
    for recipe_key, ds_key, default in MIRRORED:
        section, name = recipe_key.split(".")
        mine = getattr(getattr(recipe, section), name)
        theirs = get_path(ds, ds_key)
        if mine is not None and theirs is not None and not _same(mine, theirs):
            raise ConfigError(
                f"{recipe_key}={mine} in the recipe disagrees with {ds_key}={theirs} in {where}; set it in one place"
            )
        value = mine if mine is not None else theirs if theirs is not None else default
        setattr(getattr(recipe, section), name, value)
        _set_path(ds, ds_key, value)


def merge_precision(recipe: Recipe, ds: dict, where: str, cuda: bool) -> None:
    """train.precision and the ds_config's bf16 / fp16 sections: one value, written into both."""
    bf16 = bool(get_path(ds, "bf16.enabled"))
    fp16 = bool(get_path(ds, "fp16.enabled"))
    if bf16 and fp16:
        raise ConfigError(f"{where} enables both bf16 and fp16; pick one")
    theirs = "bf16" if bf16 else "fp16" if fp16 else ("fp32" if "bf16" in ds or "fp16" in ds else None)
    mine = recipe.train.precision
    if mine is not None and mine not in PRECISIONS:
        raise ConfigError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {mine!r}")
    if mine is not None and theirs is not None and mine != theirs:
        raise ConfigError(
            f"train.precision={mine} in the recipe disagrees with {where} ({theirs}); set it in one place"
        )
    precision = mine or theirs or "fp32"
    if precision == "fp16" and not cuda:
        raise ConfigError("fp16 needs a CUDA GPU (DeepSpeed's CPU accelerator has no fp16); use bf16 or fp32 on CPU")
    recipe.train.precision = precision
    ds.setdefault("bf16", {})["enabled"] = precision == "bf16"
    ds.setdefault("fp16", {})["enabled"] = precision == "fp16"


def derive_train_batch_size(recipe: Recipe, ds: dict, dp_size: int, where: str) -> None:
    t = recipe.train
    train_batch = t.micro_batch_size * t.grad_accum * dp_size
    if "train_batch_size" in ds and ds["train_batch_size"] != train_batch:
        raise ConfigError(
            f"{where}: train_batch_size={ds['train_batch_size']} but micro-batch {t.micro_batch_size} x "
            f"accumulation {t.grad_accum} x {dp_size} ranks = {train_batch}; remove it or make them agree"
        )
    ds["train_batch_size"] = train_batch


def check_no_scheduler(ds: dict, where: str) -> None:
    if "scheduler" in ds:
        raise ConfigError(
            f"{where}: the LR schedule belongs to the recipe (train.max_steps, train.warmup_steps, "
            f"train.min_lr_ratio); remove the 'scheduler' section"
        )


def choose_adam_implementation(ds: dict, cuda: bool) -> None:
    """Which Adam DeepSpeed builds, written into optimizer.params (where the ds_config does not say):

    - ZeRO-Offload steps the optimizer on the host: DeepSpeedCPUAdam (SIMD C++, JIT-built once), torch_adam false,
      whatever the ds_config says (DeepSpeed would otherwise step torch's optimizer on the host copy, as told);
    - a GPU: DeepSpeed's FusedAdam (torch_adam false);
    - CPU: torch's AdamW, which avoids JIT-building DeepSpeed's CPU FusedAdam, with its fused kernel (fused=True):
      the same update, and less optimizer time than its default foreach loop (benchmarks/SPEED_NOTES.md).
      DeepSpeedCPUAdam takes no such argument."""
    params = ds["optimizer"]["params"]
    if "offload_optimizer" in offload_devices(ds):
        params["torch_adam"] = False
    params.setdefault("torch_adam", not cuda)
    if params["torch_adam"]:
        params.setdefault("fused", True)
