"""Everything that can be checked before a rank spawns: recipe, ds_config, their merge, data paths, run folder.

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
    return resolved


def main(argv: list[str] | None = None) -> int:
    from moe.cli import trainer_parser
    parser = trainer_parser()
    parser.add_argument("--world_size", type=int, default=1)
    parser.add_argument("--cuda", action="store_true")
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
