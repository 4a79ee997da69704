"""The one weight-name mapping between our GPT and the stock HF Llama / Mixtral / Qwen2-MoE classes.

`moe.export` applies it forwards (ours -> HF), `moe.checkpoint.hf_import` backwards (HF -> ours). Our names use
*global* expert indices (as the per-expert checkpoint files and `moe.model.build.global_param_name` do).

    ours                                                     HF
    embed_tokens.weight, norm.weight                         model.embed_tokens.weight, model.norm.weight
    lm_head.weight                                           lm_head.weight
    layers.L.attn_norm / mlp_norm                            model.layers.L.input_layernorm / post_attention_layernorm
    layers.L.attn.{q,k,v,o}_proj                             model.layers.L.self_attn.{q,k,v,o}_proj
    layers.L.mlp.{gate,up,down}_proj (dense MLP)             model.layers.L.mlp.{gate,up,down}_proj
    layers.L.mlp.moe.deepspeed_moe.gate.wg.weight (E, d)     model.layers.L.mlp.gate.weight
    layers.L.mlp.moe...deepspeed_experts.e.gate_proj (ff, d) model.layers.L.mlp.experts.gate_up_proj[e, :ff]
    layers.L.mlp.moe...deepspeed_experts.e.up_proj (ff, d)   model.layers.L.mlp.experts.gate_up_proj[e, ff:]
    layers.L.mlp.moe...deepspeed_experts.e.down_proj (d, ff) model.layers.L.mlp.experts.down_proj[e]
"""

from __future__ import annotations

import re

import torch

EXPERT_PARAM = re.compile(r"layers\.(\d+)\.mlp\.moe\.deepspeed_moe\.experts\.deepspeed_experts\.(\d+)\.(\w+)\.weight")
GATE_PARAM = re.compile(r"layers\.(\d+)\.mlp\.moe\.deepspeed_moe\.gate\.wg\.weight")
HF_GATE = re.compile(r"model\.layers\.(\d+)\.mlp\.gate\.weight")
HF_EXPERTS = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)")
# (ours, HF) pieces of the non-expert names, below the `model.` prefix
RENAMES = (
    (".attn_norm.", ".input_layernorm."),
    (".mlp_norm.", ".post_attention_layernorm."),
    (".attn.", ".self_attn."),
)
EXPERT_NAME = "layers.{layer}.mlp.moe.deepspeed_moe.experts.deepspeed_experts.{expert}.{proj}.weight"
GATE_NAME = "layers.{layer}.mlp.moe.deepspeed_moe.gate.wg.weight"


def _rename(name: str, forward: bool) -> str:
    for ours, hf in RENAMES:
        name = name.replace(ours, hf) if forward else name.replace(hf, ours)
    return name


def to_hf(state: dict[str, torch.Tensor], num_experts: int) -> dict[str, torch.Tensor]:
    """Our (global-named, all experts) state dict -> HF names, experts stacked as (E, 2·ff, d) and (E, d, ff)."""
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
            out[f"model.{_rename(name, forward=True)}"] = tensor
    for layer in sorted({layer for layer, _ in experts}):
        ordered = [experts[(layer, e)] for e in range(num_experts)]
        prefix = f"model.layers.{layer}.mlp.experts."
        out[prefix + "gate_up_proj"] = torch.stack([torch.cat([w["gate_proj"], w["up_proj"]]) for w in ordered])
        out[prefix + "down_proj"] = torch.stack([w["down_proj"] for w in ordered])
    return out


def from_hf(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF names -> ours (global expert indices), experts unstacked; the inverse of `to_hf`.

    Entries our GPT has no counterpart for (Qwen2-MoE's zero-width shared expert and its gate) are left out;
    `moe.checkpoint.hf_import` refuses checkpoints where they carry weight."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in hf_state.items():
        if ".shared_expert" in name:
            continue
        if m := HF_GATE.fullmatch(name):
            out[GATE_NAME.format(layer=m.group(1))] = tensor
        elif m := HF_EXPERTS.fullmatch(name):
            layer, kind = m.group(1), m.group(2)
            for e, w in enumerate(tensor):  # (2·ff, d) or (d, ff) per expert
                if kind == "down_proj":
                    out[EXPERT_NAME.format(layer=layer, expert=e, proj="down_proj")] = w
                else:
                    gate, up = w.chunk(2, dim=0)  # (ff, d) each
                    out[EXPERT_NAME.format(layer=layer, expert=e, proj="gate_proj")] = gate
                    out[EXPERT_NAME.format(layer=layer, expert=e, proj="up_proj")] = up
        elif name == "lm_head.weight":
            out[name] = tensor
        else:
            out[_rename(name.removeprefix("model."), forward=False)] = tensor
    return out
