"""Does a run fit its devices, and which micro-batch would: the check the planner prints and preflight enforces."""

from __future__ import annotations

import re
from dataclasses import dataclass

from moe.plan.layout import Layout, layout_of
from moe.plan.memory import Memory, estimate
from moe.plan.shape import ModelShape, model_shape

# Share of the device kept free for what the estimate leaves out: the CUDA context / interpreter and libraries,
# allocator fragmentation, communication buffers.
HEADROOM = 0.10
UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_bytes(text: str) -> int:
    """'80GB', '80 GiB', '512MB', '1e9' -> bytes."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([A-Za-z]*)\s*", str(text))
    if not match or match.group(2).upper() not in UNITS:
        raise ValueError(f"cannot read a memory size from {text!r}; write e.g. 80GB or 40GiB")
    return int(float(match.group(1)) * UNITS[match.group(2).upper()])


def cpu_budget(ranks_on_this_machine: int) -> int:
    """Each CPU rank's share of the machine's RAM (MemTotal in /proc/meminfo)."""
    with open("/proc/meminfo") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    return kib * 1024 // max(1, ranks_on_this_machine)


def gpu_budget() -> int:
    import torch

    return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory


@dataclass(frozen=True)
class Plan:
    shape: ModelShape
    layout: Layout
    memory: Memory
    budget: int  # bytes per device
    suggested_micro_batch: int | None  # largest micro-batch that fits (None: not even 1)

    @property
    def usable(self) -> float:
        return self.budget * (1 - HEADROOM)

    @property
    def fits(self) -> bool:
        return self.memory.peak <= self.usable

    @property
    def fits_with_checkpointing(self) -> bool:  # what an activation_checkpointing section would give
        return self.memory.with_checkpointing().peak <= self.usable


def make_plan(resolved, budget: int, cpu: bool = False) -> Plan:
    """The plan of `resolved` against `budget` bytes per rank; `cpu`: CPU ranks (preflight on a machine without
    a GPU), whose attention runs in fp32."""
    layout = layout_of(resolved)
    shape = model_shape(resolved.recipe, layout.param_bytes, cpu)
    memory = estimate(shape, layout)
    usable = budget * (1 - HEADROOM)
    return Plan(shape, layout, memory, budget, largest_micro_batch(shape, layout, usable))


def largest_micro_batch(shape: ModelShape, layout: Layout, usable: float, limit: int = 4096) -> int | None:
    """Largest micro-batch whose peak fits `usable` bytes (peak grows with the micro-batch); None if 1 does not."""
    if estimate(shape, layout, 1).peak > usable:
        return None
    low, high = 1, 2
    while high <= limit and estimate(shape, layout, high).peak <= usable:
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if estimate(shape, layout, mid).peak <= usable else (low, mid)
    return low


def refusal(plan: Plan, where: str) -> str | None:
    """The one-line reason a run does not fit, naming what would, or None when it fits."""
    gb, L = 1e9, plan.layout
    if plan.fits:
        return None
    need = f"needs ~{plan.memory.peak / gb:.1f} GB per rank but {plan.usable / gb:.1f} GB is usable ({where})"
    if plan.suggested_micro_batch:
        accum = -(-L.micro_batch // plan.suggested_micro_batch)
        return (
            f"{need}: micro-batch {L.micro_batch} does not fit; micro-batch {plan.suggested_micro_batch} does "
            f"(ds.train_micro_batch_size_per_gpu={plan.suggested_micro_batch}, and {accum}x "
            f"gradient_accumulation_steps keeps the global batch; or train.* where the recipe sets the batch)"
        )
    return (
        f"{need} even at micro-batch 1 (model states {plan.memory.model_states / gb:.1f} GB): use more ranks, "
        f"a higher ZeRO stage, a larger moe.ep_size or optimizer offload"
    )
