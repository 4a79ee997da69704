"""Each rank's own parent: the one process that sees how the rank ended, a SIGKILL included.

DeepSpeed's launcher is the parent of its ranks, but when one dies it logs another rank's command line
(deepspeed/launcher/launch.py, sigkill_handler), and a rank killed by SIGKILL or the OOM killer can say nothing
itself. So recipes/pretrain_moe.py forks before it imports anything heavy: the child is the rank, and this small
parent waits for it, writes its exit code or signal next to its end record (rank<R>.exit, moe/launch/rank_record.py)
and ends the same way, so the launcher sees exactly what it saw before. The child tells the parent where its
record folder is through a pipe, once the run folder is known.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable

RECORD_PIPE_ENV = "MOE_RANK_RECORD_PIPE"  # the fd the rank writes its record folder to


def run_with_parent(main: Callable[[], None]) -> None:
    """Run `main` in a child process; this process waits for it and exits as it did. In a process that has
    imported torch already (`deepspeed launch/pretrain_moe.sh` on GPUs runs the trainer inside the launcher
    file), `main` runs here: a fork after CUDA's driver was touched is not safe."""
    if "torch" in sys.modules or not hasattr(os, "fork"):
        main()
        return
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the rank
        os.close(read_fd)
        os.environ[RECORD_PIPE_ENV] = str(write_fd)
        main()
        return
    os.close(write_fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the rank shares the terminal's process group: it gets Ctrl-C
    signal.signal(signal.SIGTERM, lambda signum, _frame: os.kill(pid, signum))  # a kill of the rank's pid
    _, status = os.waitpid(pid, 0)
    ending = {"signal": signal.Signals(os.WTERMSIG(status)).name} if os.WIFSIGNALED(status) else {}
    ending.update(exit_code=os.waitstatus_to_exitcode(status), exited_at=time.time())
    folder = os.read(read_fd, 4096).decode().strip()
    if folder:
        rank = os.environ.get("RANK", "0")
        with open(os.path.join(folder, f"rank{rank}.exit"), "w") as f:
            json.dump(ending, f)
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        if signum != signal.SIGKILL:  # the one signal whose action cannot be set (and is always the default)
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    os._exit(os.WEXITSTATUS(status))


def tell_parent(folder: str) -> None:
    """The rank's side: send the record folder to the parent (once; a no-op without one)."""
    fd = os.environ.pop(RECORD_PIPE_ENV, None)
    if fd is not None:
        os.write(int(fd), folder.encode())
        os.close(int(fd))
