"""Elastic batch: one global batch that stays valid over a range of GPU counts (the ds_config `elasticity` section).

    "elasticity": {"enabled": true, "max_train_batch_size": 16, "micro_batch_sizes": [2, 4],
                   "min_gpus": 1, "max_gpus": 8, "version": 0.1}

picks the global batch (at most `max_train_batch_size`) that the most GPU counts in [min_gpus, max_gpus] can split
into micro-batch x accumulation x ranks with a micro-batch from the list; for the launched world size it then sets
the largest such micro-batch and the accumulation that completes the batch. A job restarted on another valid GPU
count therefore keeps the same global batch (and, after `python -m moe.reshard`, the same optimization).

Why this is ours: DeepSpeed 0.19.8 removed elastic training (no `deepspeed.elasticity`, and DeepSpeedConfig
rejects an `elasticity` block: "Set train_batch_size / train_micro_batch_size_per_gpu / gradient_accumulation_steps
directly"). The section keeps DeepSpeed's keys and its version-0.1 rule (`compute_elastic_config`), computed here;
DeepSpeed only ever sees the resulting micro-batch and accumulation.
"""

from __future__ import annotations

from math import lcm

from moe.config.loader import ConfigError
from moe.config.pipeline_parallel import pipeline_stages
from moe.config.schema import Recipe

SECTION = "elasticity"
KEYS = {
    "enabled": False,
    "max_train_batch_size": None,
    "micro_batch_sizes": None,
    "min_gpus": 1,
    "max_gpus": 10000,
    "min_time": 0,
    "version": 0.1,
    "prefer_larger_batch": True,
    "ignore_non_elastic_batch_info": False,
    "model_parallel_size": 1,
    "num_gpus_per_node": 1,
}
BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")
# Highly composite numbers (OEIS A002182) up to 720720, DeepSpeed's multipliers: a base micro-batch scaled by one of
# them has many divisors, hence many GPU counts that divide the batch evenly.
HIGHLY_COMPOSITE = (
    1,
    2,
    4,
    6,
    12,
    24,
    36,
    48,
    60,
    120,
    180,
    240,
    360,
    720,
    840,
    1260,
    1680,
    2520,
    5040,
    7560,
    10080,
    15120,
    20160,
    25200,
    27720,
    45360,
    50400,
    55440,
    83160,
    110880,
    166320,
    221760,
    277200,
    332640,
    498960,
    554400,
    665280,
    720720,
)


