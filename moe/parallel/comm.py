"""Joining the job's process group, and the few collectives the trainer issues itself (losses, telemetry)."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import torch


def free_port() -> int:
    """A TCP port free on this host now, for a process group's rendezvous."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(timeout_s: float = 1800.0) -> tuple[int, int]:
    """Join the process group the DeepSpeed launcher set up (gloo on CPU, nccl on GPU); (rank, world_size).
    `timeout_s` bounds every collective (a peer that never answers); the rank's watchdog fires before it."""
    import deepspeed
    import deepspeed.comm as dist

    if not dist.is_initialized():
        if "RANK" not in os.environ:  # a plain `python recipes/pretrain_moe.py`: a world of one
            os.environ.update(
                RANK="0",
                LOCAL_RANK="0",
                WORLD_SIZE="1",
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=os.environ.get("MASTER_PORT", "29500"),
            )
        deepspeed.init_distributed(timeout=datetime.timedelta(seconds=timeout_s))
        _unlink_shm_buffer(dist)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return dist.get_rank(), dist.get_world_size()


def shutdown_distributed() -> None:
    """Destroy the process groups before the interpreter exits. A gloo group left to interpreter finalization can
    abort a rank that finished its work (SIGABRT, "terminate called without an active exception": gloo's worker
    threads still hold work whose tensors need the GIL; pytorch/pytorch#190489), so every entry point that joins
    the group calls this on its way out."""
    import deepspeed.comm as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def _unlink_shm_buffer(dist) -> None:
    """DeepSpeed's CPU shared-memory all-reduce (single-node CPU jobs) maps one /dev/shm buffer per rank (69 MB)
    and never unlinks it, so every run used to leave 69 MB per rank in /dev/shm until it filled. Once every rank
    has mapped every other rank's buffer (they do inside init_distributed; the barrier makes sure all returned),
    each rank unlinks its own name: the mappings stay valid until the processes exit, then the memory is freed."""
    dist.barrier()
    name = (
        f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
        f"{os.environ.get('MASTER_PORT', '')}_{dist.get_rank()}"
    )  # deepspeed/ops/csrc/cpu/comm/shm.cpp
    (Path("/dev/shm") / name).unlink(missing_ok=True)


def all_reduce_mean(values: list[float] | torch.Tensor) -> list[float]:
    """Average scalars (a list, or a 1-D tensor on any device) over all ranks with one collective."""
    import deepspeed.comm as dist

    if isinstance(values, torch.Tensor):
        t = values.detach().double().clone()
    else:
        t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if torch.cuda.is_available():
        t = t.cuda()
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t.tolist()


def barrier() -> None:
    import deepspeed.comm as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks (one collective); returns it on the CPU."""
    import deepspeed.comm as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t)
    return t.cpu()


def all_reduce_named(values: dict[str, torch.Tensor], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Sum every named tensor over all ranks in one collective; returns them on the CPU, same names and shapes.

    The tensors are flattened in sorted-name order into one float64 buffer on `device` (NCCL reduces device
    tensors only), so every rank must pass the same names and shapes."""
    names = sorted(values)
    if not names:
        return {}
    flat = torch.cat([values[n].detach().to(device=device, dtype=torch.float64).flatten() for n in names])
    summed = all_reduce_sum(flat)  # (sum of numels,) on the CPU
    sizes = [values[n].numel() for n in names]
    return {n: part.view(values[n].shape) for n, part in zip(names, summed.split(sizes))}
