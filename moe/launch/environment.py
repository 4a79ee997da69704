"""The checks of a resolved run against the machine it will run on, each one ConfigError line before any rank:
data files (present, not empty, with the text field) and folders, site_packages' named packages (installed), HF
names that cannot be loaded here (hub.py), the tokenizer, whether the runs folder can be written, a
`model.init_from` checkpoint against the recipe, an AutoEP family's `model.hf_config` keys, NVMe offload folders
and DeepSpeed's async_io op, and optimizers the installed DeepSpeed has removed. The resolve step checks values
only (moe/config/); these need the disk, transformers or DeepSpeed.
"""

from __future__ import annotations

import importlib.util
import json
import os
from importlib.metadata import version
from pathlib import Path

from moe.config import ConfigError, Resolved
from moe.config.memory_saving import offload_devices
from moe.data.python_source import missing_packages
from moe.launch.env_vars import not_writable
from moe.launch.hub import check_hub_name

# Compressed-communication optimizers. Earlier DeepSpeed releases had them (`deepspeed/runtime/fp16/onebit/`, with
# nccl, mpi, hccl and "compressed" communication backends, none of them gloo). The pinned DeepSpeed 0.19.8 has removed
# them: `optimizer.type: OneBitAdam` reaches `deepspeed.initialize` on every rank and fails there with "OneBitAdam is
# not a supported DeepSpeed Optimizer", on CPU and GPU alike; this says so in one line and names what to use.
COMPRESSED = {"onebitadam": "1-bit Adam", "zerooneadam": "0/1 Adam", "onebitlamb": "1-bit LAMB"}
INSTEAD = (
    "use optimizer.type=AdamW (ZeRO-1/2 already cut optimizer memory; gradients are reduced uncompressed, and "
    "expert gradients over expert-data-parallel groups)"
)


def check_environment(resolved: Resolved, cuda: bool) -> None:
    recipe, ds, where = resolved.recipe, resolved.ds_config, resolved.ds_config_path
    check_compressed_comm(ds, where, cuda)
    if recipe.model.init_from and not (Path(recipe.model.init_from).expanduser() / "config.json").is_file():
        raise ConfigError(f"model.init_from: no HF model folder (config.json) at {recipe.model.init_from}")
    if recipe.moe.impl == "autoep":
        check_hf_config_keys(recipe)
    if recipe.model.init_from:
        check_init_from(recipe)
    check_data_paths(recipe.data)
    check_runs_dir(recipe.logging.runs_dir)
    for section, device in offload_devices(ds).items():
        if device == "nvme":
            check_nvme(ds["zero_optimization"][section], f"{where}: zero_optimization.{section}")


JSON_READ_WHOLE_BYTES = 64 << 20  # a .json file that is one document is parsed whole for its fields up to this size


def looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or Path(name).suffix in (".json", ".jsonl", ".txt", ".parquet")


def check_data_paths(d) -> None:
    for i, source in enumerate(d.mixture or [d]):
        where = f"data.mixture[{i}]." if d.mixture else "data."
        if source.source == "files":
            for f in source.files:
                check_data_file(Path(f).expanduser(), source.text_field, f"{where}files")
        if source.packages:
            missing = missing_packages(source.packages)
            if missing:
                raise ConfigError(f"{where}packages: not installed here: {', '.join(missing)} (pip install them)")
        if source.source == "hf":
            if looks_like_path(source.name) and not Path(source.name).expanduser().exists():
                raise ConfigError(f"dataset path not found: {source.name} ({where}name)")
            check_hub_name(source.name, "dataset", f"{where}name")
    if d.tokenizer != "bpe":
        if looks_like_path(d.tokenizer) and not Path(d.tokenizer).expanduser().exists():
            raise ConfigError(f"tokenizer path not found: {d.tokenizer} (data.tokenizer)")
        check_hub_name(d.tokenizer, "model", "data.tokenizer")


def check_data_file(path: Path, text_field: str, where: str) -> None:
    """A data file exists, is not empty, and (JSON lines, JSON, parquet) has the text field in its first record."""
    if not path.exists():
        raise ConfigError(f"dataset file not found: {path} ({where})")
    if path.stat().st_size == 0 or (path.suffix != ".parquet" and not _has_text(path)):
        raise ConfigError(f"dataset file is empty: {path} ({where})")
    fields = first_record_fields(path)
    if fields is not None and text_field not in fields:
        shown = ", ".join(sorted(fields)[:8]) or "none"
        raise ConfigError(f"{path} has no field '{text_field}' (data.text_field); its first record has: {shown}")


