"""python -m moe.simulate --recipe R.yaml [--ds_config C.json] --cluster clusters/X.yaml --gpus 8..4096 [key=value]

Prints, per GPU count, the predicted step time and its parts, tokens/s, and the scaling efficiency: tokens/s per
GPU against the smallest GPU count of the table (weak scaling: the micro-batch per GPU stays fixed, the global
batch grows with the data-parallel ranks). The expert-parallel size is the recipe's, lowered where fewer GPUs
cannot hold it. Overrides are the trainer's (moe.num_experts=64, ds.train_micro_batch_size_per_gpu=4).
"""

from __future__ import annotations

import argparse
import sys

from moe.config import ConfigError
from moe.simulate.cluster import load_cluster
from moe.simulate.gpu_counts import parse_gpu_counts
from moe.simulate.predict import simulate
from moe.simulate.step_time import StepEstimate


def format_table(estimates: list[StepEstimate]) -> str:
    base = estimates[0].tokens_per_s / estimates[0].gpus
    lines = [
        "| GPUs | nodes | EP | global batch | step s | compute | bubble | all-to-all | grad sync | tokens/s | "
        "tokens/s/GPU | scaling eff. |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in estimates:

        def share(part: float, e=e) -> str:
            return f"{part / e.step_s:.1%}"

        lines.append(
            f"| {e.gpus} | {e.nodes} | {e.ep_size} | {e.global_batch} | {e.step_s:.3f} | {share(e.compute_s)} | "
            f"{share(e.bubble_s + e.pipeline_p2p_s)} | {share(e.all_to_all_s)} | {share(e.grad_sync_s)} | "
            f"{e.tokens_per_s:,.0f} | {e.tokens_per_s / e.gpus:,.0f} | "
            f"{e.tokens_per_s / e.gpus / base:.1%} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m moe.simulate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--recipe", required=True)
    p.add_argument("--ds_config", default="ds_configs/zero1_bf16.json")
    p.add_argument("--cluster", required=True, help="clusters/*.yaml")
    p.add_argument("--gpus", default="8..4096", help="8..4096 (powers of two), 8,16,64, or 128")
    p.add_argument(
        "--mfu",
        type=float,
        default=None,
        help="achieved MFU (default: the cluster's fitted one for the recipe's family)",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)
    try:
        cluster = load_cluster(args.cluster)
        estimates = simulate(
            args.recipe, args.ds_config, args.overrides, cluster, parse_gpu_counts(args.gpus), args.mfu
        )
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    first = estimates[0]
    print(
        f"{args.recipe} + {args.ds_config} on {cluster.name} ({cluster.source}), MFU {first.mfu:.4f} "
        f"({'--mfu' if args.mfu else first.family + ' family'}), sequence {first.seq_len}"
    )
    print(format_table(estimates))
    return 0


if __name__ == "__main__":
    sys.exit(main())
