"""One MoE layer built four ways from one weight set, so that all four compute the same function.

    deepspeed_native  deepspeed.moe.layer.MoE (drop_tokens=False) with our SwiGLU expert: TopKGate, then every
                      expert runs on a (capacity, d) slab padded to the busiest expert's token count.
    deepspeed_native_batched
                      the same layer with moe.batched_experts: the padded slabs of all local experts go through
                      three batched matmuls (moe/model/batched_experts.py) instead of a loop of 3 per expert.
    autoep_grouped    the AutoEPMoELayer that DeepSpeed AutoEP swaps in for a Hugging Face sparse-MoE block:
                      tokens sorted by expert, one grouped GEMM per projection (torch._grouped_mm, the Triton
                      kernel on sm8x GPUs, or AutoEP's own per-expert loop when use_grouped_mm=False).
    hf_eager          transformers' Qwen3MoeSparseMoeBlock with the eager experts loop (one matmul per hit expert).

Routing is the same in all three: softmax over the expert logits, top-k, and the k weights multiply the expert
outputs (AutoEP's score_apply="post"). DeepSpeed's TopKGate renormalizes the k weights for k >= 2 and keeps the
raw probability at k=1; Mixtral's router renormalizes at every k (a top-1 weight is always 1), so it cannot match
DeepSpeed at k=1. Qwen3-MoE's router has the switch (`norm_topk_prob`), and AutoEP reads it from the HF config,
so the HF blocks here are Qwen3-MoE with norm_topk_prob = (k >= 2) and `normalize` overrides it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
from torch import nn

GRAD = "grad"
DATA = "data"


@dataclass
class MoEWeights:
    """The weights of one SwiGLU MoE layer in one layout: expert e computes down[e] @ (silu(gate[e] x) * up[e] x)."""

    router: torch.Tensor  # (E, d)
    gate: torch.Tensor  # (E, f, d)
    up: torch.Tensor  # (E, f, d)
    down: torch.Tensor  # (E, d, f)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def random_weights(d_model: int, d_ff: int, num_experts: int, seed: int = 0) -> MoEWeights:
    """fp32 weights scaled by 1/sqrt(fan_in), so activations stay O(1) at any size."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int, fan_in: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) / fan_in**0.5

    return MoEWeights(
        router=randn(num_experts, d_model, fan_in=d_model),
        gate=randn(num_experts, d_ff, d_model, fan_in=d_model),
        up=randn(num_experts, d_ff, d_model, fan_in=d_model),
        down=randn(num_experts, d_model, d_ff, fan_in=d_ff),
    )


def deepspeed_normalizes(k: int) -> bool:
    """TopKGate's rule: top-1 keeps the raw softmax probability, top-k (k >= 2) renormalizes over the k chosen."""
    return k >= 2


# --- DeepSpeed native: deepspeed.moe.layer.MoE --------------------------------------------------------------------


class NativeMoE(nn.Module):
    """deepspeed.moe.layer.MoE returns (output, aux loss, expert counts); the other two return the output only."""

    def __init__(self, moe: nn.Module):
        super().__init__()
        self.moe = moe

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, T, d)
        return self.moe(x)[0]


def deepspeed_native_batched(w: MoEWeights, k: int) -> NativeMoE:
    """deepspeed_native with its local experts run as batched matmuls (moe.batched_experts)."""
    from moe.model.batched_experts import use_batched_experts

    layer = deepspeed_native(w, k)
    use_batched_experts(layer.moe)
    return layer


