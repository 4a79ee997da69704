"""On CUDA in bf16, our attention (head_dim 128 as in recipes/gpu, grouped-query heads) runs on SDPA's
FlashAttention-2 kernel: forcing that backend raises if it cannot serve the call."""

import pytest
import torch
from torch.nn.attention import SDPBackend

from tests.model.test_fused_attention import attention_step

pytestmark = pytest.mark.gpu


def test_gpu_recipe_attention_runs_on_flash_attention():
    flash, flash_grad = attention_step(
        "cuda", torch.bfloat16, d_model=2048, heads=16, kv_heads=8, backend=SDPBackend.FLASH_ATTENTION
    )
    math, math_grad = attention_step(
        "cuda", torch.bfloat16, d_model=2048, heads=16, kv_heads=8, backend=SDPBackend.MATH
    )
    torch.testing.assert_close(flash, math, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(flash_grad, math_grad, rtol=5e-2, atol=5e-2)
