"""Forward + backward time of ONE dropless MoE layer, four implementations, same shapes and weights.

    python benchmarks/moe_layer.py                                    # CPU defaults, < 60 s on 2 cores
    python benchmarks/moe_layer.py --device cuda --dtype bfloat16 --tokens 16384 --d-model 1024 --d-ff 2048

Implementations (benchmarks/moe_layer_impls.py): DeepSpeed native deepspeed.moe.layer.MoE (drop_tokens=False), the
same with its experts batched (moe.batched_experts),
DeepSpeed AutoEP's grouped experts (the layer AutoEP swaps in for an HF Qwen3-MoE block, autoep_size=1), and
transformers' eager loop over experts. Before timing, the script checks that the four give the same output and
input gradient (fp32: allclose; bf16/fp16: the same within rounding on at least 99% of tokens, since a router
computed in low precision may pick another expert for a token whose top-k scores nearly tie).

Time per token is the median over --iters timed iterations of (forward, backward, synchronize) / tokens, after
--warmup untimed ones; the fastest iteration is reported too (on a shared machine, the least disturbed one). The
implementations take turns every iteration, so that a change in machine load hits all of them alike. The table goes
to stdout and the JSON to benchmarks/results/moe_layer_<device>.json (or --json).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.moe_layer_impls import autoep_expert_path, build_all, random_weights

REPO = Path(__file__).resolve().parent.parent

BASELINE = "deepspeed_native"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def forward_backward(layer: torch.nn.Module, x: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """One training step's worth of work for the layer; returns its output. Gradients are set, not accumulated."""
    layer.zero_grad(set_to_none=True)
    x.grad = None
    out = layer(x)
    out.backward(grad_out)
    return out


def agreement(outputs: dict[str, torch.Tensor], dtype: torch.dtype) -> dict:
    """Compare every implementation's tensor with the baseline's: max abs difference and the share of tokens
    (rows) that agree within the dtype's tolerance."""
    rtol, atol = (1e-4, 1e-5) if dtype == torch.float32 else (5e-2, 5e-2)
    base = outputs[BASELINE].float().flatten(0, -2)  # (S, d)
    result = {}
    for name, t in outputs.items():
        t = t.float().flatten(0, -2)  # (S, d)
        close_rows = torch.isclose(t, base, rtol=rtol, atol=atol).all(dim=-1)  # (S,)
        result[name] = {
            "max_abs_diff": (t - base).abs().max().item(),
            "tokens_agreeing": close_rows.float().mean().item(),
        }
    return result


def check_agreement(layers: dict, x: torch.Tensor, grad_out: torch.Tensor, dtype: torch.dtype) -> dict:
    outs, grads = {}, {}
    for name, layer in layers.items():
        outs[name] = forward_backward(layer, x, grad_out).detach()
        grads[name] = x.grad.detach().clone()
    check = {"output": agreement(outs, dtype), "input_grad": agreement(grads, dtype)}
    need = 1.0 if dtype == torch.float32 else 0.99
    check["matched"] = all(
        v["tokens_agreeing"] >= need for part in ("output", "input_grad") for v in check[part].values()
    )
    return check


def time_layers(
    layers: dict, x: torch.Tensor, grad_out: torch.Tensor, iters: int, warmup: int, device: str
) -> dict[str, list[float]]:
    seconds = {name: [] for name in layers}
    for i in range(warmup + iters):
        for name, layer in layers.items():  # take turns: load changes hit every implementation alike
            synchronize(device)
            start = time.perf_counter()
            forward_backward(layer, x, grad_out)
            synchronize(device)
            if i >= warmup:
                seconds[name].append(time.perf_counter() - start)
    return seconds


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else (platform.processor() or platform.machine())


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--d-ff", type=int, default=512, help="hidden size of each SwiGLU expert")
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="default: float32 on cpu, bfloat16 on cuda")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's, one per core)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="default: benchmarks/results/moe_layer_<device>.json")
    args = p.parse_args(argv)
    if args.top_k > args.experts:
        p.error(f"--top-k {args.top_k} exceeds --experts {args.experts}")
    dtype = DTYPES[args.dtype or ("bfloat16" if args.device == "cuda" else "float32")]
    if args.threads:
        torch.set_num_threads(args.threads)

    weights = random_weights(args.d_model, args.d_ff, args.experts, seed=args.seed)
    layers = build_all(weights, args.top_k, args.device, dtype)
    gen = torch.Generator().manual_seed(args.seed + 1)
    x = torch.randn(1, args.tokens, args.d_model, generator=gen).to(args.device, dtype)  # (1, S, d)
    x.requires_grad_(True)
    grad_out = torch.randn(x.shape, generator=gen).to(args.device, dtype)  # (1, S, d)

    check = check_agreement(layers, x, grad_out, dtype)
    if not check["matched"]:
        raise SystemExit(f"the implementations disagree, not timing them: {json.dumps(check, indent=1)}")

    seconds = time_layers(layers, x, grad_out, args.iters, args.warmup, args.device)
    median = {name: statistics.median(s) for name, s in seconds.items()}
    rows = [
        {
            "implementation": name,
            "tokens": args.tokens,
            "median_s": median[name],
            "best_s": min(seconds[name]),
            "us_per_token": median[name] / args.tokens * 1e6,
            "ratio_to_native": median[name] / median[BASELINE],
            "iter_s": seconds[name],
        }
        for name in layers
    ]
    import deepspeed
    import transformers

    result = {
        "device": args.device,
        "device_name": device_name(args.device),
        "dtype": str(dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "tokens": args.tokens,
        "d_model": args.d_model,
        "d_ff": args.d_ff,
        "experts": args.experts,
        "top_k": args.top_k,
        "iters": args.iters,
        "warmup": args.warmup,
        "autoep_expert_path": autoep_expert_path(layers["autoep_grouped"]),
        "versions": {
            "torch": torch.__version__,
            "deepspeed": deepspeed.__version__,
            "transformers": transformers.__version__,
        },
        "command": " ".join(["python benchmarks/moe_layer.py", *(argv if argv is not None else sys.argv[1:])]),
        "check": check,
        "rows": rows,
    }

    print(
        f"one MoE layer, fwd+bwd, {args.tokens} tokens, d_model={args.d_model} d_ff={args.d_ff} "
        f"experts={args.experts} top-{args.top_k}, {args.device} {result['dtype']} "
        f"({result['threads']} threads), AutoEP experts: {result['autoep_expert_path']}"
    )
    print(f"{'implementation':<26}{'tokens':>8}{'us/token':>10}{'vs native':>11}{'ms/iter':>10}{'best ms':>10}")
    for r in rows:
        print(
            f"{r['implementation']:<26}{r['tokens']:>8}{r['us_per_token']:>10.2f}{r['ratio_to_native']:>10.2f}x"
            f"{r['median_s'] * 1e3:>10.1f}{r['best_s'] * 1e3:>10.1f}"
        )
    out = args.json or REPO / "benchmarks" / "results" / f"moe_layer_{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
