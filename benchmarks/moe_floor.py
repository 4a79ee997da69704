"""The native MoE layer against its floor: the same layer's expert matmuls alone, at a recipe's shapes.

    python benchmarks/moe_floor.py                                         # the default recipe, 1 thread
    python benchmarks/moe_floor.py model.d_model=512 --json benchmarks/results/moe_floor_d512.json

The layer is the trainer's own MoEMLP (DeepSpeed's MoE with our RouterGate and SwiGLU experts), built from the
recipe (moe.ep_size=1) in the ds_config's precision, on one micro-batch of random activations (B, T, d). Its
forward + backward is timed against the forward + backward of its expert container alone on the
(1, E, C, d) capacity buffers the layer really hands it (C read from a hook on the experts, padding included):
those matmuls are the work a layer cannot avoid. overhead = 1 - floor / layer is the share of the layer spent in
routing, dispatch and combine (router telemetry included; the same layer with its telemetry off is timed too). They
take turns every iteration; medians over --iters after --warmup. A
torch.profiler pass then lists what the layer spends beyond its experts, op by op (self CPU time).

The threads are a rank's (moe/launch/threads.py); `taskset -c 0` gives one core.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.overhead import resolved_for


def build_layer(recipe: str, ds_config: str, overrides: list[str]):
    from moe.model import config_from_recipe
    from moe.model.moe_layer import MoEMLP
    from moe.train.throughput import MATMUL_DTYPES

    resolved = resolved_for(recipe, ds_config, overrides)
    r = resolved.recipe
    torch.manual_seed(r.train.seed)
    config = config_from_recipe(r, vocab_size=r.data.vocab_size)
    dtype = MATMUL_DTYPES[resolved.precision]
    layer = MoEMLP(config).to(dtype).train()
    x = torch.randn(r.train.micro_batch_size, r.data.seq_len, config.d_model, dtype=dtype)  # (B, T, d)
    return layer, x, resolved


def capacity_buffer_shape(layer, x: torch.Tensor) -> torch.Size:
    """The (ep, E_local, C, d) input the layer's expert container gets for `x`."""
    shapes = []
    handle = layer.moe.deepspeed_moe.experts.register_forward_pre_hook(lambda m, a: shapes.append(a[0].shape))
    layer(x)
    handle.remove()
    return shapes[0]


def fwd_bwd(module, inputs: torch.Tensor, grad: torch.Tensor, take_first: bool) -> float:
    module.zero_grad(set_to_none=True)
    x = inputs.detach().requires_grad_()
    start = time.perf_counter()
    out = module(x)
    (out[0] if take_first else out).backward(grad)
    return time.perf_counter() - start


def op_times(module, inputs, grad, iters: int, take_first: bool) -> collections.Counter:
    """{op: self CPU microseconds per iteration} of fwd_bwd(module, ...) under torch.profiler."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(iters):
            fwd_bwd(module, inputs, grad, take_first)
    out = collections.Counter()
    for e in prof.events():
        out[e.name] += e.self_cpu_time_total / iters
    return out


def non_expert_ops(layer, x, grad, buffers, buffer_grad, iters: int, top: int) -> list[tuple[str, float]]:
    """(op, self ms per iteration) the layer spends beyond its experts' own ops: the layer's profile minus the
    floor's, op by op (autograd runs backward outside any forward region, so regions cannot separate them)."""
    layer_ops = op_times(layer, x, grad, iters, take_first=True)
    floor_ops = op_times(layer.moe.deepspeed_moe.experts, buffers, buffer_grad, iters, take_first=False)
    extra = {name: (us - floor_ops.get(name, 0.0)) / 1e3 for name, us in layer_ops.items()}
    return sorted(((n, ms) for n, ms in extra.items() if ms > 0), key=lambda item: -item[1])[:top]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="recipes/default.yaml")
    p.add_argument("--ds_config", default=None, help="default: the launcher's default ds_config")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    from moe.config.args import DEFAULT_DS_CONFIG
    from moe.launch.threads import pin_rank_threads

    threads = pin_rank_threads()
    ds_config = args.ds_config or DEFAULT_DS_CONFIG
    layer, x, resolved = build_layer(args.recipe, ds_config, args.overrides)
    grad = torch.randn_like(x)  # (B, T, d)
    shape = capacity_buffer_shape(layer, x)
    experts = layer.moe.deepspeed_moe.experts
    buffers = torch.randn(shape, dtype=x.dtype)  # (1, E, C, d)
    buffer_grad = torch.randn(shape, dtype=x.dtype)
    times = {"layer": [], "no_telemetry": [], "floor": []}
    for i in range(args.warmup + args.iters):
        t_layer = fwd_bwd(layer, x, grad, take_first=True)
        layer.router_stats.enabled = False  # the same layer without its router telemetry (moe/model/router_stats.py)
        t_bare = fwd_bwd(layer, x, grad, take_first=True)
        layer.router_stats.enabled = True
        t_floor = fwd_bwd(experts, buffers, buffer_grad, take_first=False)
        if i >= args.warmup:
            for key, t in (("layer", t_layer), ("no_telemetry", t_bare), ("floor", t_floor)):
                times[key].append(t)
    layer_ms, bare_ms, floor_ms = (statistics.median(times[k]) * 1e3 for k in ("layer", "no_telemetry", "floor"))
    ops = non_expert_ops(layer, x, grad, buffers, buffer_grad, max(3, args.iters // 4), args.top)
    result = {
        "recipe": args.recipe,
        "ds_config": ds_config,
        "overrides": args.overrides,
        "precision": resolved.precision,
        "threads": threads,
        "tokens": x.shape[0] * x.shape[1],
        "d_model": x.shape[-1],
        "experts_input_shape": list(shape),
        "layer_ms": layer_ms,
        "floor_ms": floor_ms,
        "ratio": layer_ms / floor_ms,
        "overhead": 1 - floor_ms / layer_ms,
        "layer_without_telemetry_ms": bare_ms,
        "overhead_without_telemetry": 1 - floor_ms / bare_ms,
        "non_expert_ops_ms": ops,
    }
    print(
        f"{args.recipe} {' '.join(args.overrides)} ({resolved.precision}, {threads} thread(s)): MoE layer fwd+bwd "
        f"{layer_ms:.2f} ms, its expert matmuls alone {floor_ms:.2f} ms on {tuple(shape)}: ratio "
        f"{result['ratio']:.3f}, routing/dispatch/combine {result['overhead']:.1%} of the layer "
        f"({result['overhead_without_telemetry']:.1%} without router telemetry: {bare_ms:.2f} ms)"
    )
    for name, ms in ops:
        print(f"  {name[:60]:<60} {ms:7.3f} ms")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