def deepspeed_native(w: MoEWeights, k: int) -> NativeMoE:
    from deepspeed.moe.layer import MoE

    from moe.model.layers import SwiGLU

    num_experts, d_ff, d_model = w.gate.shape
    # Dropless and deterministic: no token dropping, no random token selection, no sampled 2nd expert.
    moe = MoE(
        hidden_size=d_model,
        expert=SwiGLU(d_model, d_ff),
        num_experts=num_experts,
        ep_size=1,
        k=k,
        min_capacity=0,
        drop_tokens=False,
        use_rts=False,
        top2_2nd_expert_sampling=False,
    )
    inner = moe.deepspeed_moe
    with torch.no_grad():
        inner.gate.wg.weight.copy_(w.router)
        for e, expert in enumerate(inner.experts.deepspeed_experts):
            expert.gate_proj.weight.copy_(w.gate[e])
            expert.up_proj.weight.copy_(w.up[e])
            expert.down_proj.weight.copy_(w.down[e])
    return NativeMoE(moe)


def read_native(layer: NativeMoE, attr: str = DATA) -> MoEWeights:
    inner = layer.moe.deepspeed_moe
    experts = inner.experts.deepspeed_experts

    def stack(name: str) -> torch.Tensor:  # E x (rows, cols) -> (E, rows, cols)
        return torch.stack([getattr(getattr(ex, name).weight, attr) for ex in experts])

    return MoEWeights(getattr(inner.gate.wg.weight, attr), stack("gate_proj"), stack("up_proj"), stack("down_proj"))


# --- Hugging Face Qwen3-MoE block (the AutoEP source and the eager baseline) --------------------------------------


def qwen3_moe_config(w: MoEWeights, k: int, normalize: bool, experts_implementation: str = "eager"):
    from transformers import Qwen3MoeConfig

    num_experts, d_ff, d_model = w.gate.shape
    # Only the MoE block is used; attention and vocabulary are the smallest the config accepts.
    return Qwen3MoeConfig(
        vocab_size=2,
        hidden_size=d_model,
        intermediate_size=d_ff,
        moe_intermediate_size=d_ff,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=8,
        num_experts=num_experts,
        num_experts_per_tok=k,
        norm_topk_prob=normalize,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        experts_implementation=experts_implementation,
    )


def load_hf_block(block: nn.Module, w: MoEWeights) -> None:
    """HF fuses gate and up: gate_up_proj is (E, 2f, d) with gate first; down_proj is (E, d, f)."""
    with torch.no_grad():
        block.gate.weight.copy_(w.router)
        block.experts.gate_up_proj.copy_(torch.cat([w.gate, w.up], dim=1))
        block.experts.down_proj.copy_(w.down)


def hf_eager(w: MoEWeights, k: int, normalize: bool | None = None) -> nn.Module:
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

    normalize = deepspeed_normalizes(k) if normalize is None else normalize
    block = Qwen3MoeSparseMoeBlock(qwen3_moe_config(w, k, normalize, experts_implementation="eager"))
    load_hf_block(block, w)
    return block


def read_hf(block: nn.Module, attr: str = DATA) -> MoEWeights:
    gate, up = getattr(block.experts.gate_up_proj, attr).chunk(2, dim=1)  # (E, f, d) each
    return MoEWeights(getattr(block.gate.weight, attr), gate, up, getattr(block.experts.down_proj, attr))


# --- DeepSpeed AutoEP grouped experts --------------------------------------------------------------------------------


