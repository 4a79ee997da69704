"""Attention runs on SDPA's fused flash kernel, never on its unfused math fallback: forcing the flash backend (which
raises when it cannot serve a call) runs our attention forward and backward, with grouped-query heads, in fp32 and
bf16 on CPU; tests/model/test_fused_attention_gpu.py does the same on CUDA. AutoEP's HF families use SDPA too."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from moe.model.layers import CausalSelfAttention, RotaryEmbedding


def attention_step(
    device: str,
    dtype: torch.dtype,
    d_model: int = 256,
    heads: int = 4,
    kv_heads: int = 2,
    backend: SDPBackend | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, input grad) of one forward + backward, under `backend` only (None: SDPA's own choice)."""
    torch.manual_seed(0)
    attn = CausalSelfAttention(d_model, heads, kv_heads).to(device, dtype)
    x = torch.randn(2, 64, d_model, device=device, dtype=dtype, requires_grad=True)  # (B, T, d)
    cos, sin = RotaryEmbedding(d_model // heads, 1e4)(64, x.device)
    with sdpa_kernel(backend) if backend is not None else torch.enable_grad():
        y = attn(x, cos, sin)
        y.float().square().mean().backward()
    return y.detach(), x.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_our_attention_runs_on_the_flash_kernel_on_cpu(dtype):
    flash, flash_grad = attention_step("cpu", dtype, backend=SDPBackend.FLASH_ATTENTION)
    math, math_grad = attention_step("cpu", dtype, backend=SDPBackend.MATH)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(flash, math, **tol)
    torch.testing.assert_close(flash_grad, math_grad, **tol)


def test_autoep_families_use_sdpa():
    from moe.config import load_recipe
    from moe.model.hf.families import build_hf_model

    for family in ("mixtral", "qwen3_moe", "deepseek_v3"):
        overrides = [f"model.family={family}"] + (["moe.aux_loss_coef=0"] if family == "deepseek_v3" else [])
        model = build_hf_model(load_recipe("recipes/autoep.yaml", overrides), 512, 0)
        assert model.config._attn_implementation == "sdpa", family
