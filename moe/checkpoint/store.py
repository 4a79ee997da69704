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
import resource
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import torch

from moe.checkpoint.conversion import load_converted
from moe.checkpoint.manifest import CORRUPT, first_bad_file, hash_share, write_manifest
from moe.checkpoint.metadata import COMPLETE, Tag, checkpoint_dir, complete_tags, latest_tag, tag_name
from moe.config.args import restart_attempt

FAULT_ENV = "MOE_FAULT_SIGKILL_DURING_SAVE"  # fault injection for tests: step at which rank 0 dies mid-save
FILE_SIZE_FAULT_ENV = "MOE_FAULT_FILE_SIZE_LIMIT_AT_SAVE"  # "<step>:<bytes>": file writes fail from that save on


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


class CheckpointError(RuntimeError):
    """A save that could not write its files (a full disk, a quota, a size limit; `latest` untouched), or a resume
    with no checkpoint that verifies: one line. `every_rank`: each rank has its own message (a failed write);
    otherwise all ranks share one, which rank 0 prints."""

    def __init__(self, message: str, every_rank: bool = False):
        super().__init__(message)
        self.every_rank = every_rank


def save(engine, run_dir: Path, step: int, client_state: dict, metadata: dict[str, str], keep: int = 0) -> str:
    """Save on every rank; the tag becomes `latest` only once all ranks' files are on disk and listed with their
    checksums in its manifest (moe/checkpoint/manifest.py).

    metadata: file name -> text written into the tag by rank 0 (moe.checkpoint.metadata.tag_metadata).
    keep: how many complete checkpoints to keep (0 = all); older ones are deleted after the new one commits.
    """
    import deepspeed.comm as dist

    tag = tag_name(step)
    ckpt = checkpoint_dir(run_dir)
    tag_dir = ckpt / tag
    rank, world_size = engine.global_rank, dist.get_world_size()
    if rank == 0 and tag_dir.exists():  # left by a save that died at this step: start it clean
        shutil.rmtree(tag_dir)
    dist.barrier()
    try:
        _inject_file_size_limit(step)
        tag_dir.mkdir(parents=True, exist_ok=True)
        torch.save(rng_state(), tag_dir / f"rng_rank{rank}.pt")
        if rank == 0:
            for name, text in metadata.items():
                (tag_dir / name).write_text(text)
        engine.save_checkpoint(str(ckpt), tag=tag, client_state=client_state, save_latest=False)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as a RuntimeError, without errno
        if isinstance(e, OSError):
            reason = f"{e.strerror or e}" + (f" ({e.filename})" if e.filename else "")
        else:
            reason = f"a file write failed ({' '.join(str(e).split())[:100]})"
        free_mb = shutil.disk_usage(ckpt).free / 2**20
        raise CheckpointError(
            f"saving checkpoint {tag} failed on rank {rank}: {reason}, {free_mb:,.0f} MB free in {ckpt}; "
            f"`latest` stays at {latest_tag(run_dir) or 'no checkpoint'}",
            every_rank=True,
        ) from None
    dist.barrier()
    shares = [None] * world_size
    dist.all_gather_object(shares, hash_share(tag_dir, rank, world_size))
    if rank == 0:
        if os.environ.get(FAULT_ENV) == str(step) and not restart_attempt():  # transient: the first attempt only
            os.kill(os.getpid(), signal.SIGKILL)
        write_manifest(tag_dir, shares)
        (tag_dir / COMPLETE).write_text("")
        _write_atomic(ckpt / "latest", tag)
        if keep:
            for old in complete_tags(run_dir)[:-keep]:
                shutil.rmtree(ckpt / old)
    dist.barrier()
    return tag


def _inject_file_size_limit(step: int) -> None:
    """Fault injection for tests (FILE_SIZE_FAULT_ENV="<step>:<bytes>"): from this step's save on, the kernel
    refuses to grow any file of this process past <bytes> (RLIMIT_FSIZE; Python ignores SIGXFSZ, so the write
    fails with EFBIG), as a full disk refuses a write with ENOSPC."""
    at_step, _, limit = os.environ.get(FILE_SIZE_FAULT_ENV, "").partition(":")
    if at_step == str(step):
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


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


def verified_tag(run_dir: Path, rank: int) -> str:
    """The checkpoint to resume from: `latest` (or the newest complete tag) if every file matches its manifest,
    else the newest older one that does. Every rank checks its share of the files, and all see all the verdicts,
    so all choose the same tag; rank 0 says which file failed, marks the tag CORRUPT (it is no longer complete,
    so it is neither resumed nor counted when old checkpoints are pruned) and points `latest` at the choice."""
    import deepspeed.comm as dist

    world_size = dist.get_world_size()
    first = latest_tag(run_dir)
    candidates = [first] + [t for t in reversed(complete_tags(run_dir)) if t != first]
    for name in candidates:
        tag_dir = checkpoint_dir(run_dir) / name
        verdicts = [None] * world_size
        dist.all_gather_object(verdicts, first_bad_file(tag_dir, rank, world_size))
        bad = next((v for v in verdicts if v), None)
        if bad is None:
            if rank == 0 and name != first:
                _write_atomic(checkpoint_dir(run_dir) / "latest", name)
            return name
        if rank == 0:
            print(f"warning: checkpoint {name} fails verification: {bad}; falling back to an older one", flush=True)
            (tag_dir / CORRUPT).write_text(bad + "\n")
            (tag_dir / COMPLETE).unlink(missing_ok=True)
        dist.barrier()
    raise CheckpointError(f"--resume: no checkpoint in {checkpoint_dir(run_dir)} verifies against its manifest")


def load(engine, run_dir: Path, layout: dict | None = None, seed: int = 0) -> tuple[str, dict]:
    """Restore the latest checkpoint into `engine`; returns (tag, client state).

    At the checkpoint's own layout (or layout None): DeepSpeed's load_checkpoint and every rank's RNG state, so the
    run continues bit for bit. At another layout: its converted state (`python -m moe.reshard`): DeepSpeed's
    universal checkpoint for AutoEP, our layout-free state for the native path. RNG streams belong to ranks, so they
    carry over only when the rank count is unchanged (only moe.ep_size / ZeRO stage / precision differ); otherwise
    every rank re-seeds from (seed, step, rank), deterministically but not as the uninterrupted run would have
    drawn."""
    tag = Tag.of(run_dir, verified_tag(run_dir, engine.global_rank))
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
