"""`python -m moe.export runs/<run_name> out_dir [--tag global_stepN] [--fp32 | --no-fp32]`: a checkpoint as a stock
Hugging Face model folder that `AutoModelForCausalLM.from_pretrained` loads without trust_remote_code. The work is
moe/checkpoint/hf_export.py."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from moe.checkpoint import export
from moe.config import ConfigError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m moe.export", description=__doc__.split(":", 1)[1].split(".")[0])
    p.add_argument("run_dir", type=Path, help="runs/<run_name>")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--tag", default=None, help="checkpoint tag (default: the newest complete one)")
    p.add_argument(
        "--fp32",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="export the fp32 master weights (default: when the run trained in bf16/fp16)",
    )
    args = p.parse_args(argv)
    try:
        out = export(args.run_dir, args.out_dir, args.tag, args.fp32)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {args.run_dir} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
