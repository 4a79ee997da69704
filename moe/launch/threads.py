"""Threads of a CPU rank: the cores this process may run on, split evenly among the node's ranks, each rank pinned.

A rank takes the CPUs in its affinity mask (os.sched_getaffinity: all cores, or what `taskset`, a cgroup or a
SLURM allocation left it), keeps the slice that belongs to its local rank, pins itself to that slice and runs
torch's intra-op pool with one thread per core of it. Two runs started side by side under disjoint masks (a
parallel sweep: `taskset -c 0 ...`, `taskset -c 1 ...`) therefore never share a core, and the ranks of one job
never share one either. OMP_NUM_THREADS, when the user sets it, still sets the thread count (not the pinning).

Why not DeepSpeed's `--bind_cores_to_rank`: it needs `numactl`, which many machines lack, and it slices all of the
machine's physical cores from core 0, ignoring the mask the process was started under, so two jobs started side by
side would both be bound to the same first cores.

On a GPU the data path is not CPU-bound and torch's default is kept: nothing is pinned there.
"""

from __future__ import annotations

import os

import torch

THREADS_ENV = "OMP_NUM_THREADS"


def rank_cpus(available: list[int], local_rank: int, local_size: int) -> list[int]:
    """The CPUs of `local_rank` out of `local_size` ranks on `available` (contiguous, equal slices; the remainder
    goes to the first ranks). With more ranks than CPUs, ranks share CPUs round-robin (one each)."""
    available = sorted(available)
    if local_size > len(available):
        return [available[local_rank % len(available)]]
    share, extra = divmod(len(available), local_size)
    start = local_rank * share + min(local_rank, extra)
    return available[start : start + share + (local_rank < extra)]


def pin_rank_threads(local_rank: int | None = None, local_size: int | None = None) -> int:
    """Pin this CPU process to its share of its affinity mask and size torch's thread pool to it; the thread
    count. local_rank / local_size default to the launcher's LOCAL_RANK / LOCAL_SIZE (a lone process: 0 / 1)."""
    if torch.cuda.is_available():
        return torch.get_num_threads()
    env = os.environ
    local_rank = int(env.get("LOCAL_RANK", 0)) if local_rank is None else local_rank
    local_size = int(env.get("LOCAL_SIZE", env.get("LOCAL_WORLD_SIZE", 1))) if local_size is None else local_size
    cpus = rank_cpus(list(os.sched_getaffinity(0)), local_rank, local_size)
    os.sched_setaffinity(0, cpus)
    given = env.get(THREADS_ENV, "")
    threads = int(given) if given.isdigit() and int(given) > 0 else len(cpus)
    torch.set_num_threads(threads)
    return threads
