"""Stale build locks of JIT-built PyTorch extensions: DeepSpeed's CPU ops (the shared-memory comm op, cpu_adam,
async_io) and any other op it builds at first use.

torch.utils.cpp_extension guards each op's build folder with a `lock` file (torch.utils.file_baton.FileBaton). Every
process that loads the op creates the file, runs ninja (a no-op once the op is built) and removes it; every other
process waits while the file exists, with no timeout and no message. A process killed in between (a rank killed by
DeepSpeed's launcher because another rank failed, a job killed by its scheduler, a test's timeout) leaves the file
behind, and from then on every run that shares the TORCH_EXTENSIONS_DIR hangs silently at its first op load. The
file holds no pid, and torch has no stale-lock recovery, so the launcher clears stale ones here before it spawns
ranks: a lock is stale when it is older than `older_than_s` and no process of this host works in its build folder
(ninja and the compiler run there). A builder on another host sharing the folder is invisible to the second test,
so the launcher's age limit is far above any build's length.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

STALE_AFTER_S = 30 * 60  # the longest JIT build seen here, DeepSpeedCPUAdam on 2 busy cores, takes minutes


def extensions_root() -> Path:
    """torch's root of JIT builds (torch.utils.cpp_extension._get_build_directory), read without importing torch:
    TORCH_EXTENSIONS_DIR, else the user cache's torch_extensions/ (which holds a py<ver>_<accelerator>/ level)."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "torch_extensions"


def build_locks(root: Path | None = None) -> list[Path]:
    """Every op's `lock` file under the root: <root>/<op>/lock, or <root>/<py_accel>/<op>/lock."""
    root = root or extensions_root()
    return sorted({*root.glob("*/lock"), *root.glob("*/*/lock")})


def folders_in_use() -> set[Path]:
    """The working folders of this host's processes (those it may read: all of them as root, else one's own)."""
    used = set()
    for pid in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if pid.isdigit():
            try:
                used.add(Path(os.readlink(f"/proc/{pid}/cwd")))
            except OSError:  # gone, or another user's
                continue
    return used


def stale_build_locks(older_than_s: float = STALE_AFTER_S, root: Path | None = None) -> list[Path]:
    """The locks older than `older_than_s` whose build folder no process of this host works in."""
    old = [lock for lock in build_locks(root) if _age_s(lock) >= older_than_s]
    in_use = folders_in_use() if old else set()  # /proc is read only when there is a candidate
    return [lock for lock in old if not any(_within(used, lock.parent.resolve()) for used in in_use)]


def clear_stale_build_locks(older_than_s: float = STALE_AFTER_S, root: Path | None = None) -> list[Path]:
    """Remove the stale locks; returns those removed."""
    stale = stale_build_locks(older_than_s, root)
    for lock in stale:
        lock.unlink(missing_ok=True)
    return stale


def _age_s(lock: Path) -> float:
    try:
        return time.time() - lock.stat().st_mtime
    except FileNotFoundError:  # released meanwhile
        return -1.0


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def clear_and_report(who: str) -> None:
    """Clear the stale locks (launcher age limit), one stderr line for each."""
    for lock in clear_stale_build_locks():
        print(f"{who}: removed a stale JIT build lock {lock}, left by a killed process", file=sys.stderr, flush=True)
