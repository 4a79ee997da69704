"""Pipeline parallelism settings: the ds_config's own `pipeline` section (DeepSpeed's get_pipeline_config keys).

    "pipeline": {"stages": 2, "partition": "type:BlockPipe", "activation_checkpoint_interval": 0}

`stages` splits the model over that many ranks (deepspeed.pipe.PipelineModule / PipelineEngine,
moe/parallel/pipeline_module.py); the world is then `stages` x data-parallel ranks, and expert-parallel groups sit
inside a stage.
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


def check_pipeline(recipe, ds: dict, world_size: int, where: str) -> None:
    """Refuse what pipeline parallelism cannot run (the section as given; its defaults are not filled yet)."""
    section = ds.get("pipeline")
    if section is None:
        return
    stages = section.get("stages", 1)
    if not isinstance(stages, int) or isinstance(stages, bool) or stages < 1:
        raise ConfigError(
            f"{where}: pipeline.stages must be a positive integer, got {stages!r} (DeepSpeed's 'auto' "
            f"is not supported: say how many stages)"
        )
    if stages == 1:
        return
    m, moe = recipe.model, recipe.moe
    if world_size % stages:
        raise ConfigError(
            f"world size {world_size} is not divisible by pipeline.stages={stages} in {where}; launch a "
            f"multiple of {stages} ranks"
        )
    if m.n_layers % stages:
        raise ConfigError(
            f"model.n_layers={m.n_layers} does not split evenly over pipeline.stages={stages} in "
            f"{where}; use a multiple of {stages} layers (each stage gets the same number of blocks)"
        )
    if moe.enabled and moe.impl != "deepspeed":
        raise ConfigError(
            f"pipeline.stages={stages} in {where} needs moe.impl=deepspeed: AutoEP trains an HF model "
            f"that PipelineModule cannot split into layers; run AutoEP with ds_configs/zero1.json, or "
            f"use {WORKS}"
        )
    if recipe.train.precision != "fp32":
        raise ConfigError(
            f"train.precision={recipe.train.precision} with pipeline.stages={stages} in {where}: pipeline "
            f"parallelism is wired (cross-stage gradient norm) and tested in fp32 only; use {WORKS}"
        )
    zero_stage = (ds.get("zero_optimization") or {}).get("stage", 0)
    if zero_stage >= 2:
        raise ConfigError(
            f"{where}: DeepSpeed's PipelineEngine refuses ZeRO-{zero_stage} with pipeline parallelism; "
            f"use ZeRO 0 or 1: {WORKS}"
        )
    dp_size = world_size // stages
    if moe.enabled and dp_size % moe.ep_size:
        raise ConfigError(
            f"moe.ep_size={moe.ep_size} must divide the {dp_size} data-parallel ranks of each pipeline "
            f"stage (world size {world_size} / pipeline.stages={stages}); expert-parallel groups sit "
            f"inside a stage: set moe.ep_size to a divisor of {dp_size} or launch "
            f"{stages * moe.ep_size} ranks"
        )
    if m.tie_embeddings:
        raise ConfigError(
            f"model.tie_embeddings=true with pipeline.stages={stages} in {where}: the embedding sits on "
            f"the first stage and the head on the last; set model.tie_embeddings=false"
        )
    if moe.enabled and moe.bias_update_rate:
        raise ConfigError(
            f"moe.bias_update_rate with pipeline.stages={stages} in {where}: the routing-bias update "
            f"all-reduces over every rank holding every gate, which a pipeline stage does not; set "
            f"moe.bias_update_rate=0 or use ds_configs/zero1.json"
        )
    partition = section.get("partition", DEFAULT_PARTITION)
    if not isinstance(partition, str) or not (partition.lower() in PARTITIONS or partition.startswith("type:")):
        raise ConfigError(
            f"{where}: pipeline.partition must be {DEFAULT_PARTITION} (the default), parameters, "
            f"uniform or type:<layer class>, got {partition!r}"
        )
    interval = section.get("activation_checkpoint_interval", 0)
    if not isinstance(interval, int) or interval < 0:
        raise ConfigError(f"{where}: pipeline.activation_checkpoint_interval must be an integer >= 0, got {interval!r}")


def fill_pipeline_defaults(ds: dict) -> None:
    """Write the defaults of a pipeline section (stages > 1): partition and activation_checkpoint_interval."""
    if pipeline_stages(ds) > 1:
        ds["pipeline"].setdefault("partition", DEFAULT_PARTITION)
        ds["pipeline"].setdefault("activation_checkpoint_interval", 0)
