"""The range of every numeric setting, one table each for the recipe and the ds_config (a resolve step; pure).

RECIPE_RANGES names every int and float field of the recipe (tests/config/test_ranges.py fails on a new numeric
field that has no entry). DS_RANGES names the ds_config values DeepSpeed reads from the file that we pass on: the
mirrored ones (batch, clipping, optimizer) are checked through the recipe, since the merge writes one value into
both; the rest (ZeRO buckets and thresholds, offload buffers, fp16 loss scaling, gradient scaling) here. A value
out of range is one line naming the key and the range, before any rank: DeepSpeed itself accepts most of them
(a negative `gradient_clipping` trains with clipping silently off) or fails deep inside `deepspeed.initialize`.
Not-a-number and infinity are out of every range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from moe.config.loader import ConfigError
from moe.config.mirrors import MIRRORED, get_path
from moe.config.schema import Recipe


@dataclass(frozen=True)
class Bound:
    """lo <= value (lo < value when lo_open) and value <= hi (value < hi when hi_open); None = unbounded."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def admits(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)

    def describe(self) -> str:
        if self.hi is None:
            if self.lo == 0:
                return "positive" if self.lo_open else "0 or more"
            return f"{'above' if self.lo_open else 'at least'} {self.lo:g}"
        return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"


POSITIVE = Bound(0, lo_open=True)
NON_NEGATIVE = Bound(0)
AT_LEAST_1 = Bound(1)
FRACTION = Bound(0, 1)  # [0, 1]
BETA = Bound(0, 1, hi_open=True)  # [0, 1)

# recipe field -> range (None for a field that is checked elsewhere, with its own message, as it is not a number
# or its range depends on other fields: moe/config/checks.py and budget.py)
RECIPE_RANGES: dict[str, Bound | None] = {
    "model.d_model": AT_LEAST_1,
    "model.n_layers": AT_LEAST_1,
    "model.n_heads": AT_LEAST_1,
    "model.n_kv_heads": AT_LEAST_1,
    "model.d_ff": AT_LEAST_1,
    "model.max_seq_len": AT_LEAST_1,
    "model.rope_theta": POSITIVE,
    "model.norm_eps": POSITIVE,
    "model.init_std": POSITIVE,
    "model.vocab_size": Bound(2),
    "moe.num_experts": None,  # an int or one per MoE layer: check_moe
    "moe.top_k": AT_LEAST_1,
    "moe.interval": AT_LEAST_1,
    "moe.expert_d_ff": AT_LEAST_1,
    "moe.ep_size": AT_LEAST_1,
    "moe.capacity_factor": POSITIVE,
    "moe.eval_capacity_factor": POSITIVE,
    "moe.min_capacity": NON_NEGATIVE,
    "moe.aux_loss_coef": NON_NEGATIVE,
    "moe.routed_scaling_factor": POSITIVE,
    "moe.z_loss_coef": NON_NEGATIVE,
    "moe.seq_aux_loss_coef": NON_NEGATIVE,
    "moe.bias_update_rate": NON_NEGATIVE,
    "data.max_documents": AT_LEAST_1,
    "data.weight": POSITIVE,
    "data.seq_len": Bound(2),
    "data.val_fraction": Bound(0, 1, lo_open=True, hi_open=True),
    "data.vocab_size": Bound(256, lo_open=True),  # a byte-level BPE starts from its 256 byte tokens
    "data.tokenizer_sample_mb": POSITIVE,
    "data.num_proc": NON_NEGATIVE,
    "optim.lr": POSITIVE,
    "optim.betas": BETA,  # each of the two
    "optim.eps": POSITIVE,
    "optim.weight_decay": NON_NEGATIVE,
    "train.max_steps": AT_LEAST_1,
    "train.max_tokens": AT_LEAST_1,
    "train.warmup_steps": NON_NEGATIVE,
    "train.warmup_fraction": BETA,
    "train.decay_fraction": BETA,
    "train.min_lr_ratio": FRACTION,
    "train.seed": Bound(0, 2**32 - 1),
    "train.data_seed": Bound(0, 2**32 - 1),
    "train.micro_batch_size": AT_LEAST_1,
    "train.grad_accum": AT_LEAST_1,
    "train.grad_clip": NON_NEGATIVE,  # 0 = no clipping
    "train.eval_interval": NON_NEGATIVE,
    "train.eval_blocks": NON_NEGATIVE,
    "train.train_eval_blocks": NON_NEGATIVE,
    "train.save_interval": NON_NEGATIVE,
    "train.keep_checkpoints": NON_NEGATIVE,
    "train.log_interval": AT_LEAST_1,
    "train.hang_timeout_s": NON_NEGATIVE,  # 0 = no watchdog
    "train.startup_timeout_s": NON_NEGATIVE,
    "train.max_skipped_steps": AT_LEAST_1,
    "train.loss_spike_factor": Bound(1, lo_open=True),
    "logging.peak_tflops": POSITIVE,
}

