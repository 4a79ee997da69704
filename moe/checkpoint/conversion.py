"""Make a checkpoint loadable at any layout (`python -m moe.reshard`), so a run resumes at another expert-parallel
size, rank count or ZeRO stage, and a native run's fp32 master weights consolidate into one state dict. Each MoE
path has its own converted form:

- moe.impl=autoep: DeepSpeed's own universal checkpoint (ds_to_universal), `<tag>/universal/`, made readable by every
  ZeRO stage (moe/checkpoint/universal.py): an offline single process, no ranks needed.
- moe.impl=deepspeed: DeepSpeed's universal checkpoint skips native experts (DeepSpeed issue 5716), so our
  layout-free state, `<tag>/layout_free/` (moe/checkpoint/layout_free.py). Writing it needs the checkpoint loaded
  into an engine at its own layout: `convert` starts that layout as CPU/gloo ranks (possible on any machine) running
  `python -m moe.reshard --dump`, which builds the engine, loads the tag through DeepSpeed and writes the folder.

The trainer does not convert by itself: a `--resume` whose layout differs from the checkpoint's is refused before
any rank starts, naming this command (moe/checkpoint/resume.py). A native conversion needs the old layout's rank
count, which the new job may not have; either output is kept for every later resume and export.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from moe.checkpoint import layout_free, universal
from moe.checkpoint.metadata import Tag, checkpoint_dir, latest_tag
from moe.config.loader import ConfigError
from moe.parallel import free_port

# the converted form of each MoE path (moe.impl)
FORMATS = {"deepspeed": layout_free, "autoep": universal}


def load_converted(engine, tag: Tag) -> dict:
    """Load the tag's converted state into a fresh engine of any layout; returns the client state."""
    return FORMATS[tag.moe_path].load_converted(engine, tag.dir)


def convert(run_dir: Path, tag_name: str | None = None, timeout: float | None = None) -> Path:
    """Write the converted form of `tag_name` (default: the newest complete tag); returns its folder."""
    tag_name = tag_name or latest_tag(run_dir)
    if tag_name is None:
        raise ConfigError(f"no complete checkpoint in {checkpoint_dir(run_dir)}")
    tag = Tag.of(run_dir, tag_name)
    if not tag.has_metadata:
        raise ConfigError(f"{tag.dir} has no recipe.yaml / ds_config.json to read its layout from")
    if tag.moe_path == "autoep":
        return universal.convert(tag.dir, timeout=timeout)
    if tag.pipeline:
        raise ConfigError(
            f"{tag.dir} is a pipeline-parallel checkpoint: it resumes only at its own layout, and "
            f"`python -m moe.export` reads it directly (fp32); there is nothing to convert"
        )
    world_size = tag.layout["world_size"]
    port = free_port()
    env = dict(os.environ, DS_ACCELERATOR="cpu", CUDA_VISIBLE_DEVICES="")
    env.setdefault("OMP_NUM_THREADS", "1")
    dump = ["moe.reshard", "--dump", str(Path(run_dir).resolve()), "--tag", tag.name]
    if world_size == 1:  # a world of one needs no launcher (moe.parallel.init_distributed)
        cmd = [sys.executable, "-m", *dump]
        env["MASTER_PORT"] = str(port)
    else:
        cmd = [
            sys.executable,
            "-m",
            "deepspeed.launcher.runner",
            "--num_gpus",
            str(world_size),
            "--master_port",
            str(port),
            "--module",
            "--no_local_rank",
            *dump,
        ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not layout_free.is_converted(tag.dir):
        raise RuntimeError(
            f"moe.reshard: converting {tag.dir} on {world_size} ranks failed "
            f"(exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        )
    return layout_free.layout_free_dir(tag.dir)
