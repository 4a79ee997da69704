"""Planning a run before it starts: params, FLOPs and per-rank memory from the config (moe/model/cost.py and this
package), whether it fits the devices, and the micro-batch that would. `python -m moe.plan` prints it;
moe/launch/preflight.py refuses a run that does not fit before any rank spawns.

shape.py: the model a recipe builds, without building it; layout.py: the parallel layout and precision;
activations.py and memory.py: the bytes per rank; budget.py: the verdict against a device's memory; report.py."""

from moe.plan.budget import Plan, cpu_budget, gpu_budget, make_plan, parse_bytes, refusal

__all__ = ["Plan", "cpu_budget", "gpu_budget", "make_plan", "parse_bytes", "refusal"]
