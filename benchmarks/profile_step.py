"""Where one rank's training step spends its time: torch.profiler over real trainer steps, a table per phase.

    python benchmarks/profile_step.py                                               # default recipe, fp32, 1 rank
    python benchmarks/profile_step.py --ds_config ds_configs/zero1_bf16.json model.d_model=512

It builds our Trainer in this process (a world of one rank, as `python recipes/pretrain_moe.py` does; the recipe's
moe.ep_size is set to 1), runs --warmup untimed steps, then profiles --steps steps. Each step is split into phases by
wrapping the engine's forward, backward and step and the trainer's batch read in `record_function` regions; every
profiler event is charged to the phase it runs under (its outermost phase ancestor), and what runs under none of
them is "other" (loss reads, the step's bookkeeping). Per phase the table lists the ops with the most self CPU
time. The threads are the rank's own (moe/launch/threads.py: the cores this process may run on).

Markdown goes to stdout (benchmarks/SPEED_NOTES.md quotes it) and the JSON to --json.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time
from functools import wraps
from pathlib import Path

from torch.profiler import ProfilerActivity, profile, record_function

PHASES = ("data", "forward", "backward", "step")


def in_phase(name: str, fn):
    @wraps(fn)
    def wrapped(*args, **kwargs):
        with record_function(f"phase:{name}"):
            return fn(*args, **kwargs)

    return wrapped


def build_trainer(recipe: str, ds_config: str, overrides: list[str], runs_dir: str, wrap=in_phase):
    """Our Trainer for one rank in this process, its phases wrapped by `wrap(phase, fn) -> fn`."""
    from moe.config.args import parse_trainer_args
    from moe.launch.preflight import preflight
    from moe.parallel import init_distributed
    from moe.train.trainer import Trainer

    argv = ["--recipe", recipe, "--ds_config", ds_config, "moe.ep_size=1", "train.eval_interval=0",
            "train.save_interval=0", f"logging.runs_dir={runs_dir}", "logging.wandb=false",
            "logging.progress_bar=false", *overrides]  # fmt: skip
    rank, world = init_distributed()
    resolved = preflight(parse_trainer_args(argv), world, cuda=False)
    trainer = Trainer(resolved, rank)
    engine = trainer.engine
    engine.forward = wrap("forward", engine.forward)  # nn.Module.__call__ looks `forward` up on the instance
    engine.backward = wrap("backward", engine.backward)
    engine.step = wrap("step", engine.step)
    trainer.batches.at_sample = wrap("data", trainer.batches.at_sample)
    return trainer


def phase_of(event) -> str:
    phase, node = "other", event
    while node is not None:
        if node.name.startswith("phase:"):
            phase = node.name.removeprefix("phase:")
        node = node.cpu_parent
    return phase


def phase_tables(events, steps: int, top: int) -> dict:
    """{phase: {"total_ms": per step, "ops": [(op, self ms per step), ...]}} from the profiler's event tree."""
    self_us = collections.defaultdict(collections.Counter)
    totals = collections.Counter()
    for e in events:
        if e.name.startswith("phase:"):
            if e.cpu_parent is None or phase_of(e.cpu_parent) == "other":  # the outermost region of its phase
                totals[e.name.removeprefix("phase:")] += e.cpu_time_total
            continue
        self_us[phase_of(e)][e.name] += e.self_cpu_time_total
    out = {}
    for phase in (*PHASES, "other"):
        ops = self_us.get(phase, collections.Counter())
        total = totals.get(phase, sum(ops.values()))
        out[phase] = {
            "total_ms": total / steps / 1e3,
            "ops": [(name, us / steps / 1e3) for name, us in ops.most_common(top)],
        }
    return out


def markdown(tables: dict, step_ms: float, title: str) -> str:
    lines = [f"**{title}**: {step_ms:.1f} ms per step (wall, profiled)", ""]
    lines += ["| phase | ms per step | share |", "|---|---|---|"]
    for phase, t in tables.items():
        lines.append(f"| {phase} | {t['total_ms']:.1f} | {t['total_ms'] / step_ms:.0%} |")
    for phase, t in tables.items():
        if not t["ops"]:
            continue
        lines += ["", f"{phase} ({t['total_ms']:.1f} ms): ops by self CPU time", ""]
        lines += ["| op | ms | share |", "|---|---|---|"]
        for name, ms in t["ops"]:
            lines.append(f"| `{name[:70]}` | {ms:.2f} | {ms / max(t['total_ms'], 1e-9):.0%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="recipes/default.yaml")
    p.add_argument("--ds_config", default="ds_configs/zero1.json")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--top", type=int, default=8, help="ops listed per phase")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    from moe.launch.threads import pin_rank_threads

    threads = pin_rank_threads()
    with tempfile.TemporaryDirectory() as runs_dir:
        trainer = build_trainer(args.recipe, args.ds_config, args.overrides, runs_dir)
        for _ in range(args.warmup):
            trainer.train_step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            for _ in range(args.steps):
                trainer.train_step()
            step_ms = (time.perf_counter() - start) / args.steps * 1e3
        tables = phase_tables(prof.events(), args.steps, args.top)
    title = f"{args.recipe} + {args.ds_config} {' '.join(args.overrides)} ({threads} thread(s), 1 rank)"
    print(markdown(tables, step_ms, title))
    result = {"title": title, "threads": threads, "step_ms": step_ms, "phases": tables, "pid": os.getpid()}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
