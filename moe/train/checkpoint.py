"""DeepSpeed checkpoints plus what DeepSpeed does not keep: every rank's RNG state and the run's position."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
import yaml

from moe.config.loader import ConfigError

SHAPE_SECTIONS = ("model", "moe")
SHAPE_EXEMPT = {("moe", "ep_size"), ("moe", "aux_loss_coef"), ("moe", "capacity_factor"),
                ("moe", "eval_capacity_factor"), ("moe", "min_capacity"), ("moe", "drop_tokens"), ("moe", "use_rts"),
                ("moe", "noisy_gate_policy"), ("moe", "top2_2nd_expert_sampling")}


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def latest_tag(run_dir: Path) -> str | None:
    latest = checkpoint_dir(run_dir) / "latest"
    return latest.read_text().strip() if latest.is_file() else None


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


def save(engine, run_dir: Path, step: int, client_state: dict, recipe_yaml: str) -> str:
    tag = f"global_step{step}"
    ckpt = checkpoint_dir(run_dir)
    rank = engine.global_rank
    (ckpt / tag).mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(), ckpt / tag / f"rng_rank{rank}.pt")
    if rank == 0:
        (ckpt / tag / "recipe.yaml").write_text(recipe_yaml)
    # DeepSpeed writes model, optimizer (per-rank ZeRO shards) and per-expert files, then `latest`.
    engine.save_checkpoint(str(ckpt), tag=tag, client_state=client_state)
    return tag


def load(engine, run_dir: Path) -> dict:
    ckpt, tag = checkpoint_dir(run_dir), latest_tag(run_dir)
    load_path, client_state = engine.load_checkpoint(str(ckpt), tag=tag)
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {tag} from {ckpt}")
    rng_file = ckpt / tag / f"rng_rank{engine.global_rank}.pt"
    if rng_file.is_file():  # absent when resuming at another world size
        set_rng_state(torch.load(rng_file, weights_only=False))
    return client_state
