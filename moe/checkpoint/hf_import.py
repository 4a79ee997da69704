"""Start our GPT (moe.impl=deepspeed) from a Hugging Face folder: `model.init_from`.

- Continued pretraining: an HF Mixtral or Qwen2-MoE checkpoint (or a dense Llama into `moe.enabled: false`) whose
  function our GPT computes: RMSNorm, plain RoPE, bias-free attention and SwiGLU MLPs, and routing as DeepSpeed's
  gate does it: softmax, top-k, then the top-1 gate keeps its raw probability and top-k >= 2 renormalizes over the
  chosen experts (Mixtral always renormalizes, so only top-k >= 2; Qwen2-MoE with norm_topk_prob = top_k > 1).
  Shared experts, q/k/v biases, sliding windows and Qwen3-MoE's per-head q/k norms have no counterpart: refused.
- Sparse upcycling (`model.upcycle: true`): a dense Llama checkpoint (e.g. our dense export); each MoE layer's
  experts start as copies of that layer's dense MLP and its router at zero, so routing starts uniform and, with
  top-k renormalized and no token dropped, the MoE model computes exactly the dense one.

Names are mapped backwards through moe/model/hf/names.py (the same table moe.export uses forwards), the HF config
is checked against the fields moe.export would write for this recipe (`moe.export.hf_config_fields`), and each
expert-parallel rank keeps its experts by global index.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from moe.config.autoep_families import FAMILIES
from moe.model.configuration import config_from_recipe
from moe.model.global_names import global_param_name, local_expert_counts
from moe.model.hf.names import EXPERT_NAME, GATE_NAME, from_hf
from moe.model.hf.stock import hf_config_fields

SUPPORTED = ("mixtral", "qwen2_moe", "llama")
# HF config field -> the recipe field it must equal (and intermediate_size: moe.expert_d_ff for Mixtral, whose
# experts are its only MLPs, else model.d_ff), checked in this order
RECIPE_FIELDS = {
    "vocab_size": "model.vocab_size",
    "hidden_size": "model.d_model",
    "num_hidden_layers": "model.n_layers",
    "num_attention_heads": "model.n_heads",
    "num_key_value_heads": "model.n_kv_heads",
    "moe_intermediate_size": "moe.expert_d_ff",
    "num_local_experts": "moe.num_experts",
    "num_experts": "moe.num_experts",
    "num_experts_per_tok": "moe.top_k",
    "decoder_sparse_step": "moe.interval",
    "rms_norm_eps": "model.norm_eps",
    "tie_word_embeddings": "model.tie_embeddings",
}
DENSE_MLP = re.compile(r"layers\.(\d+)\.mlp\.(gate_proj|up_proj|down_proj)\.weight")


def read_hf_config(folder: str | Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(Path(folder).expanduser())


def init_from_vocab_size(recipe) -> int | None:
    """model.vocab_size, else the `model.init_from` checkpoint's embedding rows (whatever the tokenizer's length)."""
    if recipe.model.vocab_size or not recipe.model.init_from:
        return recipe.model.vocab_size
    return read_hf_config(recipe.model.init_from).vocab_size


def _recipe_field(key: str, family: str) -> str:
    if key == "intermediate_size":
        return "moe.expert_d_ff" if family == "mixtral" else "model.d_ff"
    return RECIPE_FIELDS[key]


def _architecture_problem(hf, family: str, top_k: int) -> str | None:
    """What in the checkpoint our GPT cannot compute, whatever the recipe says."""
    head_dim = getattr(hf, "head_dim", None)
    rope = getattr(hf, "rope_parameters", None) or {}
    checks = [
        (getattr(hf, "hidden_act", "silu") != "silu", f"hidden_act={hf.hidden_act} (our MLPs are SwiGLU: silu)"),
        (bool(getattr(hf, "attention_bias", False) or getattr(hf, "qkv_bias", False)), "q/k/v biases"),
        (bool(getattr(hf, "mlp_bias", False)), "MLP biases"),
        (
            head_dim not in (None, hf.hidden_size // hf.num_attention_heads),
            f"head_dim={head_dim} != hidden_size / num_attention_heads",
        ),
        (rope.get("rope_type", "default") != "default", f"rope_type={rope.get('rope_type')} (ours is plain RoPE)"),
        (
            bool(getattr(hf, "use_sliding_window", False)) or (family == "mixtral" and hf.sliding_window),
            "sliding-window attention",
        ),
    ]
    if family == "mixtral":
        checks.append(
            (
                hf.num_experts_per_tok == 1,
                "top-1 with renormalized gates (weight 1.0); DeepSpeed's top-1 keeps the raw probability",
            )
        )
    if family == "qwen2_moe":
        checks += [
            (
                hf.shared_expert_intermediate_size > 0,
                f"a shared expert (shared_expert_intermediate_size={hf.shared_expert_intermediate_size})",
            ),
            (bool(hf.mlp_only_layers), f"dense mlp_only_layers={hf.mlp_only_layers}"),
            (
                hf.norm_topk_prob != (top_k > 1),
                f"norm_topk_prob={hf.norm_topk_prob} with top-{top_k} (DeepSpeed "
                f"renormalizes top-k >= 2 and keeps top-1's raw probability)",
            ),
        ]
    for bad, what in checks:
        if bad:
            return (
                f"model.init_from: the {family} checkpoint has {what}, which our GPT (moe.impl=deepspeed) "
                f"does not compute"
            )
    return None


def init_from_problem(recipe, hf) -> str | None:
    """The first reason `model.init_from` (HF config `hf`) cannot start this recipe (moe.impl=deepspeed), as one
    line, or None."""
    m, e = recipe.model, recipe.moe
    family = hf.model_type
    if family == "qwen3_moe":
        return (
            "model.init_from: Qwen3-MoE normalizes queries and keys per head (q_norm/k_norm), which our GPT's "
            "attention does not; train it with moe.impl=autoep model.family=qwen3_moe"
        )
    if family not in SUPPORTED:
        return (
            f"model.init_from: {family} checkpoints cannot start moe.impl=deepspeed; supported: mixtral, "
            f"qwen2_moe (MoE), llama (dense, or MoE with model.upcycle=true)"
        )
    if m.upcycle and family != "llama":
        return (
            f"model.upcycle copies a dense MLP into the experts: model.init_from must be a dense llama "
            f"checkpoint, got {family}"
        )
    if m.upcycle and not e.enabled:
        return "model.upcycle needs moe.enabled=true (it turns the dense MLPs into MoE layers)"
    if not m.upcycle and e.enabled and family == "llama":
        return "model.init_from is a dense llama checkpoint but moe.enabled=true: set model.upcycle=true to upcycle it"
    if not e.enabled and family != "llama":
        return f"model.init_from is a {family} MoE checkpoint but moe.enabled=false"
    if e.enabled and (e.use_residual or isinstance(e.num_experts, list)):
        return (
            "model.init_from fills neither Residual-MoE's dense branch (moe.use_residual) nor per-layer expert "
            "counts (PR-MoE)"
        )
    problem = _architecture_problem(hf, family, e.top_k)
    if problem:
        return problem
    config = config_from_recipe(recipe, vocab_size=m.vocab_size or hf.vocab_size)
    if m.upcycle:
        if config.expert_d_ff != config.d_ff:
            return (
                f"model.upcycle copies the dense MLP (intermediate_size={hf.intermediate_size}) into every expert: "
                f"moe.expert_d_ff={config.expert_d_ff} must equal it"
            )
        config.moe_enabled = False  # the checkpoint is the recipe's dense twin
    if family == "mixtral" and config.moe_interval != 1:
        return (
            f"model.init_from: Mixtral has MoE in every layer, the recipe has moe.interval={config.moe_interval}: "
            f"set moe.interval=1"
        )
    expected = hf_config_fields(config, family)
    for key in ("intermediate_size", *RECIPE_FIELDS):
        if key in expected and getattr(hf, key, None) != expected[key]:
            return (
                f"model.init_from: the checkpoint has {key}={getattr(hf, key, None)}, the recipe gives "
                f"{_recipe_field(key, family)}={expected[key]}"
            )
    theta = (getattr(hf, "rope_parameters", None) or {}).get("rope_theta", getattr(hf, "rope_theta", None))
    if theta != m.rope_theta:
        return (
            f"model.init_from: the checkpoint has rope_theta={theta}, the recipe gives model.rope_theta={m.rope_theta}"
        )
    return None


def hf_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """The checkpoint's fp32 weights under our names (global expert indices), through the stock HF class (which
    reads any on-disk layout, e.g. Mixtral's legacy per-expert w1/w2/w3 files)."""
    from transformers import AutoModelForCausalLM

    hf_model = AutoModelForCausalLM.from_pretrained(Path(folder).expanduser(), dtype=torch.float32)
    return from_hf(hf_model.state_dict())