def apply_elasticity(recipe: Recipe, ds: dict, world_size: int, where: str) -> None:
    """If `ds` enables elasticity, set its micro-batch and accumulation for `world_size`; always drop the section
    (DeepSpeed 0.19.8 refuses it). Call before the recipe/ds_config mirrors merge, so a value set anywhere else is
    seen and refused: the elastic section owns the batch."""
    section = ds.pop(SECTION, None)
    if section is None:
        return
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: '{SECTION}' must be a JSON object")
    unknown = sorted(set(section) - set(KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key '{SECTION}.{unknown[0]}'; allowed keys: {', '.join(KEYS)}")
    cfg = {**KEYS, **section}
    if not cfg["enabled"]:
        return
    _check_section(cfg, where)
    if pipeline_stages(ds) > 1:  # DeepSpeed's v0.1 rule counts data-parallel GPUs only
        raise ConfigError(
            f"{where}: elasticity (version 0.1) does not support pipeline parallelism; remove "
            f"pipeline.stages or the '{SECTION}' section"
        )
    for name in ("micro_batch_size", "grad_accum"):
        if getattr(recipe.train, name) is not None:
            raise ConfigError(
                f"train.{name}={getattr(recipe.train, name)} in the recipe, but {where} enables "
                f"elasticity, which sets the batch; set it in one place (remove train.{name})"
            )
    present = [key for key in BATCH_KEYS if key in ds]
    if present and not cfg["ignore_non_elastic_batch_info"]:
        raise ConfigError(
            f"{where}: {present[0]} is set beside an enabled '{SECTION}' section, which sets the batch; "
            f"remove it (or set {SECTION}.ignore_non_elastic_batch_info=true to ignore it)"
        )
    for key in present:
        del ds[key]
    batch, valid = elastic_batch(
        cfg["micro_batch_sizes"],
        cfg["max_train_batch_size"],
        cfg["min_gpus"],
        cfg["max_gpus"],
        cfg["prefer_larger_batch"],
    )
    if not valid:
        raise ConfigError(
            f"{where}: no global batch up to {SECTION}.max_train_batch_size={cfg['max_train_batch_size']} "
            f"splits evenly over any GPU count from {cfg['min_gpus']} to {cfg['max_gpus']}"
        )
    if world_size not in valid:
        raise ConfigError(
            f"world size {world_size} is not valid for the elastic batch {batch} of {where}; valid GPU "
            f"counts: {', '.join(map(str, valid))}"
        )
    micro = max(m for m in cfg["micro_batch_sizes"] if batch // world_size % m == 0)
    ds["train_micro_batch_size_per_gpu"] = micro
    ds["gradient_accumulation_steps"] = batch // (world_size * micro)


def elastic_batch(
    micro_batches: list[int], max_batch: int, min_gpus: int = 1, max_gpus: int = 10000, prefer_larger: bool = True
) -> tuple[int, list[int]]:
    """(global batch, the GPU counts it is valid for), DeepSpeed's elasticity v0.1 rule: candidates are each
    micro-batch and their least common multiple, scaled by the largest highly composite number that keeps them
    within `max_batch`; the winner is valid for the most GPU counts (ties: the larger batch, or the smaller)."""
    bases = [b for b in (*micro_batches, lcm(*micro_batches)) if b <= max_batch]
    candidates = {b * max(h for h in HIGHLY_COMPOSITE if h <= max_batch // b) for b in bases}
    valid = {c: valid_gpu_counts(c, micro_batches, min_gpus, max_gpus) for c in candidates}
    if not valid:
        return 0, []
    batch = max(valid, key=lambda c: (len(valid[c]), c if prefer_larger else -c))
    return batch, valid[batch]


def valid_gpu_counts(batch: int, micro_batches: list[int], min_gpus: int, max_gpus: int) -> list[int]:
    """GPU counts n in [min_gpus, max_gpus] with batch = micro x accumulation x n for some listed micro-batch."""
    top = min(max_gpus, batch)
    return [n for n in range(max(1, min_gpus), top + 1) if any(batch % (m * n) == 0 for m in micro_batches)]


def _check_section(cfg: dict, where: str) -> None:
    if float(cfg["version"]) != 0.1:
        raise ConfigError(
            f"{where}: {SECTION}.version={cfg['version']} is not supported; use 0.1 (version 0.2 "
            f"adds model-parallel and per-node rules that MoE training here does not use)"
        )
    if cfg["model_parallel_size"] != 1:
        raise ConfigError(
            f"{where}: {SECTION}.model_parallel_size must be 1 (expert parallelism sits inside data parallelism here)"
        )
    micros, max_batch = cfg["micro_batch_sizes"], cfg["max_train_batch_size"]
    if not isinstance(max_batch, int) or max_batch < 1:
        raise ConfigError(f"{where}: {SECTION}.max_train_batch_size must be a positive integer, got {max_batch!r}")
    if not isinstance(micros, list) or not micros or not all(isinstance(m, int) and m >= 1 for m in micros):
        raise ConfigError(f"{where}: {SECTION}.micro_batch_sizes must be a list of positive integers, got {micros!r}")
    if max(micros) > max_batch:
        raise ConfigError(f"{where}: {SECTION}.micro_batch_sizes {micros} exceed max_train_batch_size={max_batch}")
    if not 1 <= cfg["min_gpus"] <= cfg["max_gpus"]:
        raise ConfigError(
            f"{where}: {SECTION} needs 1 <= min_gpus <= max_gpus, got {cfg['min_gpus']} and {cfg['max_gpus']}"
        )
