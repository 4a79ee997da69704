"""moe/launch/build_locks.py against torch's own JIT build lock (torch.utils.file_baton.FileBaton in the folder that
torch.utils.cpp_extension gives an op): a process killed while it holds the lock leaves it, torch would wait on it
forever, and the launcher's check removes it, but never a young lock or one whose folder a live process builds in."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from torch.utils.cpp_extension import _get_build_directory
from torch.utils.file_baton import FileBaton

from moe.launch.build_locks import (
    STALE_AFTER_S,
    build_locks,
    clear_and_report,
    clear_stale_build_locks,
    stale_build_locks,
)

HOLD_THE_LOCK = """
import sys, time
from torch.utils.file_baton import FileBaton
assert FileBaton(sys.argv[1]).try_acquire()
print("acquired", flush=True)
time.sleep(600)
"""


@pytest.fixture
def op_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))
    return tmp_path / "extensions" / "some_op", _get_build_directory("some_op", verbose=False)


def aged(path, seconds: float):
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def test_a_loader_killed_while_it_holds_the_lock_leaves_it_and_the_check_removes_it(op_folder):
    folder, torch_folder = op_folder
    assert str(folder) == torch_folder
    lock = folder / "lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_LOCK, str(lock)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "acquired"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert lock.exists() and not FileBaton(str(lock)).try_acquire()  # every later load would wait on it
    assert clear_stale_build_locks(older_than_s=0, root=folder.parent) == [lock]
    baton = FileBaton(str(lock))
    assert baton.try_acquire()
    baton.release()


def test_a_young_lock_or_one_whose_folder_a_live_process_works_in_is_kept(op_folder):
    folder, _ = op_folder
    lock = _touched(folder)
    assert stale_build_locks(root=folder.parent) == []  # just made: someone may be building
    aged(lock, 2 * STALE_AFTER_S)
    with subprocess.Popen(["sleep", "600"], cwd=folder) as builder:  # ninja and the compiler run in the folder
        try:
            assert clear_stale_build_locks(root=folder.parent) == [] and lock.exists()
        finally:
            builder.kill()
    assert clear_stale_build_locks(root=folder.parent) == [lock] and not lock.exists()


def test_the_locks_are_found_where_torch_puts_them_without_torch_extensions_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    lock = aged(_touched(_get_build_directory("some_op", verbose=False)), 2 * STALE_AFTER_S)
    assert lock.parent.parent.parent == tmp_path / "torch_extensions"  # a py<ver>_<accelerator> level between
    assert build_locks() == [lock]


def test_the_launcher_says_which_lock_it_removed(op_folder, capsys):
    folder, _ = op_folder
    lock = aged(_touched(folder), 2 * STALE_AFTER_S)
    clear_and_report("launch")
    assert capsys.readouterr().err == f"launch: removed a stale JIT build lock {lock}, left by a killed process\n"
    assert not lock.exists()


def _touched(folder) -> Path:
    lock = Path(folder) / "lock"
    lock.touch()
    return lock
