"""Where checkpoints live and what a tag says about itself, written and read in this one place.

    runs/<run>/checkpoints/latest            the tag to resume from, replaced atomically after a complete save
    runs/<run>/checkpoints/global_stepN/     DeepSpeed's files, every rank's RNG, and rank 0's metadata:
        recipe.yaml, ds_config.json          the resolved config that trained it
        version.json                         package, git commit, torch / deepspeed / transformers versions
        COMPLETE                             written last, after every rank's files: a tag without it died mid-save

`Tag` reads a tag's metadata once: the saved recipe and ds_config, the layout that wrote it (rank count,
moe.ep_size, ZeRO stage, precision, pipeline stages), the MoE path (moe.impl), whether it is a pipeline checkpoint,
and whether `python -m moe.reshard` has written its converted state:

    global_stepN/layout_free/   moe.impl=deepspeed (moe/checkpoint/layout_free.py)
    global_stepN/universal/     moe.impl=autoep (moe/checkpoint/universal.py)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import yaml

from moe.config.loader import to_dict
from moe.config.pipeline_parallel import pipeline_stages
from moe.config.resolve import Resolved

COMPLETE = "COMPLETE"  # written last, after every rank's files: a tag without it is a save that died
RECIPE, DS_CONFIG, VERSION = "recipe.yaml", "ds_config.json", "version.json"
LAYOUT_FREE, UNIVERSAL = "layout_free", "universal"
CONVERTED = {"deepspeed": LAYOUT_FREE, "autoep": UNIVERSAL}  # the folder each MoE path converts into


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def tag_name(step: int) -> str:
    return f"global_step{step}"


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


def checkpoint_layout(recipe: dict, ds_config: dict, world_size: int) -> dict:
    """What DeepSpeed's load_checkpoint needs to be unchanged since the save (rank count, EP size, ZeRO stage,
    precision, pipeline stages), on both MoE paths (AutoEP's EP size is moe.ep_size too: resolve writes it as
    autoep_size). `recipe`: the recipe as a dict (`to_dict`)."""
    layout = {
        "world_size": world_size,
        "ep_size": recipe["moe"]["ep_size"] if recipe["moe"]["enabled"] else 1,
        "zero_stage": (ds_config.get("zero_optimization") or {}).get("stage", 0),
        "precision": recipe["train"]["precision"],
    }
    if pipeline_stages(ds_config) > 1:  # a PipelineModule checkpoint: per-layer files (moe/parallel/pipeline_module.py)
        layout["pipeline_stages"] = pipeline_stages(ds_config)
    return layout


def checkpoint_layout_of(resolved: Resolved) -> dict:
    """The layout `resolved` will run at (and save its checkpoints with)."""
    return checkpoint_layout(to_dict(resolved.recipe), resolved.ds_config, resolved.world_size)


def describe_layout(layout: dict) -> str:
    ranks = layout["world_size"]
    return (
        f"{ranks} rank{'s' * (ranks != 1)}, moe.ep_size={layout['ep_size']}, ZeRO-{layout['zero_stage']}, "
        f"{layout['precision']}"
    )


def reshard_command(tag: Tag) -> str:
    """The command that writes the tag's converted state."""
    return f"python -m moe.reshard {tag.run_dir} --tag {tag.name}"


def tag_metadata(resolved: Resolved, version: dict) -> dict[str, str]:
    """File name -> text that rank 0 writes into every tag it saves."""
    return {
        RECIPE: yaml.safe_dump(to_dict(resolved.recipe), sort_keys=False),
        DS_CONFIG: json.dumps(resolved.ds_config, indent=2) + "\n",
        VERSION: json.dumps(version, indent=2) + "\n",
    }


@dataclass(frozen=True)
class Tag:
    """One checkpoint tag folder and its metadata, each file read once."""

    dir: Path

    @classmethod
    def of(cls, run_dir: Path, tag: str) -> Tag:
        return cls(checkpoint_dir(run_dir) / tag)

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def run_dir(self) -> Path:
        return self.dir.parent.parent

    @property
    def complete(self) -> bool:
        return (self.dir / COMPLETE).is_file()

    @cached_property
    def recipe(self) -> dict | None:
        """The saved recipe as a dict, or None for a tag written without our metadata."""
        path = self.dir / RECIPE
        return yaml.safe_load(path.read_text()) if path.is_file() else None

    @cached_property
    def ds_config(self) -> dict | None:
        path = self.dir / DS_CONFIG
        return json.loads(path.read_text()) if path.is_file() else None

    @property
    def has_metadata(self) -> bool:
        return self.recipe is not None and self.ds_config is not None

    @cached_property
    def layout(self) -> dict | None:
        """The layout that wrote the tag (world size = global batch / (micro-batch x accumulation), times the
        pipeline stages, which share their data-parallel batch); None without metadata."""
        if not self.has_metadata:
            return None
        ds = self.ds_config
        world_size = ds["train_batch_size"] // (
            ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"]
        )
        return checkpoint_layout(self.recipe, ds, world_size * pipeline_stages(ds))

    @property
    def moe_path(self) -> str:
        """moe.impl of the run that wrote it: "deepspeed" (native) or "autoep"."""
        return (self.recipe or {}).get("moe", {}).get("impl", "deepspeed")

    @property
    def pipeline(self) -> bool:
        """Whether a pipeline-parallel run wrote it (per-layer files, moe/checkpoint/pipeline_files.py)."""
        return self.ds_config is not None and pipeline_stages(self.ds_config) > 1

    @property
    def precision(self) -> str | None:
        return (self.recipe or {}).get("train", {}).get("precision")

    @property
    def converted_dir(self) -> Path:
        """Where `python -m moe.reshard` writes this tag's converted state (for its MoE path)."""
        return self.dir / CONVERTED[self.moe_path]

    @property
    def converted(self) -> bool:
        """Whether that state is complete: the tag then loads at any layout."""
        return (self.converted_dir / COMPLETE).is_file()
