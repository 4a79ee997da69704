"""The one resolve step: recipe (what) + ds_config JSON (how) + world size -> one validated config.

`resolve` is pure: it reads the two values and the launch shape (world size, CUDA or not), merges them, refuses
every combination that cannot work, and returns the result. It reads no file, builds nothing and probes no op;
preflight (moe/launch/preflight.py) checks the environment. The steps that write into the ds_config say so in their
names (merge_*, fill_*, derive_*, choose_*, apply_elasticity); the check_* steps only read.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from moe.config.budget import derive_run_length
from moe.config.checks import check_data, check_model, check_moe, check_train
from moe.config.compile_section import check_compile, compile_autoep_around_moe_layers
from moe.config.elastic import apply_elasticity
from moe.config.loader import load_ds_config, load_recipe, split_overrides, to_dict
from moe.config.memory_saving import check_memory_saving, check_recompute
from moe.config.mirrors import (
    check_no_scheduler,
    choose_adam_implementation,
    derive_train_batch_size,
    merge_mirrors,
    merge_precision,
)
from moe.config.moe_paths import check_moe_path, merge_expert_parallel_section
from moe.config.pipeline_parallel import check_pipeline, fill_pipeline_defaults, pipeline_stages
from moe.config.ranges import check_ranges
from moe.config.schema import Recipe


@dataclass
class Resolved:
    recipe: Recipe
    ds_config: dict
    world_size: int
    ds_config_path: str

    @property
    def run_dir(self) -> Path:
        return Path(self.recipe.logging.runs_dir) / self.recipe.logging.run_name

    @property
    def pipeline_stages(self) -> int:
        return pipeline_stages(self.ds_config)

    @property
    def dp_size(self) -> int:  # ranks that see different data: a pipeline's stages share theirs; EP sits inside DP
        return self.world_size // self.pipeline_stages

    @property
    def precision(self) -> str:
        return self.recipe.train.precision

    @property
    def global_batch_tokens(self) -> int:
        return self.ds_config["train_batch_size"] * self.recipe.data.seq_len

    def as_dict(self) -> dict:
        return {"recipe": to_dict(self.recipe), "ds_config": self.ds_config, "world_size": self.world_size}


def resolve(
    recipe: Recipe, ds_config: dict, world_size: int, ds_config_path: str = "ds_config", cuda: bool = False
) -> Resolved:
    """The validated (recipe, ds_config) of a run on `world_size` ranks; `cuda`: the ranks are GPUs."""
    recipe, ds, where = copy.deepcopy(recipe), copy.deepcopy(ds_config), ds_config_path
    apply_elasticity(recipe, ds, world_size, where)  # before the mirrors merge: an elastic section owns the batch
    merge_mirrors(recipe, ds, where)
    merge_precision(recipe, ds, where, cuda)
    check_model(recipe)
    check_moe_path(recipe, ds, where)
    check_moe(recipe, world_size)
    check_data(recipe.data, recipe.model.max_seq_len)
    check_train(recipe.train)
    check_ranges(recipe, ds, where)  # every other numeric value
    check_pipeline(recipe, ds, world_size, where)
    stages = pipeline_stages(ds)
    check_memory_saving(ds, recipe.moe.impl, stages, where)  # offload, activation checkpointing
    check_compile(ds, recipe.moe.impl, stages, where)  # torch.compile
    check_recompute(recipe.train.recompute, ds, where)  # selective activation checkpointing
    check_no_scheduler(ds, where)

    merge_expert_parallel_section(recipe, ds, where)  # AutoEP: the ds_config's expert_parallel section
    fill_pipeline_defaults(ds)
    compile_autoep_around_moe_layers(ds, recipe.moe.impl)
    derive_train_batch_size(recipe, ds, world_size // stages, where)
    derive_run_length(recipe, ds)  # train.max_tokens -> max_steps; warmup/decay fractions
    choose_adam_implementation(ds, cuda)
    ds.setdefault("steps_per_print", 10**9)
    return Resolved(recipe, ds, world_size, str(ds_config_path))


def load_resolved(
    recipe_path: str | Path | None,
    ds_config_path: str | Path,
    overrides: list[str] = (),
    world_size: int = 1,
    cuda: bool = False,
) -> Resolved:
    """Read the recipe and the ds_config, apply the dotted overrides (`ds.` ones to the ds_config) and resolve."""
    recipe_overrides, ds_overrides = split_overrides(list(overrides))
    recipe = load_recipe(recipe_path, recipe_overrides)
    ds_config = load_ds_config(ds_config_path, ds_overrides)
    return resolve(recipe, ds_config, world_size, str(ds_config_path), cuda=cuda)
