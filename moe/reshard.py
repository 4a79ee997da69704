"""`python -m moe.reshard runs/<run_name> [--tag global_stepN]`: make a checkpoint loadable at any layout (another
expert-parallel size, rank count or ZeRO stage), once; a later `--resume` at the new layout then loads it. The work is
moe/checkpoint/conversion.py; a native conversion runs this module with --dump on each rank of the checkpoint's own
layout, which builds that engine (moe/train/engine.py), loads the tag and writes its layout-free state.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from moe.checkpoint import convert
from moe.config import ConfigError


def dump(run_dir: Path, tag_name: str) -> Path:
    """On every rank of the checkpoint's own layout: load it through DeepSpeed, write `<tag>/layout_free/`."""
    from moe.checkpoint import layout_free
    from moe.checkpoint.metadata import Tag
    from moe.train.engine import engine_of_tag

    tag = Tag.of(run_dir, tag_name)
    engine = engine_of_tag(tag)
    load_path, client_state = engine.load_checkpoint(str(tag.dir.parent), tag=tag.name)
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {tag.dir}")
    out = layout_free.write(engine, tag.dir, client_state, tag.layout)
    engine.destroy()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m moe.reshard", description=__doc__.split(":", 1)[1].split(";")[0])
    p.add_argument("run_dir", type=Path, help="runs/<run_name>")
    p.add_argument("--tag", default=None, help="checkpoint tag (default: the newest complete one)")
    p.add_argument("--dump", action="store_true", help=argparse.SUPPRESS)  # a rank spawned by convert()
    args = p.parse_args(argv)
    if args.dump:
        from moe.parallel import init_distributed, shutdown_distributed

        init_distributed()
        try:
            dump(args.run_dir, args.tag)
        finally:
            shutdown_distributed()
        return 0
    try:
        out = convert(args.run_dir, args.tag)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
