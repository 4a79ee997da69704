"""The DeepSpeed engine of a model: `deepspeed.initialize` with its optimizer groups and the recipe's LR schedule."""

from __future__ import annotations

from functools import partial

import torch

from moe.checkpoint.metadata import Tag
from moe.config import load_recipe
from moe.train.optim import param_groups
from moe.train.schedule import build_scheduler


def build_engine(model: torch.nn.Module, recipe, ds_config: dict):
    """The engine for `model` under the resolved `ds_config` (a PipelineEngine for a PipelineModule)."""
    import deepspeed

    weight_decay = ds_config["optimizer"]["params"]["weight_decay"]
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=param_groups(model, weight_decay),
        lr_scheduler=partial(build_scheduler, train_cfg=recipe.train),
        config=ds_config,
    )
    return engine


def engine_of_tag(tag: Tag):
    """An engine of a native checkpoint's own model, optimizer, schedule and layout, ready for its load_checkpoint
    (`python -m moe.reshard --dump` runs it on each rank of that layout)."""
    from moe.model import MoEGPTConfig, build_model, config_from_recipe
    from moe.parallel import expert_parallel_rank

    recipe = load_recipe(tag.dir / "recipe.yaml")
    ds_config = dict(tag.ds_config)
    ds_config["optimizer"]["params"]["torch_adam"] = not torch.cuda.is_available()  # same state keys as FusedAdam
    vocab = MoEGPTConfig.from_pretrained(tag.run_dir / "model_config").vocab_size
    ep_rank = expert_parallel_rank(recipe.moe.ep_size) if recipe.moe.enabled else 0
    model = build_model(config_from_recipe(recipe, vocab_size=vocab), seed=recipe.train.seed, ep_rank=ep_rank)
    return build_engine(model, recipe, ds_config)
