"""One step estimate per GPU count for a recipe + ds_config, through the same resolve step a launch runs."""

from __future__ import annotations

from pathlib import Path

from moe.config import ConfigError, load_ds_config, load_recipe, resolve, split_overrides
from moe.config.pipeline_parallel import pipeline_stages
from moe.simulate.cluster import Cluster
from moe.simulate.gpu_counts import expert_parallel_size
from moe.simulate.step_time import StepEstimate, estimate_step


def simulate(
    recipe_path: str | Path,
    ds_config_path: str | Path,
    overrides: list[str],
    cluster: Cluster,
    gpu_counts: list[int],
    mfu: float | None = None,
) -> list[StepEstimate]:
    """One estimate per GPU count, each through the same resolve step a real launch runs (so a combination that
    cannot run is the same one-line ConfigError)."""
    recipe_overrides, ds_overrides = split_overrides(overrides)
    recipe = load_recipe(recipe_path, recipe_overrides)
    ds = load_ds_config(ds_config_path, ds_overrides)
    wanted_ep, estimates = recipe.moe.ep_size, []
    for gpus in gpu_counts:
        stages = pipeline_stages(ds)
        if gpus % stages:
            raise ConfigError(f"{gpus} GPUs do not split into pipeline.stages={stages} in {ds_config_path}")
        if recipe.moe.enabled:
            recipe.moe.ep_size = expert_parallel_size(wanted_ep, recipe.moe.num_experts, gpus // stages)
        # cuda=True: validate as for an accelerator cluster (fp16 allowed); nothing here runs on this machine
        resolved = resolve(recipe, ds, gpus, str(ds_config_path), cuda=True)
        estimates.append(estimate_step(resolved, cluster, mfu))
    return estimates
