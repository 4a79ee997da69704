"""Two CPU kernels the training step leans on, fp32 against bf16: SDPA attention and the LM loss.

    python benchmarks/cpu_kernels.py                 # one thread; --json benchmarks/results/cpu_kernels.json

- attention: F.scaled_dot_product_attention(is_causal=True) forward and backward at (B, H, T, head_dim) shapes of
  the default recipe (head dim 32) and of wider heads (64, 128), in fp32 and in bf16. moe/model/layers.py runs
  attention in fp32 on CPU because of this table.
- loss: F.cross_entropy(logits.float()) against DeepSpeed's chunked cross entropy at the block size
  moe/model/modeling.py uses on CPU and at DeepSpeed's default, fwd+bwd of (rows, vocab) logits in fp32 and bf16, with
  the largest differences of their losses and gradients.

Each time is the best of --repeats after 2 warm-ups (ms).
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from deepspeed.runtime.chunked_cross_entropy import chunked_cross_entropy

from moe.model.modeling import cpu_loss_block_rows

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
ATTENTION_SHAPES = ((8, 4, 128, 32), (8, 8, 128, 64), (8, 4, 128, 128))  # (B, H, T, head_dim)


def best_ms(fn, repeats: int) -> float:
    times = []
    for i in range(repeats + 2):
        start = time.perf_counter()
        fn()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return min(times) * 1e3


def attention_ms(shape: tuple, dtype: torch.dtype, repeats: int) -> tuple[float, float]:
    """(forward ms, backward ms) of causal SDPA at `shape` (B, H, T, head_dim) in `dtype`."""
    q, k, v = (torch.randn(shape, dtype=dtype, requires_grad=True) for _ in range(3))
    grad = torch.randn(shape, dtype=dtype)
    forward = best_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), repeats)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    backward = best_ms(lambda: torch.autograd.grad(y, (q, k, v), grad, retain_graph=True), repeats)
    return forward, backward


def attention(repeats: int) -> list[dict]:
    rows = []
    for shape in ATTENTION_SHAPES:
        row = {"shape": list(shape)}
        for name, dtype in DTYPES.items():
            row[f"{name}_fwd_ms"], row[f"{name}_bwd_ms"] = attention_ms(shape, dtype, repeats)
        row["bf16_over_fp32_bwd"] = row["bf16_bwd_ms"] / row["fp32_bwd_ms"]
        rows.append(row)
    return rows


def loss_step(fn, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = logits.clone().requires_grad_()
    value = fn(x)
    value.backward()
    return value.detach(), x.grad


def loss(rows: int, vocab: int, repeats: int) -> list[dict]:
    target = torch.randint(0, vocab, (rows,))
    target[::128] = -100
    ours = cpu_loss_block_rows(vocab)
    variants = {
        "F.cross_entropy(logits.float())": lambda x: F.cross_entropy(x.float(), target),
        f"chunked, {ours} rows a block (ours)": lambda x: chunked_cross_entropy(x, target, block_rows=ours),
        "chunked, DeepSpeed's default block": lambda x: chunked_cross_entropy(x, target),
    }
    out = []
    for name, dtype in DTYPES.items():
        logits = torch.randn(rows, vocab, dtype=dtype)
        results = {}
        for variant, fn in variants.items():
            results[variant] = (best_ms(partial(loss_step, fn, logits), repeats), *loss_step(fn, logits))
        reference = results["F.cross_entropy(logits.float())"]
        for variant, (ms, value, grad) in results.items():
            out.append({
                "dtype": name, "variant": variant, "fwd_bwd_ms": ms,
                "loss_diff": abs(float(value) - float(reference[1])),
                "grad_max_diff": float((grad.float() - reference[2].float()).abs().max()),
            })  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rows", type=int, default=1024, help="loss rows: the default recipe's 8 x 128 tokens")
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    result = {"threads": args.threads, "attention": attention(args.repeats),
              "loss": loss(args.rows, args.vocab, args.repeats)}  # fmt: skip
    for row in result["attention"]:
        print(
            f"sdpa {tuple(row['shape'])}: fwd fp32 {row['fp32_fwd_ms']:.2f} bf16 {row['bf16_fwd_ms']:.2f} ms, bwd "
            f"fp32 {row['fp32_bwd_ms']:.2f} bf16 {row['bf16_bwd_ms']:.2f} ms ({row['bf16_over_fp32_bwd']:.2f}x)"
        )
    for row in result["loss"]:
        print(f"loss {row['dtype']} {row['variant']:<40} {row['fwd_bwd_ms']:6.1f} ms  loss diff {row['loss_diff']:.1e}"
              f"  grad diff {row['grad_max_diff']:.1e}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
