"""DeepSpeed checkpoints plus what DeepSpeed does not keep: every rank's RNG state and the run's position; resuming
at another layout through the checkpoint's converted state (moe/reshard.py): our layout-free state for the native
path (moe/train/layout_free.py), DeepSpeed's universal checkpoint for AutoEP (moe/train/universal.py)."""
from __future__ import annotations

import hashlib
import json
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
from moe.config.pipeline import check_pipeline_resume, pipeline_stages

SHAPE_SECTIONS = ("model", "moe")
SHAPE_EXEMPT = {("moe", "ep_size"), ("moe", "aux_loss_coef"), ("moe", "capacity_factor"),
                ("moe", "eval_capacity_factor"), ("moe", "min_capacity"), ("moe", "drop_tokens"), ("moe", "use_rts"),
                ("moe", "noisy_gate_policy"), ("moe", "top2_2nd_expert_sampling"),
                ("moe", "z_loss_coef"), ("moe", "seq_aux_loss_coef")}
SHAPE_EXEMPT |= {("model", "init_from"), ("model", "upcycle")}  # where the first weights came from, not a shape


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


def check_resume(run_dir: Path, resume: bool, recipe_dict: dict, layout: dict | None = None) -> None:
    """Before anything is written: refuse to overwrite a run, to resume nothing, or to resume another shape.

    layout: this run's `run_layout`. Resuming at another one (rank count, moe.ep_size, ZeRO stage, precision) needs
    the checkpoint's layout-free state; without it, the refusal names the `python -m moe.reshard` command."""
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
        _check_layout(run_dir, tag, layout)


def run_layout(recipe_dict: dict, ds_config: dict, world_size: int) -> dict:
    """What DeepSpeed's load_checkpoint needs to be unchanged since the save (rank count, EP size, ZeRO stage,
    precision), on both MoE paths (AutoEP's EP size is moe.ep_size too: resolve writes it as autoep_size)."""
    layout = {"world_size": world_size,
              "ep_size": recipe_dict["moe"]["ep_size"] if recipe_dict["moe"]["enabled"] else 1,
              "zero_stage": (ds_config.get("zero_optimization") or {}).get("stage", 0),
              "precision": recipe_dict["train"]["precision"]}
    if pipeline_stages(ds_config) > 1:  # a PipelineModule checkpoint: per-layer files (moe/model/pipeline.py)
        layout["pipeline_stages"] = pipeline_stages(ds_config)
    return layout


def saved_layout(tag_dir: Path) -> dict | None:
    """The layout that wrote `tag_dir`, from its recipe.yaml and ds_config.json (world size = global batch /
    (micro-batch x accumulation)); None when it has neither."""
    recipe_path, ds_path = tag_dir / "recipe.yaml", tag_dir / "ds_config.json"
    if not recipe_path.is_file() or not ds_path.is_file():
        return None
    ds = json.loads(ds_path.read_text())
    world_size = ds["train_batch_size"] // (ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"])
    world_size *= pipeline_stages(ds)  # the batch counts data-parallel ranks; a pipeline's stages share theirs
    return run_layout(yaml.safe_load(recipe_path.read_text()), ds, world_size)


def describe_layout(layout: dict) -> str:
    ranks = layout["world_size"]
    return (f"{ranks} rank{'s' * (ranks != 1)}, moe.ep_size={layout['ep_size']}, ZeRO-{layout['zero_stage']}, "
            f"{layout['precision']}")


def is_autoep(tag_dir: Path) -> bool:
    """Whether the checkpoint was written by a moe.impl=autoep run (from its saved recipe)."""
    recipe_path = tag_dir / "recipe.yaml"
    return recipe_path.is_file() and yaml.safe_load(recipe_path.read_text())["moe"].get("impl") == "autoep"


def is_converted(tag_dir: Path) -> bool:
    """Whether `python -m moe.reshard` has made the checkpoint loadable at any layout (for its MoE path)."""
    if is_autoep(tag_dir):
        from moe.train import universal
        return universal.is_converted(tag_dir)
    from moe.reshard import is_converted as layout_free_written
    return layout_free_written(tag_dir)


def _check_layout(run_dir: Path, tag: str, layout: dict | None) -> None:
    from moe.reshard import reshard_command
    tag_dir = checkpoint_dir(run_dir) / tag
    saved = saved_layout(tag_dir)
    if layout is None or saved is None or saved == layout:
        return
    check_pipeline_resume(tag, saved, layout)
    if is_converted(tag_dir):
        return
    raise ConfigError(f"--resume: checkpoint {tag} was saved with {describe_layout(saved)}, this run has "
                      f"{describe_layout(layout)}; DeepSpeed loads expert and ZeRO shards only at their own layout: "
                      f"convert it once with `{reshard_command(run_dir, tag)}`, then resume")


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


def load(engine, run_dir: Path, layout: dict | None = None, seed: int = 0) -> tuple[str, dict]:
    """Restore the latest checkpoint into `engine`; returns (tag, client state).

    At the checkpoint's own layout (or layout None): DeepSpeed's load_checkpoint and every rank's RNG state, so the
    run continues bit for bit. At another layout: its converted state (moe/reshard.py): DeepSpeed's universal
    checkpoint for AutoEP, our layout-free state for the native path. RNG streams belong to
    ranks, so they carry over only when the rank count is unchanged (only moe.ep_size / ZeRO stage / precision
    differ); otherwise every rank re-seeds from (seed, step, rank), deterministically but not as the
    uninterrupted run would have drawn."""
    ckpt, tag = checkpoint_dir(run_dir), latest_tag(run_dir)
    tag_dir, rank = ckpt / tag, engine.global_rank
    saved = saved_layout(tag_dir)
    rng_file = tag_dir / f"rng_rank{rank}.pt"
    if layout is None or saved is None or saved == layout:
        load_path, client_state = engine.load_checkpoint(str(ckpt), tag=tag)
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {tag} from {ckpt}")
        if rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=False))
        return tag, client_state
    if is_autoep(tag_dir):
        from moe.train import universal
        client_state = universal.load(engine, tag_dir)
    else:
        from moe.reshard import load_layout_free
        client_state = load_layout_free(engine, tag_dir)
    if saved["world_size"] == layout["world_size"] and rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    else:
        reseed(seed, client_state["step"], rank)
    return tag, client_state


def reseed(seed: int, step: int, rank: int) -> None:
    """Seed python, numpy and torch from (seed, step, rank): a resumed rank whose saved stream does not exist."""
    value = int.from_bytes(hashlib.sha256(f"{seed}:{step}:{rank}".encode()).digest()[:8], "little") % (2**63)
    random.seed(value)
    np.random.seed(value % (2**32))
    torch.manual_seed(value)
