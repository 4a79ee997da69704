"""Pipeline parallelism settings: the ds_config's own `pipeline` section (DeepSpeed's get_pipeline_config keys).

    "pipeline": {"stages": 2, "partition": "type:BlockPipe", "activation_checkpoint_interval": 0}

`stages` splits the model over that many ranks (deepspeed.pipe.PipelineModule / PipelineEngine, moe/model/
pipeline.py); the world is then `stages` x data-parallel ranks, and expert-parallel groups sit inside a stage.
`partition` is PipelineModule's partition_method: `type:BlockPipe` (the default here) gives every stage the same
number of transformer blocks, `parameters` balances parameter counts, `uniform` counts every pipeline layer
(embedding and head included). Every combination the PipelineEngine or our pipeline model cannot run fails here.
"""
from __future__ import annotations

from moe.config.loader import ConfigError

DEFAULT_PARTITION = "type:BlockPipe"
PARTITIONS = ("uniform", "parameters")  # or "type:<class-name regex>"
WORKS = "ds_configs/pipeline2.json (ZeRO-1, fp32) with moe.impl=deepspeed and moe.ep_size dividing world size / 2"


def pipeline_stages(ds: dict) -> int:
    """Pipeline stages the ds_config asks for; 1 = no pipeline (also when the section is absent)."""
    stages = (ds.get("pipeline") or {}).get("stages", 1)
    return stages if isinstance(stages, int) and not isinstance(stages, bool) else 1


def validate_pipeline(recipe, ds: dict, world_size: int, where: str) -> int:
    """Refuse what pipeline parallelism cannot run, fill the section's defaults; returns the data-parallel size."""
    section = ds.get("pipeline")
    if section is None:
        return world_size
    stages = section.get("stages", 1)
    if not isinstance(stages, int) or isinstance(stages, bool) or stages < 1:
        raise ConfigError(f"{where}: pipeline.stages must be a positive integer, got {stages!r} (DeepSpeed's 'auto' "
                          f"is not supported: say how many stages)")
    if stages == 1:
        return world_size
    m, moe = recipe.model, recipe.moe
    if world_size % stages:
        raise ConfigError(f"world size {world_size} is not divisible by pipeline.stages={stages} in {where}; launch a "
                          f"multiple of {stages} ranks")
    if m.n_layers % stages:
        raise ConfigError(f"model.n_layers={m.n_layers} does not split evenly over pipeline.stages={stages} in "
                          f"{where}; use a multiple of {stages} layers (each stage gets the same number of blocks)")
    if moe.enabled and moe.impl != "deepspeed":
        raise ConfigError(f"pipeline.stages={stages} in {where} needs moe.impl=deepspeed: AutoEP trains an HF model "
                          f"that PipelineModule cannot split into layers; run AutoEP with ds_configs/zero1.json, or "
                          f"use {WORKS}")
    if recipe.train.precision != "fp32":
        raise ConfigError(f"train.precision={recipe.train.precision} with pipeline.stages={stages} in {where}: pipeline "
                          f"parallelism is wired (cross-stage gradient norm) and tested in fp32 only; use {WORKS}")
    zero_stage = (ds.get("zero_optimization") or {}).get("stage", 0)
    if zero_stage >= 2:
        raise ConfigError(f"{where}: DeepSpeed's PipelineEngine refuses ZeRO-{zero_stage} with pipeline parallelism; "
                          f"use ZeRO 0 or 1: {WORKS}")
    dp_size = world_size // stages
    if moe.enabled and dp_size % moe.ep_size:
        raise ConfigError(f"moe.ep_size={moe.ep_size} must divide the {dp_size} data-parallel ranks of each pipeline "
                          f"stage (world size {world_size} / pipeline.stages={stages}); expert-parallel groups sit "
                          f"inside a stage: set moe.ep_size to a divisor of {dp_size} or launch "
                          f"{stages * moe.ep_size} ranks")
    if m.tie_embeddings:
        raise ConfigError(f"model.tie_embeddings=true with pipeline.stages={stages} in {where}: the embedding sits on "
                          f"the first stage and the head on the last; set model.tie_embeddings=false")
    if moe.enabled and moe.bias_update_rate:
        raise ConfigError(f"moe.bias_update_rate with pipeline.stages={stages} in {where}: the routing-bias update "
                          f"all-reduces over every rank holding every gate, which a pipeline stage does not; set "
                          f"moe.bias_update_rate=0 or use ds_configs/zero1.json")
    partition = section.setdefault("partition", DEFAULT_PARTITION)
    if not isinstance(partition, str) or not (partition.lower() in PARTITIONS or partition.startswith("type:")):
        raise ConfigError(f"{where}: pipeline.partition must be {DEFAULT_PARTITION} (the default), parameters, "
                          f"uniform or type:<layer class>, got {partition!r}")
    interval = section.setdefault("activation_checkpoint_interval", 0)
    if not isinstance(interval, int) or interval < 0:
        raise ConfigError(f"{where}: pipeline.activation_checkpoint_interval must be an integer >= 0, got {interval!r}")
    return dp_size


def check_pipeline_resume(tag: str, saved: dict, layout: dict) -> None:
    """Refuse resuming a pipeline checkpoint at another layout, or a non-pipeline one under a pipeline: `layout`s as
    moe/train/checkpoint.py's run_layout writes them (key `pipeline_stages` only when > 1), already known to differ.
    Why: a pipeline checkpoint holds one file per pipeline layer, which neither DeepSpeed's non-pipeline
    load_checkpoint nor `python -m moe.reshard` (which rebuilds the whole model on each rank) reads."""
    if "pipeline_stages" in saved or "pipeline_stages" in layout:
        def describe(l: dict) -> str:
            return f"{l['world_size']} ranks, pipeline.stages={l.get('pipeline_stages', 1)}, moe.ep_size={l['ep_size']}"
        raise ConfigError(f"--resume: checkpoint {tag} was saved with {describe(saved)}, this run has "
                          f"{describe(layout)}; a pipeline-parallel run resumes only at its own layout (same ds_config "
                          f"and rank count), and no checkpoint converts into or out of a pipeline layout")
