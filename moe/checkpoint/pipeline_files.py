"""The whole model's weights from a pipeline-parallel checkpoint (ds_configs/pipeline2.json), for export.

DeepSpeed writes a stage in one of two ways: a stage without a MoE layer through PipelineModule's per-layer files
(`layer_XX-model_states.pt`, keys relative to the layer); a stage with one through the MoE checkpoint path, as a
non-pipeline MoE engine does: its non-expert weights in `mp_rank_<stage>_model_states.pt` (keys `<layer>.<name>`) and
one file per expert (`layer_<moe layer>_expert_<global index>_mp_rank_<stage>_model_states.pt`, keys already by
global expert index). Pipeline runs are fp32 only (moe/config/pipeline_parallel.py), so these are the master weights.
"""

from __future__ import annotations

import re

import torch

from moe.checkpoint.metadata import Tag
from moe.model.global_names import full_param_name

LAYER_FILE = re.compile(r"^layer_(\d+)-model_states\.pt$")


def pipeline_state_dict(tag: Tag) -> dict[str, torch.Tensor]:
    """MoEGPTForCausalLM names, experts by global index, merged over every stage's files."""
    pipe_state = {}
    for path in sorted(tag.dir.iterdir()):
        if match := LAYER_FILE.match(path.name):
            layer = torch.load(path, map_location="cpu", weights_only=False)
            pipe_state.update({f"{int(match.group(1))}.{key}": tensor for key, tensor in layer.items()})
    for path in sorted(tag.dir.glob("mp_rank_*_model_states.pt")):
        module = torch.load(path, map_location="cpu", weights_only=False)["module"]  # None on a per-layer stage
        pipe_state.update(module or {})
    for path in sorted(tag.dir.glob("layer_*_expert_*_mp_rank_*_model_states.pt")):
        pipe_state.update(torch.load(path, map_location="cpu", weights_only=False))
    n_layers = tag.recipe["model"]["n_layers"]
    return {full_param_name(name, n_layers): tensor for name, tensor in pipe_state.items()}
