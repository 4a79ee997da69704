"""Build the model with a layout-independent initialization.

Every parameter is drawn from a generator seeded by (seed, its global name). Expert parameters use their
*global* expert index, so a model built at EP=2 holds exactly the slices of the same model at EP=1, and the
dense parts are identical on every rank whatever the number of local experts.
"""
from __future__ import annotations

import hashlib
import math
import re

import torch

from moe.model.configuration import MoEGPTConfig
from moe.model.modeling import MoEGPTForCausalLM

LOCAL_EXPERT = re.compile(r"^(.*\.deepspeed_experts\.)(\d+)(\..*)$")
LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")
OUTPUT_PROJECTIONS = ("o_proj.weight", "down_proj.weight")


def build_model(config: MoEGPTConfig, seed: int, ep_rank: int = 0) -> MoEGPTForCausalLM:
    model = MoEGPTForCausalLM(config)
    init_deterministic(model, seed, ep_rank)
    return model


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


def local_expert_counts(config: MoEGPTConfig) -> dict[int, int]:
    """{MoE layer index: experts held by each expert-parallel rank}."""
    return {i: config.experts_in_layer(i) // config.ep_size for i in config.moe_layer_ids()}


@torch.no_grad()
def init_deterministic(model: MoEGPTForCausalLM, seed: int, ep_rank: int = 0) -> None:
    config = model.config
    num_local = local_expert_counts(config)
    std = config.init_std
    out_std = std / math.sqrt(2 * config.n_layers)  # GPT-2: scale residual-branch outputs by depth
    for name, param in model.named_parameters():
        global_name = global_param_name(name, ep_rank, num_local)
        if name.endswith("norm.weight"):
            param.fill_(1.0)
        elif name.endswith(".bias"):
            param.zero_()
        else:
            gen = torch.Generator().manual_seed(_seed_for(seed, global_name))
            scale = out_std if name.endswith(OUTPUT_PROJECTIONS) else std
            param.copy_(torch.randn(param.shape, generator=gen) * scale)


def _seed_for(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") % (2**63)
