"""Dense transformer parts: rotary embeddings, causal self-attention through SDPA, and the SwiGLU MLP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE). The tables are computed per forward from plain attributes: a
    non-persistent buffer would come back uninitialized from `from_pretrained`'s meta-device load."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.head_dim, self.theta = head_dim, theta

    def forward(self, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        exponents = torch.arange(0, self.head_dim, 2, device=device, dtype=torch.float32) / self.head_dim
        inv_freq = 1.0 / (self.theta**exponents)  # (hd/2,)
        freqs = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)  # (T, hd/2)
        return freqs.cos(), freqs.sin()


def apply_rotary(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """x: (B, H, T, hd); rotates pairs (x1, x2) = halves of the head dim, in fp32; returns `dtype` (default x's)."""
    x1, x2 = x.float().chunk(2, dim=-1)  # (B, H, T, hd/2) each
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.to(dtype or x.dtype)


def attention_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype SDPA runs in: the model's on a GPU, fp32 on CPU. SDPA's CPU flash kernel runs its bf16 backward
    1.6-3.2x slower than fp32 at head dims 128-32 (benchmarks/cpu_kernels.py, SPEED_NOTES.md section 8), and its
    fp32 forward is about as fast; RoPE already computes q and k in fp32, so on CPU they skip a cast down and back."""
    return torch.float32 if x.device.type == "cpu" else x.dtype


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int):
        super().__init__()
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        self.q_proj = nn.Linear(d_model, n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * self.head_dim, d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        dtype = attention_dtype(x)
        q, k = apply_rotary(q, cos, sin, dtype), apply_rotary(k, cos, sin, dtype)
        y = F.scaled_dot_product_attention(
            q, k, v.to(dtype), is_causal=True, enable_gqa=self.n_kv_heads != self.n_heads
        )  # (B, H, T, hd)
        return self.o_proj(y.to(x.dtype).transpose(1, 2).reshape(B, T, -1))  # (B, T, d)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)); also the expert of every MoE layer."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_ff, bias=False)
        self.up_proj = nn.Linear(d_model, d_ff, bias=False)
        self.down_proj = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., d) -> (..., d)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
