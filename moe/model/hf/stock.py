"""Our GPT as the stock Hugging Face class that computes the same function: the config fields and the model.

- MixtralForCausalLM: every MLP is MoE (moe.interval 1) and top-k >= 2, whose gate weights DeepSpeed
  renormalizes over the chosen experts, as Mixtral does;
- Qwen2MoeForCausalLM: any interval (its decoder_sparse_step is our interval) and top-1 (norm_topk_prob
  false: the gate weight is the softmax probability, as in DeepSpeed's top-1), with its q/k/v bias off and
  a zero-width shared expert;
- LlamaForCausalLM: the dense baseline (moe.enabled false).

The stock model routes without a capacity limit (dropless). Residual-MoE (use_residual), PR-MoE (an expert count
per layer) and aux-loss-free bias routing (bias_update_rate) have no stock class and are refused with the reason.
`moe.export` writes these models (moe/checkpoint/hf_export.py); `model.init_from` checks a checkpoint's config against
`hf_config_fields` backwards (moe/checkpoint/hf_import.py).
"""

from __future__ import annotations

import warnings

import torch

from moe.config.loader import ConfigError
from moe.model.hf.names import to_hf


def target_family(config) -> str:
    if not config.moe_enabled:
        return "llama"
    if config.use_residual:
        raise ConfigError(
            "Residual-MoE (moe.use_residual) adds a dense MLP and a learned mixing coefficient "
            "to each MoE layer; no stock transformers class has that, so it cannot be exported"
        )
    if isinstance(config.num_experts, list):
        raise ConfigError(
            f"PR-MoE (moe.num_experts={config.num_experts}, one count per MoE layer) cannot be "
            f"exported: Mixtral and Qwen2-MoE have one expert count (num_local_experts / num_experts) "
            f"for all layers"
        )
    if getattr(config, "bias_update_rate", 0.0):
        raise ConfigError(
            "aux-loss-free balancing (moe.bias_update_rate) routes by softmax + a per-expert bias; no "
            "stock transformers class selects experts that way, so it cannot be exported"
        )
    if getattr(config, "routed_scaling_factor", 1.0) != 1.0:
        raise ConfigError(
            f"moe.routed_scaling_factor={config.routed_scaling_factor} scales the experts' output; Mixtral and "
            f"Qwen2-MoE have no such factor, so it cannot be exported"
        )
    if config.moe_interval == 1 and config.num_experts_per_tok >= 2:
        return "mixtral"
    return "qwen2_moe"


HF_CONFIG_CLASSES = {"llama": "LlamaConfig", "mixtral": "MixtralConfig", "qwen2_moe": "Qwen2MoeConfig"}


def hf_config_fields(config, family: str) -> dict:
    """The stock `family` config fields that express our MoEGPTConfig (moe/checkpoint/hf_import.py checks them
    backwards)."""
    common = dict(
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads,
        max_position_embeddings=config.max_seq_len,
        rms_norm_eps=config.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        tie_word_embeddings=config.tie_word_embeddings,
        **{k: getattr(config, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id")},
    )
    if family == "llama":
        return dict(intermediate_size=config.d_ff, attention_bias=False, mlp_bias=False, **common)
    moe = dict(num_experts_per_tok=config.num_experts_per_tok, router_aux_loss_coef=config.aux_loss_coef)
    if family == "mixtral":
        return dict(intermediate_size=config.expert_d_ff, num_local_experts=config.num_experts, **moe, **common)
    return dict(
        intermediate_size=config.d_ff,
        moe_intermediate_size=config.expert_d_ff,
        num_experts=config.num_experts,
        decoder_sparse_step=config.moe_interval,
        norm_topk_prob=config.num_experts_per_tok > 1,
        shared_expert_intermediate_size=0,
        qkv_bias=False,
        mlp_only_layers=[],
        **moe,
        **common,
    )


def hf_config(config, family: str):
    import transformers

    return getattr(transformers, HF_CONFIG_CLASSES[family])(**hf_config_fields(config, family))


def hf_state_dict(config, state: dict[str, torch.Tensor], hf_model) -> dict[str, torch.Tensor]:
    """Rename our weights onto the HF model's (moe/model/hf/names.py), experts stacked into its fused layout."""
    out = to_hf(state, config.num_experts if config.moe_enabled else 0)
    expected = hf_model.state_dict()
    for name, tensor in expected.items():  # parts our model does not have: zero-width shared expert and its gate
        if name not in out and (tensor.numel() == 0 or name.endswith("shared_expert_gate.weight")):
            out[name] = torch.zeros(tensor.shape, dtype=tensor.dtype)
    missing, unexpected = set(expected) - set(out), set(out) - set(expected)
    if missing or unexpected:
        raise ConfigError(
            f"export mapping mismatch: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
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
