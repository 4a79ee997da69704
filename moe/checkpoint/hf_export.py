"""Export a checkpoint to a stock Hugging Face model folder (safetensors, config, tokenizer; no trust_remote_code).

- moe.impl=deepspeed: the tag's non-expert weights (mp_rank_00_model_states.pt) and its per-expert files
  (layer_L_expert_E_*, already named by global expert index) merge into one expert-parallel-free state dict; with
  `fp32` (the default for a bf16/fp16 run, whose model files hold the low-precision copies) the weights are the fp32
  masters of its layout-free state instead (converted on the spot if missing); a pipeline checkpoint's per-layer
  files merge the same way. The state dict then becomes the stock class that computes the same function
  (moe/model/hf/stock.py: Mixtral, Qwen2-MoE or Llama).
- moe.impl=autoep: the run's own family, from DeepSpeed's universal checkpoint (moe/checkpoint/hf_export_autoep.py).
"""

from __future__ import annotations

from pathlib import Path

import torch

from moe.checkpoint import layout_free
from moe.checkpoint.conversion import convert
from moe.checkpoint.hf_export_autoep import export_autoep
from moe.checkpoint.metadata import Tag, checkpoint_dir, latest_tag
from moe.checkpoint.pipeline_files import pipeline_state_dict
from moe.config.loader import ConfigError
from moe.model.hf.stock import to_hf_model


def consolidated_state_dict(tag_dir: Path) -> dict[str, torch.Tensor]:
    """One state dict of the whole model (all experts, expert-parallel size 1) from a native DeepSpeed checkpoint."""
    model_states = Path(tag_dir) / "mp_rank_00_model_states.pt"
    if not model_states.is_file():
        raise ConfigError(f"not a DeepSpeed checkpoint (no {model_states.name}): {tag_dir}")
    state = dict(torch.load(model_states, map_location="cpu", weights_only=False)["module"])
    for expert_file in sorted(Path(tag_dir).glob("layer_*_expert_*_mp_rank_00_model_states.pt")):
        state.update(torch.load(expert_file, map_location="cpu", weights_only=False))
    return state


def checkpoint_weights(tag: Tag, fp32: bool | None = None) -> dict[str, torch.Tensor]:
    """Our GPT's whole weights at `tag`: the model files, or (fp32; None = when the run was not fp32) the fp32
    master weights from the layout-free state, which `python -m moe.reshard` writes and this runs if missing."""
    if tag.pipeline:  # fp32 only (moe/config/pipeline_parallel.py): its weights are the master weights
        return pipeline_state_dict(tag)
    if fp32 is None:
        fp32 = tag.precision not in (None, "fp32")
    if not fp32:
        return consolidated_state_dict(tag.dir)
    if not layout_free.is_converted(tag.dir):
        convert(tag.run_dir, tag.name)
    return layout_free.consolidated_fp32(tag.dir)


def export(run_dir: Path, out_dir: Path, tag_name: str | None = None, fp32: bool | None = None) -> Path:
    """Write `out_dir` from the run's tag `tag_name` (default: the newest complete one)."""
    from transformers import AutoTokenizer

    from moe.model import MoEGPTConfig

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    tag_name = tag_name or latest_tag(run_dir)
    if tag_name is None:
        raise ConfigError(f"no complete checkpoint in {checkpoint_dir(run_dir)}")
    tag = Tag.of(run_dir, tag_name)
    if tag.moe_path == "autoep":  # a stock HF family already
        export_autoep(run_dir, tag.dir, out_dir)
        return out_dir
    config = MoEGPTConfig.from_pretrained(run_dir / "model_config")
    hf_model = to_hf_model(config, checkpoint_weights(tag, fp32))
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(run_dir / "tokenizer").save_pretrained(out_dir)
    return out_dir
