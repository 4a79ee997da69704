"""Build the model with a layout-independent initialization.

Every parameter is drawn from a generator seeded by (seed, its global name). Expert parameters use their
*global* expert index, so a model built at EP=2 holds exactly the slices of the same model at EP=1, and the
dense parts are identical on every rank whatever the number of local experts.
"""

from __future__ import annotations

import hashlib
import math

import torch

from moe.model.configuration import MoEGPTConfig
from moe.model.global_names import global_param_name, local_expert_counts
from moe.model.modeling import MoEGPTForCausalLM

OUTPUT_PROJECTIONS = ("o_proj.weight", "down_proj.weight")


def build_model(config: MoEGPTConfig, seed: int, ep_rank: int = 0) -> MoEGPTForCausalLM:
    model = MoEGPTForCausalLM(config)
    init_deterministic(model, seed, ep_rank)
    return model


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
