"""Export a DeepSpeed MoE checkpoint to a stock Hugging Face model (no trust_remote_code).

    python -m moe.export runs/<run_name> out_dir [--tag global_stepN] [--fp32 | --no-fp32]

The checkpoint's non-expert weights (mp_rank_00_model_states.pt) and its per-expert files
(layer_L_expert_E_*, already named by global expert index) are merged into one expert-parallel-free state
dict. With --fp32 (the default for a bf16/fp16 checkpoint, whose model files hold the low-precision copies) the
weights are instead the fp32 master weights of its layout-free state (moe/reshard.py, converted on the spot if
missing). The state dict is then mapped onto the stock architecture that computes the same function:

- MixtralForCausalLM: every MLP is MoE (moe.interval 1) and top-k >= 2, whose gate weights DeepSpeed
  renormalizes over the chosen experts, as Mixtral does;
- Qwen2MoeForCausalLM: any interval (its decoder_sparse_step is our interval) and top-1 (norm_topk_prob
  false: the gate weight is the softmax probability, as in DeepSpeed's top-1), with its q/k/v bias off and
  a zero-width shared expert;
- LlamaForCausalLM: the dense baseline (moe.enabled false).

The exported model routes without a capacity limit (dropless). Residual-MoE (use_residual), PR-MoE (an expert
count per layer) and aux-loss-free bias routing (bias_update_rate) have no stock class and are refused with the
reason. The tokenizer saved with the run is copied alongside.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch

from moe.config.loader import ConfigError
from moe.model.hf_names import to_hf


def consolidated_state_dict(tag_dir: Path) -> dict[str, torch.Tensor]:
    """One state dict of the whole model (all experts, expert-parallel size 1) from a DeepSpeed checkpoint."""
    model_states = tag_dir / "mp_rank_00_model_states.pt"
    if not model_states.is_file():
        raise ConfigError(f"not a DeepSpeed checkpoint (no {model_states.name}): {tag_dir}")
    state = dict(torch.load(model_states, map_location="cpu", weights_only=False)["module"])
    for expert_file in sorted(tag_dir.glob("layer_*_expert_*_mp_rank_00_model_states.pt")):
        state.update(torch.load(expert_file, map_location="cpu", weights_only=False))
    return state


def target_family(config) -> str:
    if not config.moe_enabled:
        return "llama"
    if config.use_residual:
        raise ConfigError("Residual-MoE (moe.use_residual) adds a dense MLP and a learned mixing coefficient "
                          "to each MoE layer; no stock transformers class has that, so it cannot be exported")
    if isinstance(config.num_experts, list):
        raise ConfigError(f"PR-MoE (moe.num_experts={config.num_experts}, one count per MoE layer) cannot be "
                          f"exported: Mixtral and Qwen2-MoE have one expert count (num_local_experts / num_experts) "
                          f"for all layers")
    if getattr(config, "bias_update_rate", 0.0):
        raise ConfigError("aux-loss-free balancing (moe.bias_update_rate) routes by softmax + a per-expert bias; no "
                          "stock transformers class selects experts that way, so it cannot be exported")
    if config.moe_interval == 1 and config.num_experts_per_tok >= 2:
        return "mixtral"
    return "qwen2_moe"


HF_CONFIG_CLASSES = {"llama": "LlamaConfig", "mixtral": "MixtralConfig", "qwen2_moe": "Qwen2MoeConfig"}


def hf_config_fields(config, family: str) -> dict:
    """The stock `family` config fields that express our MoEGPTConfig (moe.model.hf_import checks them backwards)."""
    common = dict(vocab_size=config.vocab_size, hidden_size=config.d_model, num_hidden_layers=config.n_layers,
                  num_attention_heads=config.n_heads, num_key_value_heads=config.n_kv_heads,
                  max_position_embeddings=config.max_seq_len, rms_norm_eps=config.norm_eps,
                  rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
                  tie_word_embeddings=config.tie_word_embeddings,
                  **{k: getattr(config, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id")})
    if family == "llama":
        return dict(intermediate_size=config.d_ff, attention_bias=False, mlp_bias=False, **common)
    moe = dict(num_experts_per_tok=config.num_experts_per_tok, router_aux_loss_coef=config.aux_loss_coef)
    if family == "mixtral":
        return dict(intermediate_size=config.expert_d_ff, num_local_experts=config.num_experts, **moe, **common)
    return dict(intermediate_size=config.d_ff, moe_intermediate_size=config.expert_d_ff,
                num_experts=config.num_experts, decoder_sparse_step=config.moe_interval,
                norm_topk_prob=config.num_experts_per_tok > 1, shared_expert_intermediate_size=0,
                qkv_bias=False, mlp_only_layers=[], **moe, **common)


def hf_config(config, family: str):
    import transformers
    return getattr(transformers, HF_CONFIG_CLASSES[family])(**hf_config_fields(config, family))


def hf_state_dict(config, state: dict[str, torch.Tensor], hf_model) -> dict[str, torch.Tensor]:
    """Rename our weights onto the HF model's (moe/model/hf_names.py), experts stacked into its fused layout."""
    out = to_hf(state, config.num_experts if config.moe_enabled else 0)
    expected = hf_model.state_dict()
    for name, tensor in expected.items():  # parts our model does not have: zero-width shared expert and its gate
        if name not in out and (tensor.numel() == 0 or name.endswith("shared_expert_gate.weight")):
            out[name] = torch.zeros(tensor.shape, dtype=tensor.dtype)
    missing, unexpected = set(expected) - set(out), set(out) - set(expected)
    if missing or unexpected:
        raise ConfigError(f"export mapping mismatch: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    return out


def to_hf_model(config, state: dict[str, torch.Tensor]):
    """A stock transformers model holding `state` (our MoEGPTForCausalLM's weights, expert-parallel size 1)."""
    from transformers import AutoModelForCausalLM
    family = target_family(config)
    hf_cfg = hf_config(config, family)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")  # the zero-width shared expert
        hf_model = AutoModelForCausalLM.from_config(hf_cfg)
    weights = hf_state_dict(config, state, hf_model)
    hf_model.load_state_dict(weights, assign=True, strict=True)
    rotary = hf_model.model.rotary_emb  # its inv_freq is a non-persistent buffer, still on meta: rebuild it
    hf_model.model.rotary_emb = type(rotary)(config=hf_cfg)
    return hf_model.float().eval()


def checkpoint_weights(run_dir: Path, tag: str, fp32: bool | None = None) -> dict[str, torch.Tensor]:
    """Our whole model's weights at `tag`: the model files, or (fp32; None = when the run was not fp32) the fp32
    master weights from the layout-free state, which `python -m moe.reshard` writes and this runs if missing."""
    import yaml

    from moe.reshard import consolidated_fp32, convert, is_converted
    from moe.train.checkpoint import checkpoint_dir
    tag_dir = checkpoint_dir(run_dir) / tag
    from moe.model.pipeline import is_pipeline_checkpoint, pipeline_state_dict
    if is_pipeline_checkpoint(tag_dir):  # fp32 only (moe/config/pipeline.py): its weights are the master weights
        return pipeline_state_dict(tag_dir)
    if fp32 is None:
        recipe = tag_dir / "recipe.yaml"
        fp32 = recipe.is_file() and yaml.safe_load(recipe.read_text())["train"]["precision"] != "fp32"
    if not fp32:
        return consolidated_state_dict(tag_dir)
    if not is_converted(tag_dir):
        convert(run_dir, tag)
    return consolidated_fp32(tag_dir)


def export(run_dir: Path, out_dir: Path, tag: str | None = None, fp32: bool | None = None) -> Path:
    from transformers import AutoTokenizer

    from moe.model import MoEGPTConfig
    from moe.train.checkpoint import checkpoint_dir, latest_tag
    tag = tag or latest_tag(run_dir)
    if tag is None:
        raise ConfigError(f"no complete checkpoint in {checkpoint_dir(run_dir)}")
    if json.loads((run_dir / "model_config" / "config.json").read_text())["model_type"] != MoEGPTConfig.model_type:
        from moe.export_autoep import export_autoep  # moe.impl=autoep: a stock HF family already
        export_autoep(run_dir, checkpoint_dir(run_dir) / tag, out_dir)
        return out_dir
    config = MoEGPTConfig.from_pretrained(run_dir / "model_config")
    hf_model = to_hf_model(config, checkpoint_weights(run_dir, tag, fp32))
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(run_dir / "tokenizer").save_pretrained(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m moe.export", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="runs/<run_name>")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--tag", default=None, help="checkpoint tag (default: the newest complete one)")
    p.add_argument("--fp32", action=argparse.BooleanOptionalAction, default=None,
                   help="export the fp32 master weights (default: when the run trained in bf16/fp16)")
    args = p.parse_args(argv)
    try:
        out = export(args.run_dir, args.out_dir, args.tag, args.fp32)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {args.run_dir} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
