"""Everything that can be checked before a rank spawns: the recipe and ds_config and their merge (moe/config/),
the machine (files, HF folders, ops: environment.py), the run folder (overwrite and resume: moe/checkpoint/resume.py)
and whether the run fits in memory (moe/plan: the estimate against the GPU's memory, `--gpu-mem`, or on CPU each
rank's share of the machine's RAM).

`python -m moe.launch.preflight [trainer args] --world_size N` runs it alone; the launcher runs it before spawning,
and every rank again before it builds anything. It imports no DeepSpeed engine and builds no model.
"""

from __future__ import annotations

import argparse
import sys

from moe.checkpoint.resume import check_resume
from moe.config import ConfigError, Resolved, load_resolved
from moe.config.args import trainer_parser
from moe.launch.environment import check_environment
from moe.plan import cpu_budget, gpu_budget, make_plan, parse_bytes, refusal


def preflight(args: argparse.Namespace, world_size: int, cuda: bool) -> Resolved:
    """The resolved run of the trainer command line `args` on `world_size` ranks, or one ConfigError."""
    resolved = load_resolved(args.recipe, args.ds_config, args.overrides, world_size, cuda=cuda)
    check_environment(resolved, cuda)
    check_resume(resolved, args.resume)
    check_memory(resolved, cuda, getattr(args, "gpu_mem", None))
    return resolved


def check_memory(resolved: Resolved, cuda: bool, gpu_mem: str | None = None) -> None:
    """Refuse a run whose estimated per-rank peak does not fit the device, naming the micro-batch that would."""
    if gpu_mem:
        try:
            budget, where = parse_bytes(gpu_mem), f"--gpu-mem {gpu_mem}"
        except ValueError as e:
            raise ConfigError(str(e)) from None
    elif cuda:
        budget, where = gpu_budget(), "this GPU's memory"
    else:  # CPU ranks of one machine share its RAM
        budget, where = cpu_budget(resolved.world_size), f"RAM / {resolved.world_size} ranks"
    reason = refusal(make_plan(resolved, budget, cpu=not cuda), where)
    if reason:
        raise ConfigError(f"out of memory: {reason}; `python -m moe.plan` shows the breakdown")


def main(argv: list[str] | None = None) -> int:
    parser = trainer_parser()
    parser.add_argument("--world_size", type=int, default=1)
    parser.add_argument("--cuda", action="store_true")
    parser.add_argument("--gpu-mem", dest="gpu_mem", default=None, help="memory per GPU for the fit check, e.g. 80GB")
    args = parser.parse_args(argv)
    try:
        resolved = preflight(args, args.world_size, args.cuda)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"ok: {args.recipe} + {args.ds_config} on {args.world_size} ranks -> {resolved.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
