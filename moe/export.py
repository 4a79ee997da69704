"""Export a DeepSpeed MoE checkpoint to a stock Hugging Face model (no trust_remote_code).

    python -m moe.export runs/<run_name> out_dir [--tag global_stepN]

The checkpoint's non-expert weights (mp_rank_00_model_states.pt) and its per-expert files
(layer_L_expert_E_*, already named by global expert index) are merged into one expert-parallel-free state
dict, then mapped onto the stock architecture that computes the same function:

- MixtralForCausalLM: every MLP is MoE (moe.interval 1) and top-k >= 2, whose gate weights DeepSpeed
  renormalizes over the chosen experts, as Mixtral does;
- Qwen2MoeForCausalLM: any interval (its decoder_sparse_step is our interval) and top-1 (norm_topk_prob
  false: the gate weight is the softmax probability, as in DeepSpeed's top-1), with its q/k/v bias off and
  a zero-width shared expert;
- LlamaForCausalLM: the dense baseline (moe.enabled false).

The exported model routes without a capacity limit (dropless). Residual-MoE (use_residual) has no stock
class and is refused with the reason. The tokenizer saved with the run is copied alongside.
"""
from __future__ import annotations

import argparse
import re
import sys
import warnings
from pathlib import Path

import torch

from moe.config.loader import ConfigError

EXPERT_PARAM = re.compile(r"layers\.(\d+)\.mlp\.moe\.deepspeed_moe\.experts\.deepspeed_experts\.(\d+)\.(\w+)\.weight")
GATE_PARAM = re.compile(r"layers\.(\d+)\.mlp\.moe\.deepspeed_moe\.gate\.wg\.weight")


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
    if config.moe_interval == 1 and config.num_experts_per_tok >= 2:
        return "mixtral"
    return "qwen2_moe"


def hf_config(config, family: str):
    from transformers import LlamaConfig, MixtralConfig, Qwen2MoeConfig
    common = dict(vocab_size=config.vocab_size, hidden_size=config.d_model, num_hidden_layers=config.n_layers,
                  num_attention_heads=config.n_heads, num_key_value_heads=config.n_kv_heads,
                  max_position_embeddings=config.max_seq_len, rms_norm_eps=config.norm_eps,
                  rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
                  tie_word_embeddings=config.tie_word_embeddings,
                  **{k: getattr(config, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id")})
    if family == "llama":
        return LlamaConfig(intermediate_size=config.d_ff, attention_bias=False, mlp_bias=False, **common)
    moe = dict(num_experts_per_tok=config.num_experts_per_tok, router_aux_loss_coef=config.aux_loss_coef)
    if family == "mixtral":
        return MixtralConfig(intermediate_size=config.expert_d_ff, num_local_experts=config.num_experts,
                             **moe, **common)
    return Qwen2MoeConfig(intermediate_size=config.d_ff, moe_intermediate_size=config.expert_d_ff,
                          num_experts=config.num_experts, decoder_sparse_step=config.moe_interval,
                          norm_topk_prob=config.num_experts_per_tok > 1, shared_expert_intermediate_size=0,
                          qkv_bias=False, mlp_only_layers=[], **moe, **common)


def hf_state_dict(config, state: dict[str, torch.Tensor], hf_model) -> dict[str, torch.Tensor]:
    """Rename our weights onto the HF model's, stacking experts into its fused (E, 2·ff, d) / (E, d, ff) layout."""
    out: dict[str, torch.Tensor] = {}
    experts: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
    for name, tensor in state.items():
        if m := EXPERT_PARAM.fullmatch(name):
            experts.setdefault((int(m.group(1)), int(m.group(2))), {})[m.group(3)] = tensor
        elif m := GATE_PARAM.fullmatch(name):
            out[f"model.layers.{m.group(1)}.mlp.gate.weight"] = tensor
        elif name == "lm_head.weight":
            out[name] = tensor
        else:
            hf_name = (name.replace(".attn_norm.", ".input_layernorm.").replace(".mlp_norm.", ".post_attention_layernorm.")
                       .replace(".attn.", ".self_attn."))
            out[f"model.{hf_name}"] = tensor
    for layer in sorted({layer for layer, _ in experts}):
        ordered = [experts[(layer, e)] for e in range(config.num_experts)]
        prefix = f"model.layers.{layer}.mlp.experts."
        out[prefix + "gate_up_proj"] = torch.stack([torch.cat([w["gate_proj"], w["up_proj"]]) for w in ordered])
        out[prefix + "down_proj"] = torch.stack([w["down_proj"] for w in ordered])
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


def export(run_dir: Path, out_dir: Path, tag: str | None = None) -> Path:
    from transformers import AutoTokenizer

    from moe.model import MoEGPTConfig
    from moe.train.checkpoint import checkpoint_dir, latest_tag
    tag = tag or latest_tag(run_dir)
    if tag is None:
        raise ConfigError(f"no complete checkpoint in {checkpoint_dir(run_dir)}")
    config = MoEGPTConfig.from_pretrained(run_dir / "model_config")
    hf_model = to_hf_model(config, consolidated_state_dict(checkpoint_dir(run_dir) / tag))
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(run_dir / "tokenizer").save_pretrained(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m moe.export", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="runs/<run_name>")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--tag", default=None, help="checkpoint tag (default: the newest complete one)")
    args = p.parse_args(argv)
    try:
        out = export(args.run_dir, args.out_dir, args.tag)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {args.run_dir} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
