"""Compressed-communication optimizers (1-bit Adam, 0/1 Adam, 1-bit LAMB): refused before any rank starts.

Earlier DeepSpeed releases had them (`deepspeed/runtime/fp16/onebit/`, with nccl, mpi, hccl and "compressed"
communication backends, none of them gloo). The pinned DeepSpeed 0.19.8 has removed them: `optimizer.type:
OneBitAdam` reaches `deepspeed.initialize` on every rank and fails there with "OneBitAdam is not a supported
DeepSpeed Optimizer", on CPU and GPU alike. This rule says so in one line instead, and names what to use.
"""
from __future__ import annotations

import importlib.util
from importlib.metadata import version
from pathlib import Path

from moe.config.loader import ConfigError

COMPRESSED = {"onebitadam": "1-bit Adam", "zerooneadam": "0/1 Adam", "onebitlamb": "1-bit LAMB"}
INSTEAD = ("use optimizer.type=AdamW (ZeRO-1/2 already cut optimizer memory; gradients are reduced uncompressed, and "
           "expert gradients over expert-data-parallel groups)")


def check_compressed_comm(ds: dict, where: str, cuda: bool) -> None:
    name = str((ds.get("optimizer") or {}).get("type", ""))
    if name.lower() not in COMPRESSED:
        return
    what = f"optimizer.type={name} in {where} ({COMPRESSED[name.lower()]})"
    if not deepspeed_has_onebit():
        raise ConfigError(f"{what}: deepspeed {version('deepspeed')} has removed its compressed-communication "
                          f"optimizers (no deepspeed/runtime/fp16/onebit), on CPU and GPU alike; {INSTEAD}")
    if not cuda:  # an older DeepSpeed: its compressed all-reduce backends are nccl, mpi, hccl and compressed
        raise ConfigError(f"{what} needs a GPU: its compressed all-reduce has no gloo (CPU) backend; {INSTEAD}")


def deepspeed_has_onebit() -> bool:
    """Whether the installed DeepSpeed ships the 1-bit optimizers, read from its files (importing deepspeed takes
    seconds, and preflight stays fast)."""
    spec = importlib.util.find_spec("deepspeed")
    return bool(spec and spec.origin and (Path(spec.origin).parent / "runtime" / "fp16" / "onebit").is_dir())
