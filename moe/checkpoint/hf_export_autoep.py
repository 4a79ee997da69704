"""Export an AutoEP run (`moe.impl: autoep`) to its own stock Hugging Face family (Mixtral, Qwen3-MoE, DeepSeek-V3).

DeepSpeed's universal-checkpoint converter (deepspeed.checkpoint.ds_to_universal) already understands AutoEP:
from any ZeRO stage (1/2/3) and any expert-parallel size it writes one fp32 tensor per parameter, experts stacked
as (E, ...). This module only renames AutoEP's parameters back to the HF ones and loads them into the stock class:

    <layer>.mlp.router.gate.weight             -> <layer>.mlp.gate.weight
    <layer>.mlp.experts.w1 (E, ff, d) + w3     -> <layer>.mlp.experts.gate_up_proj (E, 2 ff, d): gate rows, then up
    <layer>.mlp.experts.w2 (E, d, ff)          -> <layer>.mlp.experts.down_proj
    <layer>.mlp.router.e_score_correction_bias -> <layer>.mlp.gate.e_score_correction_bias (a buffer: model states)

The universal folder is also the fp32 consolidation of the run (master weights, not the bf16 copies).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import torch

from moe.checkpoint import universal
from moe.config.loader import ConfigError

ROUTER = re.compile(r"^(.*\.mlp)\.router\.(gate\.weight|e_score_correction_bias)$")
EXPERTS = re.compile(r"^(.*\.mlp\.experts)\.(w1|w2|w3)$")


def universal_checkpoint(tag_dir: Path, out_dir: Path) -> Path:
    """The folder of per-parameter fp32 files of one checkpoint tag: its `python -m moe.reshard` output if it has
    one, else DeepSpeed's ds_to_universal run into `out_dir` (moe/checkpoint/universal.py)."""
    if universal.is_converted(tag_dir):
        return universal.universal_dir(tag_dir) / "zero"
    universal.run_ds_to_universal(tag_dir, out_dir)
    return out_dir / "zero"


def _model_states_file(tag_dir: Path) -> Path:
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt"):
        if (tag_dir / name).is_file():
            return tag_dir / name
    raise ConfigError(f"not a DeepSpeed checkpoint (no model states file): {tag_dir}")


def _param(saved) -> torch.Tensor:
    return saved["param"] if isinstance(saved, dict) else saved  # expert params carry metadata beside the tensor


def hf_state_dict(tag_dir: Path, work_dir: Path) -> dict[str, torch.Tensor]:
    """The stock-HF-named fp32 state dict of one AutoEP checkpoint tag (all experts, any ZeRO stage / EP size)."""
    zero_dir = universal_checkpoint(tag_dir, work_dir)
    tensors = {
        p.name: _param(torch.load(p / "fp32.pt", map_location="cpu", weights_only=False))
        for p in zero_dir.iterdir()
        if (p / "fp32.pt").is_file()
    }
    module_states = torch.load(_model_states_file(tag_dir), map_location="cpu", weights_only=False)["module"]
    tensors.update({n: t for n, t in module_states.items() if n.endswith("e_score_correction_bias")})
    state, experts = {}, {}
    for name, value in tensors.items():
        if name.endswith(".mlp.gate.gate.weight"):  # AutoEP's alias of the router weight
            continue
        if match := ROUTER.match(name):
            state[f"{match.group(1)}.gate.{match.group(2).removeprefix('gate.')}"] = value
        elif match := EXPERTS.match(name):
            experts.setdefault(match.group(1), {})[match.group(2)] = value
        else:
            state[name] = value
    for prefix, w in experts.items():
        state[f"{prefix}.gate_up_proj"] = torch.cat([w["w1"], w["w3"]], dim=1)  # (E, 2 ff, d)
        state[f"{prefix}.down_proj"] = w["w2"]  # (E, d, ff)
    return state


def export_autoep(run_dir: Path, tag_dir: Path, out_dir: Path) -> str:
    """Write `out_dir` as a stock HF folder (safetensors, config, tokenizer); returns the HF model_type."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(run_dir / "model_config")
    with tempfile.TemporaryDirectory(prefix="moe-universal-") as work:
        state = hf_state_dict(tag_dir, Path(work))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if config.tie_word_embeddings:
        state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
    shapes = {name: t.shape for name, t in model.state_dict().items()}
    for name, value in state.items():  # ZeRO-3 universal files hold non-expert parameters flattened
        if name in shapes and value.shape != shapes[name] and value.numel() == shapes[name].numel():
            state[name] = value.view(shapes[name])
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise RuntimeError(
            f"{tag_dir}: the checkpoint does not fill {config.model_type}: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    model.tie_weights()
    rotary = model.model.rotary_emb  # its inv_freq is a non-persistent buffer, still on meta: rebuild it
    model.model.rotary_emb = type(rotary)(config=config)
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(run_dir / "tokenizer").save_pretrained(out_dir)
    return config.model_type