def _has_text(path: Path, probe_bytes: int = 1 << 16) -> bool:
    with path.open("rb") as f:
        while chunk := f.read(probe_bytes):
            if chunk.strip():
                return True
    return False


def first_record_fields(path: Path) -> set[str] | None:
    """The field names of the file's first record; None where there are no fields to check (plain text, whose
    record is the whole document) or finding them would mean reading a large file whole."""
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return set(pq.read_schema(path).names)
        if path.suffix not in (".jsonl", ".json"):
            return None
        with path.open() as f:  # JSON lines (what `datasets` reads from .jsonl and most .json files)
            line = next(line for line in f if line.strip())
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if path.suffix == ".jsonl" or path.stat().st_size > JSON_READ_WHOLE_BYTES:
                raise
            record = json.loads(path.read_text())  # one JSON document: a list of records, or columns
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON: {str(e).splitlines()[0]}") from None
    except Exception as e:  # pyarrow's errors for a file that is not parquet
        raise ConfigError(f"{path} cannot be read: {str(e).splitlines()[0]}") from None
    if isinstance(record, list):
        record = record[0] if record else {}
    return set(record) if isinstance(record, dict) else set()


def check_runs_dir(runs_dir: str) -> None:
    problem = not_writable(Path(runs_dir).expanduser())
    if problem:
        raise ConfigError(f"logging.runs_dir={runs_dir} cannot hold run folders: {problem}")


def check_init_from(recipe) -> None:
    """The `model.init_from` folder (an HF model) has the shape and function the recipe's path can start from."""
    folder = Path(recipe.model.init_from).expanduser()
    if recipe.moe.impl == "autoep":
        from moe.model.hf.families import init_from_mismatches

        mismatches = init_from_mismatches(recipe, json.loads((folder / "config.json").read_text()))
        if mismatches:
            raise ConfigError(f"model.init_from {recipe.model.init_from} does not match the recipe: {mismatches[0]}")
        return
    from moe.checkpoint.hf_import import init_from_problem, read_hf_config

    problem = init_from_problem(recipe, read_hf_config(folder))
    if problem:
        raise ConfigError(problem)


def check_hf_config_keys(recipe) -> None:
    """`model.hf_config` keys the AutoEP family's config class does not have (HF would accept them silently)."""
    from moe.config.autoep_families import FAMILIES
    from moe.model.hf.families import unknown_hf_config_keys

    unknown = unknown_hf_config_keys(recipe.model.family, recipe.model.hf_config)
    if unknown:
        raise ConfigError(f"model.hf_config: {FAMILIES[recipe.model.family].config_class} has no field '{unknown[0]}'")


def check_nvme(section: dict, where: str) -> None:
    path = section["nvme_path"]
    if not Path(path).is_dir() or not os.access(path, os.W_OK):
        raise ConfigError(
            f"{where}.nvme_path={path} is not a writable directory; create it or point it at a local "
            f"NVMe mount (override with ds.zero_optimization.<section>.nvme_path=...)"
        )
    if not async_io_available():
        raise ConfigError(
            f"{where}.device=nvme needs DeepSpeed's async_io op, which needs libaio: this machine "
            f"lacks it (apt install libaio-dev, or set CFLAGS/LDFLAGS to a libaio build); "
            f"use device cpu instead"
        )


def async_io_available() -> bool:
    """Whether DeepSpeed's async_io op (NVMe offload) can be built here: libaio headers and library present."""
    from deepspeed.ops.op_builder import AsyncIOBuilder

    return AsyncIOBuilder().is_compatible(verbose=False)


def check_compressed_comm(ds: dict, where: str, cuda: bool) -> None:
    name = str((ds.get("optimizer") or {}).get("type", ""))
    if name.lower() not in COMPRESSED:
        return
    what = f"optimizer.type={name} in {where} ({COMPRESSED[name.lower()]})"
    if not deepspeed_has_onebit():
        raise ConfigError(
            f"{what}: deepspeed {version('deepspeed')} has removed its compressed-communication "
            f"optimizers (no deepspeed/runtime/fp16/onebit), on CPU and GPU alike; {INSTEAD}"
        )
    if not cuda:  # an older DeepSpeed: its compressed all-reduce backends are nccl, mpi, hccl and compressed
        raise ConfigError(f"{what} needs a GPU: its compressed all-reduce has no gloo (CPU) backend; {INSTEAD}")


def deepspeed_has_onebit() -> bool:
    """Whether the installed DeepSpeed ships the 1-bit optimizers, read from its files (importing deepspeed takes
    seconds, and preflight stays fast)."""
    spec = importlib.util.find_spec("deepspeed")
    return bool(spec and spec.origin and (Path(spec.origin).parent / "runtime" / "fp16" / "onebit").is_dir())
