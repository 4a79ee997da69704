"""`python -m moe.plan --recipe R --ds_config J --gpus N --gpu-mem 80GB [overrides]`: will this run fit?

Resolves the recipe and ds_config exactly as the launcher does (for N CUDA ranks, or CPU ranks with --cpu), then
prints params, FLOPs per token and per-rank memory by component, whether it fits, and the micro-batch that does.
Exit code 0 = fits, 1 = does not fit, 2 = bad input.
"""

from __future__ import annotations

import argparse
import sys

from moe.config import ConfigError, load_resolved
from moe.plan.budget import cpu_budget, gpu_budget, make_plan, parse_bytes
from moe.plan.report import format_plan


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m moe.plan", description=__doc__.splitlines()[0])
    p.add_argument("--recipe", required=True)
    p.add_argument("--ds_config", required=True)
    p.add_argument("--gpus", type=int, default=1, help="ranks (GPUs, or CPU ranks with --cpu) in the whole job")
    p.add_argument("--gpu-mem", default=None, help="memory per GPU, e.g. 80GB (default: this machine's GPU)")
    p.add_argument("--cpu", action="store_true", help="plan CPU ranks; the budget is this machine's RAM / ranks")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        resolved = load_resolved(args.recipe, args.ds_config, args.overrides, args.gpus, cuda=not args.cpu)
        if args.cpu:
            budget = parse_bytes(args.gpu_mem) if args.gpu_mem else cpu_budget(args.gpus)
        elif args.gpu_mem:
            budget = parse_bytes(args.gpu_mem)
        else:
            import torch

            if not torch.cuda.is_available():
                raise ConfigError("no GPU here to read its memory from: pass --gpu-mem (e.g. 80GB), or --cpu")
            budget = gpu_budget()
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    plan = make_plan(resolved, budget)
    where = "CPU" if args.cpu else "GPU"
    print(format_plan(plan, f"plan: {args.recipe} + {args.ds_config} on {args.gpus} {where} rank(s)"))
    return 0 if plan.fits else 1


if __name__ == "__main__":
    sys.exit(main())
