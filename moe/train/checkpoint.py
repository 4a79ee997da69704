"""DeepSpeed checkpoints plus what DeepSpeed does not keep: every rank's RNG state and the run's position."""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import torch
import yaml

from moe.config.loader import ConfigError

SHAPE_SECTIONS = ("model", "moe")
SHAPE_EXEMPT = {("moe", "ep_size"), ("moe", "aux_loss_coef"), ("moe", "capacity_factor"),
                ("moe", "eval_capacity_factor"), ("moe", "min_capacity"), ("moe", "drop_tokens"), ("moe", "use_rts"),
                ("moe", "noisy_gate_policy"), ("moe", "top2_2nd_expert_sampling")}


COMPLETE = "COMPLETE"  # written last, after every rank's files: a tag without it is a save that died
FAULT_ENV = "MOE_FAULT_SIGKILL_DURING_SAVE"  # fault injection for tests: step at which rank 0 dies mid-save


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def tag_step(tag: str) -> int:
    return int(tag.removeprefix("global_step"))


def complete_tags(run_dir: Path) -> list[str]:
    """Tags whose save finished on every rank, oldest first."""
    ckpt = checkpoint_dir(run_dir)
    tags = [d.name for d in ckpt.glob("global_step*") if (d / COMPLETE).is_file()] if ckpt.is_dir() else []
    return sorted(tags, key=tag_step)


def latest_tag(run_dir: Path) -> str | None:
    """The checkpoint to resume from: `latest` if that save completed, else the newest complete one."""
    latest = checkpoint_dir(run_dir) / "latest"
    if latest.is_file():
        tag = latest.read_text().strip()
        if (checkpoint_dir(run_dir) / tag / COMPLETE).is_file():
            return tag
    tags = complete_tags(run_dir)
    return tags[-1] if tags else None


def check_resume(run_dir: Path, resume: bool, recipe_dict: dict) -> None:
    """Before anything is written: refuse to overwrite a run, to resume nothing, or to resume another shape."""
    tag = latest_tag(run_dir)
    if tag and not resume:
        raise ConfigError(f"{run_dir} already holds a run (checkpoint {tag}); pass --resume to continue it "
                          f"or set logging.run_name to start a new one")
    if resume and not tag:
        raise ConfigError(f"--resume: no checkpoint in {checkpoint_dir(run_dir)}")
    if resume:
        saved_path = checkpoint_dir(run_dir) / tag / "recipe.yaml"
        saved = yaml.safe_load(saved_path.read_text()) if saved_path.is_file() else {}
        for section in SHAPE_SECTIONS:
            for key, value in recipe_dict[section].items():
                old = saved.get(section, {}).get(key, value)
                if (section, key) not in SHAPE_EXEMPT and old != value:
                    raise ConfigError(f"--resume: checkpoint {tag} was trained with {section}.{key}={old}, "
                                      f"this recipe has {value}; the model shapes do not match")


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None:
        torch.cuda.set_rng_state_all(state["cuda"])


def save(engine, run_dir: Path, step: int, client_state: dict, metadata: dict[str, str], keep: int = 0) -> str:
    """Save on every rank; the tag becomes `latest` only once all ranks' files are on disk.

    metadata: file name -> text written into the tag by rank 0 (resolved recipe, ds_config, code version).
    keep: how many complete checkpoints to keep (0 = all); older ones are deleted after the new one commits.
    """
    import deepspeed.comm as dist
    tag = f"global_step{step}"
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
    # DeepSpeed writes model, optimizer (per-rank ZeRO shards) and per-expert files. Its own `latest` is
    # written by rank 0 without waiting for the other ranks, so we commit it ourselves below.
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
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                                            text=True, timeout=10).stdout.strip() or None
        info["git_dirty"] = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                                cwd=repo, capture_output=True, text=True, timeout=10).stdout)
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    for package in ("torch", "deepspeed", "transformers"):
        info[package] = version(package)
    return info


def load(engine, run_dir: Path) -> tuple[str, dict]:
    ckpt, tag = checkpoint_dir(run_dir), latest_tag(run_dir)
    load_path, client_state = engine.load_checkpoint(str(ckpt), tag=tag)
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {tag} from {ckpt}")
    rng_file = ckpt / tag / f"rng_rank{engine.global_rank}.pt"
    if rng_file.is_file():  # absent when resuming at another world size
        set_rng_state(torch.load(rng_file, weights_only=False))
    return tag, client_state