# ds_config key -> range, for the values DeepSpeed reads that no recipe field mirrors (deepspeed/runtime/config.py,
# zero/config.py, zero/offload_config.py, fp16/loss_scaler.py)
DS_RANGES: dict[str, Bound] = {
    "zero_optimization.stage": Bound(0, 3),
    "zero_optimization.reduce_bucket_size": AT_LEAST_1,
    "zero_optimization.allgather_bucket_size": AT_LEAST_1,
    "zero_optimization.sub_group_size": AT_LEAST_1,
    "zero_optimization.stage3_prefetch_bucket_size": NON_NEGATIVE,
    "zero_optimization.stage3_param_persistence_threshold": NON_NEGATIVE,
    "zero_optimization.stage3_model_persistence_threshold": NON_NEGATIVE,
    "zero_optimization.stage3_max_live_parameters": NON_NEGATIVE,
    "zero_optimization.stage3_max_reuse_distance": NON_NEGATIVE,
    "zero_optimization.offload_param.buffer_count": AT_LEAST_1,
    "zero_optimization.offload_param.buffer_size": AT_LEAST_1,
    "zero_optimization.offload_param.max_in_cpu": NON_NEGATIVE,
    "zero_optimization.offload_optimizer.buffer_count": AT_LEAST_1,
    "zero_optimization.offload_optimizer.ratio": FRACTION,
    "fp16.loss_scale": NON_NEGATIVE,  # 0 = dynamic
    "fp16.initial_scale_power": Bound(0, 64),
    "fp16.loss_scale_window": AT_LEAST_1,
    "fp16.hysteresis": AT_LEAST_1,
    "fp16.min_loss_scale": POSITIVE,
    "gradient_predivide_factor": POSITIVE,
    "steps_per_print": AT_LEAST_1,
}


MIRROR_OF = {recipe_key: ds_key for recipe_key, ds_key, _ in MIRRORED}


def check_ranges(recipe: Recipe, ds: dict, where: str) -> None:
    """Every numeric recipe field and ds_config value in its range (after the mirrors merge), or one ConfigError."""
    for key, bound in RECIPE_RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(recipe, section), name)
        if bound is None or value is None:
            continue
        mirror = MIRROR_OF.get(key)
        for v in value if isinstance(value, list) else [value]:
            _check(key, v, bound, f" (or {mirror} in {where})" if mirror else "")
    for i, source in enumerate(recipe.data.mixture):
        for name in ("weight", "max_documents"):
            _check(f"data.mixture[{i}].{name}", getattr(source, name), RECIPE_RANGES[f"data.{name}"], "")
    for key, bound in DS_RANGES.items():
        _check(key, get_path(ds, key), bound, f" in {where}")


def _check(key: str, value: Any, bound: Bound, where: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}{where} must be a number, got {value!r}")
    if not bound.admits(value):
        raise ConfigError(f"{key}{where} must be {bound.describe()}, got {value}")
