"""Everything that can be checked before a rank spawns: recipe, ds_config, their merge, data paths, run folder, and
whether the run fits in memory (moe/plan: the estimate against the GPU's memory, `--gpu-mem`, or on CPU each
rank's share of the machine's RAM).

`python -m moe.preflight [trainer args] --world_size N` runs it alone; the launcher runs it before spawning.
It imports no DeepSpeed and builds no model, so it answers in a few seconds.
"""
from __future__ import annotations

import argparse
import sys

from moe.config import ConfigError, Resolved, load_ds_config, load_recipe, resolve, split_overrides, to_dict
from moe.train.checkpoint import check_resume, run_layout  # noqa: E402


def preflight(args: argparse.Namespace, world_size: int, cuda: bool) -> Resolved:
    recipe_overrides, ds_overrides = split_overrides(args.overrides)
    recipe = load_recipe(args.recipe, recipe_overrides)
    ds_config = load_ds_config(args.ds_config, ds_overrides)
    resolved = resolve(recipe, ds_config, world_size, args.ds_config, cuda=cuda)
    recipe_dict = to_dict(resolved.recipe)
    check_resume(resolved.run_dir, args.resume, recipe_dict, run_layout(recipe_dict, resolved.ds_config, world_size))
    check_memory(resolved, cuda, getattr(args, "gpu_mem", None))
    return resolved


def check_memory(resolved: Resolved, cuda: bool, gpu_mem: str | None = None) -> None:
    """Refuse a run whose estimated per-rank peak does not fit the device, naming the micro-batch that would."""
    from moe.plan import cpu_budget, gpu_budget, make_plan, parse_bytes, refusal
    if gpu_mem:
        try:
            budget, where = parse_bytes(gpu_mem), f"--gpu-mem {gpu_mem}"
        except ValueError as e:
            raise ConfigError(str(e)) from None
    elif cuda:
        budget, where = gpu_budget(), "this GPU's memory"
    else:  # CPU ranks of one machine share its RAM
        budget, where = cpu_budget(resolved.world_size), f"RAM / {resolved.world_size} ranks"
    reason = refusal(make_plan(resolved, budget), where)
    if reason:
        raise ConfigError(f"out of memory: {reason}; `python -m moe.plan` shows the breakdown")


def main(argv: list[str] | None = None) -> int:
    from moe.cli import trainer_parser
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
