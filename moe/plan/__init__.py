"""Planning a run before it starts: params, FLOPs and per-rank memory from the config (moe/cost.py + this
package), whether it fits the devices, and the micro-batch that would. `python -m moe.plan` prints it; moe/preflight.py
refuses a run that does not fit before any rank spawns."""
from moe.plan.fit import Plan, cpu_budget, gpu_budget, make_plan, parse_bytes, refusal

__all__ = ["Plan", "cpu_budget", "gpu_budget", "make_plan", "parse_bytes", "refusal"]