def upcycled(dense: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """Dense weights (our names) -> MoE weights: every expert of MoE layer L is a copy of layer L's dense MLP, and
    its router is zero (uniform routing probabilities)."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in dense.items():
        match = DENSE_MLP.fullmatch(name)
        if not match or not config.is_moe_layer(int(match.group(1))):
            out[name] = tensor
            continue
        layer, proj = int(match.group(1)), match.group(2)
        for expert in range(config.experts_in_layer(layer)):
            out[EXPERT_NAME.format(layer=layer, expert=expert, proj=proj)] = tensor.clone()
        out[GATE_NAME.format(layer=layer)] = torch.zeros(config.experts_in_layer(layer), config.d_model)  # (E, d)
    return out


@torch.no_grad()
def load_init_from(model, folder: str | Path, ep_rank: int = 0, upcycle: bool = False) -> None:
    """Overwrite every parameter of our freshly built `model` with the checkpoint's (this EP rank's experts)."""
    weights = hf_weights(folder)
    if upcycle:
        weights = upcycled(weights, model.config)
    counts = local_expert_counts(model.config)
    state = {name: weights.get(global_param_name(name, ep_rank, counts)) for name, _ in model.named_parameters()}
    missing = [name for name, tensor in state.items() if tensor is None]
    if missing:
        raise ValueError(f"model.init_from {folder} has no weight for {missing[0]} (and {len(missing) - 1} more)")
    for name, param in model.named_parameters():
        if state[name].shape != param.shape:
            raise ValueError(
                f"model.init_from {folder}: {name} is {tuple(state[name].shape)}, ours {tuple(param.shape)}"
            )
        param.copy_(state[name])


def load_family_checkpoint(recipe) -> torch.nn.Module:
    """moe.impl=autoep: the stock HF model of the recipe's family with the `model.init_from` weights, its router
    logits and aux loss set as the recipe trains them."""
    import transformers

    family = FAMILIES[recipe.model.family]
    model = getattr(transformers, family.model_class).from_pretrained(recipe.model.init_from, dtype=torch.float32)
    model.config.output_router_logits = family.aux_loss
    model.config.router_aux_loss_coef = recipe.moe.aux_loss_coef
    return model
