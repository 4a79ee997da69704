"""Activation memory of one micro-batch: the tensors autograd keeps from forward to backward, per rank.

Our GPT (moe.impl=deepspeed) is counted tensor by tensor as modeling.py and DeepSpeed's MOELayer (sparse slot
dispatch, deepspeed/moe/sharded_moe.py) save them; tests/plan/test_activations.py checks the sum against the
bytes autograd actually saves. Elements are the compute dtype (`a` bytes); norms' reciprocal RMS, attention's
log-sum-exp, the router, RMSNorm's internals and the loss's per-row log-sum-exp (the HF families' loss: its
log-softmax) are fp32 whatever the dtype, and so is our GPT's attention on CPU.

MoE capacity buffers: every local expert runs on its full capacity of rows (padding included), so the expert
activations are (experts x capacity) rows, capacity ~ k · tokens · capacity_factor / experts per expert.

HF families (moe.impl=autoep) are approximated with the same per-tensor pattern: AutoEP is dropless, so expert
rows are exactly k · tokens; DeepSeek-V3's latent attention is counted like standard attention of its q·k and v
widths. These are not checked tensor by tensor.

Checkpointing (every block boundary): a block keeps its input only; one block's activations are rebuilt at a
time during backward. With train.recompute=mlp only the MLP interiors (4 x ff wide per row) are dropped and rebuilt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FP32, INT64 = 4, 8


@dataclass(frozen=True)
class Activations:
    per_layer: tuple[float, ...]  # bytes each block keeps for backward, in layer order
    moe_buffers: float  # of which the expert rows at capacity (padding included), all MoE layers
    head: float  # embedding ids, final norm, LM-head input, loss log-softmax (kept for backward)
    logits_workspace: float  # logits (held by the output) + two fp32 (tokens, vocab) grads in the loss backward
    layer_input: float  # one block's input, what checkpointing keeps per layer
    mlp_interior: tuple[float, ...] = ()  # per layer: the MLP's / experts' 4 x ff-wide tensors (train.recompute=mlp)

    @property
    def saved(self) -> float:
        """What autograd keeps at the end of forward."""
        return sum(self.per_layer) + self.head

    @property
    def full(self) -> float:
        """Peak of forward + backward without checkpointing: everything saved, plus the loss backward."""
        return self.saved + self.logits_workspace

    @property
    def checkpointed(self) -> float:
        """Peak with checkpointing at every block: block inputs, one block rebuilt, the head and loss backward."""
        return (
            len(self.per_layer) * self.layer_input + max(self.per_layer, default=0.0) + self.full - sum(self.per_layer)
        )

    @property
    def mlp_checkpointed(self) -> float:
        """Peak with train.recompute=mlp: everything but the MLP interiors, plus one interior rebuilt at a time."""
        return self.full - sum(self.mlp_interior) + max(self.mlp_interior, default=0.0)


def capacity(tokens: int, num_experts: int, top_k: int, capacity_factor: float, min_capacity: int) -> int:
    """Rows per expert in deepspeed.moe gating: ceil(tokens / experts · capacity_factor · k), at least
    min_capacity. Dropless routing (drop_tokens=false) sizes it to the
    busiest expert at run time; the plan uses the same formula, i.e. assumes balanced routing."""
    factor = capacity_factor * top_k
    return max(math.ceil(tokens / num_experts * factor), min_capacity)


def _norm(N: int, d: int, a: int) -> float:
    return N * (2 * d + 1) * FP32  # RMSNorm computes in fp32: input, normalized input, reciprocal RMS


def _attention(
    N: int, d: int, q_width: int, kv_width: int, v_width: int, heads: int, a: int, s: int | None = None
) -> float:
    """norm; projection input; rotated q, k and v, and SDPA's output, in the attention dtype (`s` bytes: our GPT
    runs attention in fp32 on CPU, moe/model/layers.py); the output's flattened copy (o_proj input); log-sum-exp."""
    s = a if s is None else s
    return _norm(N, d, a) + N * (d * a + (q_width + 2 * kv_width + v_width) * s + v_width * a + heads * FP32)


def _dense_mlp(N: int, d: int, ff: int, a: int) -> float:
    return _norm(N, d, a) + N * (d + 4 * ff) * a  # input, gate, silu(gate), up, their product


def _head(N: int, T: int, d: int, vocab: int, a: int) -> tuple[float, float]:
    """HF's loss (an fp32 upcast, then cross entropy): (kept: ids, final norm, LM-head input, log-softmax of T-1
    positions; logits workspace)."""
    kept = N * INT64 + _norm(N, d, a) + N * d * a + N * (T - 1) / T * vocab * FP32
    return kept, N * vocab * (a + 2 * FP32)


