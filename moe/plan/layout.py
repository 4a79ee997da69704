"""How a resolved run is laid out over ranks: the facts the memory model needs, read from the ds_config."""

from __future__ import annotations

from dataclasses import dataclass

from moe.config.pipeline_parallel import pipeline_stages

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# DeepSpeed's defaults when the ds_config leaves them out (deepspeed/runtime/zero/config.py)
DEFAULT_REDUCE_BUCKET = 500_000_000
DEFAULT_PREFETCH_BUCKET = 50_000_000


@dataclass(frozen=True)
class Layout:
    world_size: int
    stages: int  # pipeline stages; each holds ~1/stages of the layers
    dp: int  # data-parallel ranks of the dense parameters (world / stages)
    ep: int  # expert-parallel size: each rank holds experts / ep of every MoE layer
    zero_stage: int
    precision: str  # fp32 | bf16 | fp16
    offload_optimizer: bool  # zero_optimization.offload_optimizer.device == cpu/nvme
    offload_params: bool  # ZeRO-3 offload_param
    reduce_bucket: int  # elements
    prefetch_bucket: int  # elements (ZeRO-3)
    fused_adam: bool  # False = torch's AdamW (the CPU default; fused=True too, measured), one temporary per param group
    micro_batch: int
    seq_len: int
    activation_checkpointing: bool = False  # the ds_config has an activation_checkpointing section
    recompute: str = "blocks"  # train.recompute

    @property
    def expert_dp(self) -> int:
        """Ranks that hold the same experts: DeepSpeed's expert-data-parallel group (ZeRO shards experts over it)."""
        return max(1, self.dp // self.ep)

    @property
    def param_bytes(self) -> int:
        return BYTES[self.precision]


def layout_of(resolved) -> Layout:
    ds, recipe = resolved.ds_config, resolved.recipe
    zero = ds.get("zero_optimization") or {}
    stages = pipeline_stages(ds)
    offload_opt = (zero.get("offload_optimizer") or {}).get("device", "none") in ("cpu", "nvme")
    offload_param = (zero.get("offload_param") or {}).get("device", "none") in ("cpu", "nvme")
    return Layout(
        world_size=resolved.world_size,
        stages=stages,
        dp=resolved.dp_size,
        ep=recipe.moe.ep_size if recipe.moe.enabled else 1,
        zero_stage=int(zero.get("stage", 0) or 0),
        precision=recipe.train.precision,
        offload_optimizer=offload_opt,
        offload_params=offload_param,
        reduce_bucket=int(zero.get("reduce_bucket_size", DEFAULT_REDUCE_BUCKET)),
        prefetch_bucket=int(zero.get("stage3_prefetch_bucket_size", DEFAULT_PREFETCH_BUCKET)),
        fused_adam=not ds["optimizer"]["params"].get("torch_adam", False),
        micro_batch=recipe.train.micro_batch_size,
        seq_len=recipe.data.seq_len,
        activation_checkpointing=ds.get("activation_checkpointing") is not None,
        recompute=recipe.train.recompute,
    )