def autoep_grouped(
    w: MoEWeights,
    k: int,
    normalize: bool | None = None,
    *,
    family: str = "qwen3_moe",
    use_grouped_mm: bool = True,
    disable_triton_grouped_mm: bool = False,
) -> nn.Module:
    """The layer DeepSpeed AutoEP puts in place of an HF sparse-MoE block, with autoep_size=1.

    The calls are DeepSpeedEngine's own (engine.py, AutoEP setup): AutoEP(model, parse_autoep_config(section)),
    ep_parser() to detect the MoE blocks, replace_moe_layers(specs, ep_size, ep_rank). They run on a real 1-layer HF
    model, since detection matches the HF module names. With ep_size=1 the layer never communicates, so no process
    group is needed. `normalize=None` is DeepSpeed's rule for Qwen3-MoE. `family="mixtral"` builds from
    MixtralForCausalLM instead, whose router always renormalizes (`normalize` must then be True or None).
    GroupedExperts picks its Triton kernel from the accelerator (sm8x GPUs), not from the tensors' device:
    `disable_triton_grouped_mm` keeps CPU tensors on torch._grouped_mm on such a machine.
    """
    from deepspeed.module_inject.auto_ep import AutoEP
    from deepspeed.module_inject.auto_ep_config import parse_autoep_config

    if normalize is None:
        normalize = True if family == "mixtral" else deepspeed_normalizes(k)
    model = _one_layer_hf_model(w, k, normalize, family)
    load_hf_block(model.model.layers[0].mlp, w)
    autoep = AutoEP(
        model,
        parse_autoep_config(
            {
                "enabled": True,
                "autoep_size": 1,
                "preset_model": family,
                "use_grouped_mm": use_grouped_mm,
                "disable_triton_grouped_mm": disable_triton_grouped_mm,
            }
        ),
    )
    specs = autoep.ep_parser()
    autoep.replace_moe_layers(specs, ep_size=1, ep_rank=0)
    layer = model.model.layers[0].mlp
    assert type(layer).__name__ == "AutoEPMoELayer", type(layer)
    return layer


def _one_layer_hf_model(w: MoEWeights, k: int, normalize: bool, family: str) -> nn.Module:
    if family == "qwen3_moe":
        from transformers import Qwen3MoeForCausalLM

        return Qwen3MoeForCausalLM(qwen3_moe_config(w, k, normalize))
    if family == "mixtral":
        from transformers import MixtralConfig, MixtralForCausalLM

        if not normalize:
            raise ValueError("Mixtral's router always renormalizes the top-k weights; use family='qwen3_moe'")
        num_experts, d_ff, d_model = w.gate.shape
        return MixtralForCausalLM(
            MixtralConfig(
                vocab_size=2,
                hidden_size=d_model,
                intermediate_size=d_ff,
                num_hidden_layers=1,
                num_attention_heads=1,
                num_key_value_heads=1,
                head_dim=8,
                num_local_experts=num_experts,
                num_experts_per_tok=k,
            )
        )
    raise ValueError(f"unknown family {family!r}; expected qwen3_moe or mixtral")


def read_autoep(layer: nn.Module, attr: str = DATA) -> MoEWeights:
    """AutoEP's GroupedExperts keep w1 = gate (E, f, d), w3 = up (E, f, d), w2 = down (E, d, f)."""
    ex = layer.experts
    return MoEWeights(
        getattr(layer.router.gate.weight, attr), getattr(ex.w1, attr), getattr(ex.w3, attr), getattr(ex.w2, attr)
    )


def autoep_expert_path(layer: nn.Module) -> str:
    """Which of GroupedExperts' three code paths this layer's experts run."""
    if layer.experts.use_triton_grouped_mm:
        return "triton grouped GEMM"
    return "torch._grouped_mm" if layer.experts.use_grouped_mm else "per-expert loop"


@dataclass(frozen=True)
class Implementation:
    name: str
    build: Callable[[MoEWeights, int], nn.Module]  # (weights, k) -> module mapping (B, T, d) -> (B, T, d)
    read: Callable[[nn.Module, str], MoEWeights]  # (module, DATA or GRAD) -> its weights or grads, common layout


IMPLEMENTATIONS = (
    Implementation("deepspeed_native", deepspeed_native, read_native),
    Implementation("deepspeed_native_batched", deepspeed_native_batched, read_native),
    Implementation("autoep_grouped", autoep_grouped, read_autoep),
    Implementation("hf_eager", hf_eager, read_hf),
)


def build_all(w: MoEWeights, k: int, device: str, dtype: torch.dtype) -> dict[str, nn.Module]:
    """The layers on `device` in `dtype`, each holding a copy of `w`, in training mode."""
    layers = {}
    for impl in IMPLEMENTATIONS:
        options = {"disable_triton_grouped_mm": device == "cpu"} if impl.build is autoep_grouped else {}
        layers[impl.name] = impl.build(w, k, **options).to(device=device, dtype=dtype).train()
    return layers
