"""The fast MoE paths equal the plain loop over experts (moe/model/reference.py) on the same weights, dropless:
forward output, input gradient and every weight gradient (router, gate, up, down of each expert), fp32.

How each path weights a token's k experts, and the reference it is held to:
  DeepSpeed native (TopKGate)        top-1: raw softmax probability; top-k (k >= 2): renormalized over the k
                                     -> reference_moe(normalize=None), DeepSpeed's rule
  AutoEP, Mixtral preset             renormalized at every k (a top-1 weight is 1)   -> normalize=True
  AutoEP, Qwen3-MoE norm_topk_prob   renormalized iff norm_topk_prob                 -> normalize=norm_topk_prob
  HF eager Qwen3-MoE block           the same as AutoEP on that config
The layers come from benchmarks/moe_layer_impls.py, the builders benchmarks/moe_layer.py times.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmarks.moe_layer_impls import (
    DATA,
    GRAD,
    IMPLEMENTATIONS,
    MoEWeights,
    autoep_expert_path,
    autoep_grouped,
    deepspeed_normalizes,
    random_weights,
    read_autoep,
)
from moe.model.reference import reference_moe

D_MODEL, D_FF, EXPERTS = 32, 48, 4
TOL = dict(rtol=1e-5, atol=5e-6)  # fp32; the router gradient sums over every token, so summation order shows at ~2e-6


def loop_reference(w: MoEWeights, x: torch.Tensor, k: int, normalize: bool | None) -> torch.Tensor:
    """reference_moe with expert e = down[e] @ (silu(gate[e] x) * up[e] x); gradients land on w's tensors."""
    experts = [
        lambda t, e=e: F.linear(F.silu(F.linear(t, w.gate[e])) * F.linear(t, w.up[e]), w.down[e])
        for e in range(w.router.shape[0])
    ]
    return reference_moe(x, w.router, experts, k, normalize=normalize)


def assert_matches_reference(layer, read, k: int, normalize: bool | None, seed: int = 0) -> None:
    """Forward, input gradient and weight gradients of `layer` equal the loop reference on the layer's weights."""
    w_ref = MoEWeights(**{n: t.detach().clone().requires_grad_(True) for n, t in read(layer, DATA).tensors().items()})
    x = torch.randn(2, 24, D_MODEL, generator=torch.Generator().manual_seed(seed), requires_grad=True)  # (B, T, d)
    x_ref = x.detach().clone().requires_grad_(True)
    out, ref = layer(x), loop_reference(w_ref, x_ref, k, normalize)
    torch.testing.assert_close(out, ref, **TOL)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    ref.backward(grad_out)
    torch.testing.assert_close(x.grad, x_ref.grad, **TOL)
    for name, grad in read(layer, GRAD).tensors().items():
        torch.testing.assert_close(grad, getattr(w_ref, name).grad, **TOL, msg=lambda m, name=name: f"{name} grad: {m}")


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("impl", IMPLEMENTATIONS, ids=lambda impl: impl.name)
def test_each_implementation_equals_the_loop_at_deepspeed_normalization(impl, k):
    layer = impl.build(random_weights(D_MODEL, D_FF, EXPERTS, seed=k), k).train()
    assert_matches_reference(layer, impl.read, k, normalize=deepspeed_normalizes(k))


def test_autoep_runs_the_grouped_gemm_path_here():
    """On CPU (and sm90+ GPUs) AutoEP's experts are one torch._grouped_mm per projection, not its loop fallback."""
    layer = autoep_grouped(random_weights(D_MODEL, D_FF, EXPERTS), 2)
    expected = "triton grouped GEMM" if layer.experts.use_triton_grouped_mm else "torch._grouped_mm"
    assert autoep_expert_path(layer) == expected and hasattr(torch, "_grouped_mm")
    assert type(layer.experts).__name__ == "GroupedExperts" and layer.experts.w1.shape == (EXPERTS, D_FF, D_MODEL)


@pytest.mark.parametrize("use_grouped_mm", [True, False], ids=["grouped_mm", "loop_fallback"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_autoep_mixtral_preset_renormalizes_at_every_k(k, use_grouped_mm):
    layer = autoep_grouped(
        random_weights(D_MODEL, D_FF, EXPERTS, seed=10 + k), k, family="mixtral", use_grouped_mm=use_grouped_mm
    ).train()
    assert layer.router.route_norm
    assert_matches_reference(layer, read_autoep, k, normalize=True)


@pytest.mark.parametrize("k", [1, 2])
def test_autoep_qwen3_without_norm_topk_prob_keeps_raw_probabilities(k):
    layer = autoep_grouped(random_weights(D_MODEL, D_FF, EXPERTS, seed=20 + k), k, normalize=False).train()
    assert not layer.router.route_norm
    assert_matches_reference(layer, read_autoep, k, normalize=False)


def test_top1_deepspeed_weights_by_the_raw_probability_where_mixtral_weights_by_one():
    """At k=1 the two rules differ by exactly the chosen expert's softmax probability."""
    w = random_weights(D_MODEL, D_FF, EXPERTS, seed=30)
    native = IMPLEMENTATIONS[0].build(w, 1)
    mixtral = autoep_grouped(w, 1, family="mixtral")
    x = torch.randn(2, 24, D_MODEL)  # (B, T, d)
    top_p = F.softmax(x @ w.router.t(), dim=-1).max(dim=-1).values  # (B, T)
    with torch.no_grad():
        torch.testing.assert_close(native(x), mixtral(x) * top_p[..., None], **TOL)
        assert not torch.allclose(native(x), mixtral(x), rtol=1e-2, atol=1e-3)


def test_reference_default_is_deepspeeds_rule():
    """`normalize=None` keeps reference_moe's original behaviour for its existing callers."""
    w = random_weights(D_MODEL, D_FF, EXPERTS, seed=40)
    x = torch.randn(1, 8, D_MODEL)
    for k in (1, 2):
        torch.testing.assert_close(loop_reference(w, x, k, None), loop_reference(w, x, k, k >= 2), rtol=0, atol=0)