def _chunked_loss_head(N: int, d: int, vocab: int, a: int) -> tuple[float, float]:
    """Our GPT's loss, DeepSpeed's chunked cross entropy (moe/model/modeling.py): (kept: ids, final norm, LM-head
    input, the logits themselves and per row an fp32 log-sum-exp, target and mask; workspace: the logits' gradient
    in their dtype plus one block of fp32 rows, bounded here by 2^26 elements, DeepSpeed's largest block)."""
    kept = N * INT64 + _norm(N, d, a) + N * d * a + N * vocab * a + N * (FP32 + INT64 + 1)
    return kept, N * vocab * a + min(N * vocab, 1 << 26) * 2 * FP32


def gpt_activations(config, micro_batch: int, seq_len: int, dtype_bytes: int, cpu: bool = False) -> Activations:
    """Our GPT, one micro-batch of (micro_batch, seq_len) tokens on one rank (`cpu`: attention runs in fp32)."""
    N, d, a = micro_batch * seq_len, config.d_model, dtype_bytes
    kv = config.n_kv_heads * (d // config.n_heads)
    attention = _attention(N, d, d, kv, d, config.n_heads, a, FP32 if cpu else a)
    per_layer, interiors, buffers = [], [], 0.0
    for layer in range(config.n_layers):
        if config.is_moe_layer(layer):
            mlp, expert_bytes, interior = _deepspeed_moe_mlp(config, config.experts_in_layer(layer), N, a)
            buffers += expert_bytes
            interiors.append(interior)
        else:
            mlp = _dense_mlp(N, d, config.d_ff, a)
            interiors.append(N * 4 * config.d_ff * a)
        per_layer.append(attention + mlp)
    head, workspace = _chunked_loss_head(N, d, config.vocab_size, a)
    return Activations(tuple(per_layer), buffers, head, workspace, layer_input=N * d * a, mlp_interior=tuple(interiors))


def _deepspeed_moe_mlp(config, num_experts: int, N: int, a: int) -> tuple[float, float, float]:
    """(bytes one deepspeed.moe MoE MLP keeps, of which expert rows at capacity, of which the experts' 4 x ff-wide
    interiors) for N tokens on this rank."""
    d, k = config.d_model, config.num_experts_per_tok
    C = capacity(N, num_experts, k, config.capacity_factor, config.min_capacity)
    rows = num_experts * C  # all ranks' tokens for the E/ep local experts: ep · C rows each
    expert_rows = rows * ((d + 4 * config.expert_d_ff) * a + INT64)  # SwiGLU on every row + slot source index
    router = N * (d * FP32 + num_experts * 13 + 16 + k * INT64)  # fp32 input, softmax, masks, gates, indices
    combine = N * k * (INT64 + FP32 + d * a)  # slots, gate values, routed expert outputs
    residual = _dense_mlp(N, d, config.d_ff, a) - _norm(N, d, a) if config.use_residual else 0.0
    return _norm(N, d, a) + router + expert_rows + combine + residual, expert_rows, rows * 4 * config.expert_d_ff * a


def hf_activations(config, micro_batch: int, seq_len: int, dtype_bytes: int) -> Activations:
    """An HF family under AutoEP (dropless: k · tokens expert rows per rank on average), approximate."""
    from moe.model.cost import hf_experts, hf_moe_layer_ids

    N, T, d, a = micro_batch * seq_len, seq_len, config.hidden_size, dtype_bytes
    heads = config.num_attention_heads
    if config.model_type == "deepseek_v3":  # latent attention: q and k of nope+rope width, v of v_head_dim
        q = heads * (config.qk_nope_head_dim + config.qk_rope_head_dim)
        attention = _attention(N, d, q, q, heads * config.v_head_dim, heads, a) + N * config.kv_lora_rank * 2 * a
    else:
        head_dim = getattr(config, "head_dim", None) or d // heads
        attention = _attention(
            N, d, heads * head_dim, config.num_key_value_heads * head_dim, heads * head_dim, heads, a
        )
    num_experts, expert_ff = hf_experts(config)
    shared_ff = expert_ff * (getattr(config, "n_shared_experts", None) or 0)
    rows = config.num_experts_per_tok * N  # dropless grouped GEMM: exactly the routes, gathered from all EP ranks
    moe_layers = set(hf_moe_layer_ids(config))
    per_layer, buffers = [], 0.0
    for layer in range(config.num_hidden_layers):
        if layer in moe_layers:
            expert_rows = rows * ((d + 4 * expert_ff) * a + INT64)
            buffers += expert_rows
            mlp = (
                _norm(N, d, a)
                + N * (d * FP32 + num_experts * 3 * FP32)
                + expert_rows
                + N * config.num_experts_per_tok * (d * a + FP32)
                + (N * (d + 4 * shared_ff) * a if shared_ff else 0)
            )
        else:
            mlp = _dense_mlp(N, d, config.intermediate_size, a)
        per_layer.append(attention + mlp)
    head, workspace = _head(N, T, d, config.vocab_size, a)
    return Activations(
        tuple(per_layer), buffers, head, workspace + N * config.vocab_size * FP32 * (a < FP32), layer_input=N * d * a
    )
