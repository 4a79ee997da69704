"""The environment variables a launch reads, each parsed here with a message that names it (a ConfigError line
before any rank), instead of a traceback from `int()` or a failure inside a rank.

- Launcher settings: NUM_GPUS, NUM_NODES, MASTER_PORT (HOSTFILE and MASTER_ADDR are strings; the hostfile's
  existence is the launcher's check).
- WANDB_MODE (moe/train/metrics.py passes it to wandb.init, which would refuse it on every rank).
- Folders that must be writable: MOE_CACHE (token shards and tokenizers) and TORCH_EXTENSIONS_DIR (DeepSpeed's
  JIT-built ops).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from moe.config import ConfigError

WANDB_MODES = ("online", "offline", "disabled", "dryrun", "run", "shared")  # wandb.sdk.wandb_settings
PORTS = (1, 65535)


def env_int(name: str, default: int | None, lo: int, hi: int | None = None) -> int | None:
    """$name as a whole number in [lo, hi]; `default` when unset or empty."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"environment variable {name}={text!r} is not a whole number") from None
    if value < lo or (hi is not None and value > hi):
        allowed = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise ConfigError(f"environment variable {name}={value} must be {allowed}")
    return value


def check_env_vars() -> None:
    """The variables a run reads besides the launcher settings, or one ConfigError naming the bad one."""
    mode = os.environ.get("WANDB_MODE")
    if mode and mode not in WANDB_MODES:
        raise ConfigError(f"environment variable WANDB_MODE={mode!r} must be one of {', '.join(WANDB_MODES)}")
    for name in ("MOE_CACHE", "TORCH_EXTENSIONS_DIR"):
        if os.environ.get(name):
            problem = not_writable(Path(os.environ[name]).expanduser())
            if problem:
                raise ConfigError(f"environment variable {name}={os.environ[name]}: {problem}")


def not_writable(folder: Path) -> str | None:
    """Why `folder` cannot be created or written by this user, or None. A folder that does not exist yet is
    judged by its nearest existing parent. Writing is tried (an unnamed temporary file, gone when closed), since
    permission bits say nothing for root, a read-only mount or /proc."""
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a folder"
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        return f"{probe} is not writable ({e.strerror or type(e).__name__})"
    return None
