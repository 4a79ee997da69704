"""The command line of a run, shared by the launcher, preflight and every rank: recipe, ds_config, --resume and
dotted overrides; and what the launcher's automatic restarts tell every rank through the environment."""

from __future__ import annotations

import argparse

DEFAULT_RECIPE = "recipes/default.yaml"
DEFAULT_DS_CONFIG = "ds_configs/zero1_bf16.json"
RESTART_ENV = "MOE_RESTART"  # the launcher's attempt number, 0 for the first (moe/launch/restarts.py)
RESTART_REASON_ENV = "MOE_RESTART_REASON"  # and why the attempt before it ended


def restart_attempt() -> int:
    """This process's attempt of its job: 0 unless the launcher restarted it."""
    import os

    return int(os.environ.get(RESTART_ENV) or 0)


class IntermixedParser(argparse.ArgumentParser):
    """Flags anywhere among the key=value overrides (`x=1 --resume y=2`): argparse's plain parse_args stops
    collecting positionals at the first flag and refuses the rest."""

    def parse_args(self, args=None, namespace=None):
        return self.parse_intermixed_args(args, namespace)


def trainer_parser() -> argparse.ArgumentParser:
    p = IntermixedParser(prog="pretrain_moe", description="Pretrain a MoE GPT with DeepSpeed.")
    p.add_argument("--recipe", default=DEFAULT_RECIPE, help="recipe YAML: what to train")
    p.add_argument("--ds_config", default=DEFAULT_DS_CONFIG, help="DeepSpeed JSON: how to run it")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the DeepSpeed launcher
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides: model.d_model=512, moe.num_experts=16, ds.gradient_clipping=0.5",
    )
    return p


def parse_trainer_args(argv: list[str]) -> argparse.Namespace:
    args = trainer_parser().parse_args(argv)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        trainer_parser().error(f"unrecognized argument {bad[0]!r}; overrides look like section.key=value")
    return args
