"""Saving and loading a run's DeepSpeed engine, plus what DeepSpeed does not keep: every rank's RNG state, the
run's position, and an atomic commit.

DeepSpeed writes the model states, the per-rank ZeRO optimizer shards and one file per expert. Its own `latest`
is written by rank 0 without waiting for the other ranks, so `save` commits the tag itself once every rank's files
are on disk (COMPLETE, then `latest` replaced atomically). `load` restores the latest complete tag at its own layout
through DeepSpeed, or at another layout through the tag's converted state (moe/checkpoint/conversion.py).
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import torch

from moe.checkpoint.conversion import load_converted
from moe.checkpoint.metadata import COMPLETE, Tag, checkpoint_dir, complete_tags, latest_tag, tag_name

FAULT_ENV = "MOE_FAULT_SIGKILL_DURING_SAVE"  # fault injection for tests: step at which rank 0 dies mid-save


def rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None:
        torch.cuda.set_rng_state_all(state["cuda"])


def reseed(seed: int, step: int, rank: int) -> None:
    """Seed python, numpy and torch from (seed, step, rank): a resumed rank whose saved stream does not exist."""
    value = int.from_bytes(hashlib.sha256(f"{seed}:{step}:{rank}".encode()).digest()[:8], "little") % (2**63)
    random.seed(value)
    np.random.seed(value % (2**32))
    torch.manual_seed(value)


def save(engine, run_dir: Path, step: int, client_state: dict, metadata: dict[str, str], keep: int = 0) -> str:
    """Save on every rank; the tag becomes `latest` only once all ranks' files are on disk.

    metadata: file name -> text written into the tag by rank 0 (moe.checkpoint.metadata.tag_metadata).
    keep: how many complete checkpoints to keep (0 = all); older ones are deleted after the new one commits.
    """
    import deepspeed.comm as dist

    tag = tag_name(step)
    ckpt = checkpoint_dir(run_dir)
    tag_dir = ckpt / tag
    rank = engine.global_rank
    if rank == 0 and tag_dir.exists():  # left by a save that died at this step: start it clean
        shutil.rmtree(tag_dir)
    dist.barrier()
    tag_dir.mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(), tag_dir / f"rng_rank{rank}.pt")
    if rank == 0:
        for name, text in metadata.items():
            (tag_dir / name).write_text(text)
    engine.save_checkpoint(str(ckpt), tag=tag, client_state=client_state, save_latest=False)
    dist.barrier()
    if rank == 0:
        if os.environ.get(FAULT_ENV) == str(step):
            os.kill(os.getpid(), signal.SIGKILL)
        (tag_dir / COMPLETE).write_text("")
        _write_atomic(ckpt / "latest", tag)
        if keep:
            for old in complete_tags(run_dir)[:-keep]:
                shutil.rmtree(ckpt / old)
    dist.barrier()
    return tag


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def code_version() -> dict:
    """What produced a checkpoint: this package, its git commit (if a checkout), and the pinned stack."""
    from importlib.metadata import version

    import moe

    repo = Path(moe.__file__).resolve().parent.parent
    info = {"moe": moe.__version__}
    try:
        info["git_commit"] = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or None
        )
        info["git_dirty"] = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=repo,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout
        )
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    for package in ("torch", "deepspeed", "transformers"):
        info[package] = version(package)
    return info


def load(engine, run_dir: Path, layout: dict | None = None, seed: int = 0) -> tuple[str, dict]:
    """Restore the latest checkpoint into `engine`; returns (tag, client state).

    At the checkpoint's own layout (or layout None): DeepSpeed's load_checkpoint and every rank's RNG state, so the
    run continues bit for bit. At another layout: its converted state (`python -m moe.reshard`): DeepSpeed's
    universal checkpoint for AutoEP, our layout-free state for the native path. RNG streams belong to ranks, so they
    carry over only when the rank count is unchanged (only moe.ep_size / ZeRO stage / precision differ); otherwise
    every rank re-seeds from (seed, step, rank), deterministically but not as the uninterrupted run would have
    drawn."""
    tag = Tag.of(run_dir, latest_tag(run_dir))
    rank = engine.global_rank
    rng_file = tag.dir / f"rng_rank{rank}.pt"
    saved = tag.layout
    if layout is None or saved is None or saved == layout:
        load_path, client_state = engine.load_checkpoint(str(tag.dir.parent), tag=tag.name)
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {tag.dir}")
        if rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=False))
        return tag.name, client_state
    client_state = load_converted(engine, tag)
    if saved["world_size"] == layout["world_size"] and rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    else:
        reseed(seed, client_state["step"], rank)
    return tag.name, client_state
