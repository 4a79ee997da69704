"""Parameter names that mean the same weights under every layout.

Experts by *global* expert index: rank r of an expert-parallel group of size ep holds experts r * (E / ep) ...
(r + 1) * (E / ep) - 1 as its local 0 ... E / ep - 1. Pipeline stages by model layer: the PipelineModule's layer index
becomes the MoEGPTForCausalLM name (moe/parallel/pipeline_module.py builds the stages). The layout-independent init
(build.py), the checkpoints' layout-free state, pipeline checkpoints and the HF name mapping all go through these.
Pure string arithmetic: no torch."""

from __future__ import annotations

import re

LOCAL_EXPERT = re.compile(r"^(.*\.deepspeed_experts\.)(\d+)(\..*)$")
LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def global_param_name(name: str, ep_rank: int, num_local_experts: int | dict[int, int]) -> str:
    """Map a local expert parameter name to its global expert index; other names pass through.

    num_local_experts: experts per rank, the same in every MoE layer (an int), or per layer index (a dict, as
    `local_expert_counts` gives; PR-MoE layers differ)."""
    match = LOCAL_EXPERT.match(name)
    if not match:
        return name
    if isinstance(num_local_experts, dict):
        num_local_experts = num_local_experts[int(LAYER_INDEX.search(name).group(1))]
    global_idx = ep_rank * num_local_experts + int(match.group(2))
    return f"{match.group(1)}{global_idx}{match.group(3)}"


def local_expert_counts(config) -> dict[int, int]:
    """{MoE layer index: experts held by each expert-parallel rank} of a MoEGPTConfig."""
    return {i: config.experts_in_layer(i) // config.ep_size for i in config.moe_layer_ids()}


def full_param_name(pipe_name: str, n_layers: int) -> str:
    """A GPTPipe parameter name -> the MoEGPTForCausalLM name: `0.embed_tokens.weight` -> `embed_tokens.weight`,
    `2.block.attn.q_proj.weight` -> `layers.1.attn.q_proj.weight`, `{n_layers + 1}.norm.weight` -> `norm.weight`."""
    index, rest = pipe_name.split(".", 1)
    if int(index) in (0, n_layers + 1):
        return rest
    return f"layers.{int(index) - 1}.{rest.removeprefix('block.')}"
