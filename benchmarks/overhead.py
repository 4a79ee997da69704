"""The trainer's overhead: our trainer against a bare PyTorch loop on the same model, blocks, steps and threads.

    python benchmarks/overhead.py                                       # the default recipe's shape, 1 rank
    python benchmarks/overhead.py model.d_model=512 --json benchmarks/results/overhead_d512.json

Three arms, each in its own process pinned to the same cores (moe/launch/threads.py), taking turns --rounds times:

- `launcher`: `bash launch/pretrain_moe.sh --num_gpus 1` (moe.ep_size=1), the way a user runs it. Its step time is
  the wall clock between consecutive steps' metrics records: everything the trainer does per step counts.
- `trainer`: the same Trainer built in-process (benchmarks/profile_step.py), its `fit` timed by phase (batch read,
  engine forward, backward and step, the rest of train_step, and what fit does between steps: router telemetry,
  the metrics line, the progress bar), to say where the difference goes.
- `bare`: the same model (moe.model.build_model, same seed), the same blocks in the same order (BlockBatches), a
  plain loop: forward, backward, gradient clipping, torch's fused AdamW over the same parameter groups and LR
  schedule. Under a bf16 ds_config the model runs in bf16 with an fp32 master copy of the weights, as DeepSpeed's
  bf16 optimizer keeps. No DeepSpeed engine, no telemetry, no logging.

Every arm's step time is the median over its steps after --skip, then the median over rounds. The ratio is launcher
tokens/s / bare tokens/s (1.0 = no overhead). Step 1's loss of each arm is printed too: the
arms train the same model from the same start, so they must agree.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.throughput import train_run

REPO = Path(__file__).resolve().parent.parent
PHASES = ("data", "forward", "backward", "step")


def resolved_for(recipe: str, ds_config: str, overrides: list[str]):
    from moe.config import load_resolved

    return load_resolved(recipe, ds_config, ["moe.ep_size=1", *overrides], world_size=1, cuda=False)


def bare_loop(recipe: str, ds_config: str, overrides: list[str], steps: int) -> dict:
    """Train with no DeepSpeed engine; per-step phase times (s) and losses."""
    from moe.data import BlockBatches, prepare_data
    from moe.launch.threads import pin_rank_threads
    from moe.model import build_model, config_from_recipe
    from moe.train.model_spec import padded_vocab
    from moe.train.optim import param_groups
    from moe.train.schedule import build_scheduler
    from moe.train.trainer import seed_everything

    threads = pin_rank_threads()
    resolved = resolved_for(recipe, ds_config, overrides)
    r, ds = resolved.recipe, resolved.ds_config
    data = prepare_data(r.data)
    model = build_model(config_from_recipe(r, vocab_size=padded_vocab(data.tokenizer)), seed=r.train.seed, ep_rank=0)
    bf16 = resolved.precision == "bf16"
    model = model.to(torch.bfloat16 if bf16 else torch.float32)
    groups = param_groups(model, ds["optimizer"]["params"]["weight_decay"])
    if bf16:  # fp32 master weights: the optimizer updates them, the bf16 model gets a copy after each step
        master = {p: p.detach().float().requires_grad_() for g in groups for p in g["params"]}
        groups = [{**g, "params": [master[p] for p in g["params"]]} for g in groups]
    params = [p for g in groups for p in g["params"]]
    hp = ds["optimizer"]["params"]
    optimizer = torch.optim.AdamW(groups, lr=hp["lr"], betas=tuple(hp["betas"]), eps=hp["eps"], fused=True)
    scheduler = build_scheduler(optimizer, r.train)
    seed_everything(r.train.seed)
    batches = BlockBatches(data.train, r.train.micro_batch_size, 0, 1, r.train.seed)
    clip, samples = ds.get("gradient_clipping", 0.0), 0
    times, losses = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        ids = batches.at_sample(samples)  # (B, T)
        samples += ds["train_batch_size"]
        t1 = time.perf_counter()
        loss = model(ids, labels=ids).loss
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        if bf16:
            for p, m in master.items():
                m.grad = p.grad.float()
                p.grad = None
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if bf16:
            with torch.no_grad():
                for p, m in master.items():
                    p.copy_(m)
        else:
            model.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        t4 = time.perf_counter()
        times.append({"data": t1 - t0, "forward": t2 - t1, "backward": t3 - t2, "step": t4 - t3, "wall": t4 - t0})
    return {"threads": threads, "times": times, "losses": losses, "tokens_per_step": resolved.global_batch_tokens}


def trainer_phases(recipe: str, ds_config: str, overrides: list[str], steps: int) -> dict:
    """Our Trainer in this process, its fit() timed by phase."""
    from benchmarks.profile_step import build_trainer
    from moe.launch.threads import pin_rank_threads

    threads = pin_rank_threads()
    step_times: list[dict] = []

    def timed(name, fn):
        def wrapped(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                step_times[-1][name] = step_times[-1].get(name, 0.0) + time.perf_counter() - start

        return wrapped

    with tempfile.TemporaryDirectory() as runs_dir:
        trainer = build_trainer(recipe, ds_config, [f"train.max_steps={steps}", *overrides], runs_dir, wrap=timed)
        train_step, losses = trainer.train_step, []

        def step_and_time():
            step_times.append({"start": time.perf_counter()})
            record = train_step()
            step_times[-1]["train_step"] = time.perf_counter() - step_times[-1]["start"]
            losses.append(record["loss"])
            return record

        trainer.train_step = step_and_time
        trainer.validate = lambda: 0.0  # fit validates at the last step: not part of a step
        trainer.save = lambda: None
        trainer.fit()
    times = []
    for now, following in itertools.pairwise(step_times):
        t = {k: now.get(k, 0.0) for k in PHASES}
        t["rest_of_train_step"] = now["train_step"] - sum(t.values())
        t["between_steps"] = following["start"] - now["start"] - now["train_step"]
        t["wall"] = following["start"] - now["start"]
        times.append(t)
    return {"threads": threads, "times": times, "losses": losses}


def in_subprocess(kind: str, args) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.overhead", "--worker", kind, "--recipe", args.recipe,
           "--ds_config", args.ds_config, "--steps", str(args.steps), *args.overrides]  # fmt: skip
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def launcher_arm(args, runs_dir: Path, round_: int) -> dict:
    run = train_run(args.recipe, args.ds_config, args.steps, 1, ["moe.ep_size=1", *args.overrides], runs_dir,
                    run_name=f"overhead_{round_}")  # fmt: skip
    steps = [r for r in run.records if "tokens_per_s" in r]
    timed = steps[args.skip :]
    wall = statistics.median(b["time"] - a["time"] for a, b in itertools.pairwise(timed))  # s, all included
    return {"wall": wall, "step_time_s": statistics.median(r["step_time_s"] for r in timed), "loss_1": steps[0]["loss"]}


def median_phases(runs: list[dict], skip: int) -> dict:
    """Per phase, the median over rounds of each round's median over its steps after `skip` (s)."""
    keys = runs[0]["times"][0].keys()
    per_round = [{k: statistics.median(t[k] for t in r["times"][skip:]) for k in keys} for r in runs]
    return {k: statistics.median(r[k] for r in per_round) for k in keys}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="recipes/default.yaml")
    p.add_argument("--ds_config", default=None, help="default: the launcher's default ds_config")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--skip", type=int, default=5, help="warm-up steps left out")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--worker", choices=("bare", "trainer"), default=None, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="recipe/ds overrides for every arm")
    args = p.parse_args(argv)
    if args.ds_config is None:
        from moe.config.args import DEFAULT_DS_CONFIG

        args.ds_config = DEFAULT_DS_CONFIG
    if not args.worker:  # a short run's schedule: warm-up over the untimed steps (it must end before max_steps)
        args.overrides = [f"train.warmup_steps={args.skip}", *args.overrides]
    if args.worker:
        work = bare_loop if args.worker == "bare" else trainer_phases
        print(json.dumps(work(args.recipe, args.ds_config, args.overrides, args.steps)))
        return {}
    launcher, trainer, bare = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            launcher.append(launcher_arm(args, Path(tmp), round_))
            trainer.append(in_subprocess("trainer", args))
            bare.append(in_subprocess("bare", args))
    tokens = bare[0]["tokens_per_step"]
    launcher_s = statistics.median(r["wall"] for r in launcher)
    trainer_t, bare_t = median_phases(trainer, args.skip), median_phases(bare, args.skip)
    result = {
        "recipe": args.recipe,
        "ds_config": args.ds_config,
        "overrides": args.overrides,
        "steps": args.steps,
        "skip": args.skip,
        "rounds": args.rounds,
        "threads": bare[0]["threads"],
        "tokens_per_step": tokens,
        "launcher_tokens_per_s": tokens / launcher_s,
        "trainer_tokens_per_s": tokens / trainer_t["wall"],
        "bare_tokens_per_s": tokens / bare_t["wall"],
        "ratio": bare_t["wall"] / launcher_s,
        "trainer_ms": {k: v * 1e3 for k, v in trainer_t.items()},
        "bare_ms": {k: v * 1e3 for k, v in bare_t.items()},
        "loss_step1": {
            "launcher": launcher[0]["loss_1"],
            "trainer": trainer[0]["losses"][0],
            "bare": bare[0]["losses"][0],
        },
        "launcher_rounds": launcher,
        "trainer_wall_ms_rounds": [median_phases([t], args.skip)["wall"] * 1e3 for t in trainer],
    }
    print(f"{args.recipe} + {args.ds_config} {' '.join(args.overrides)}: {result['threads']} thread(s), 1 rank")
    print(f"  launcher {result['launcher_tokens_per_s']:8,.0f} tok/s   trainer (in-process) "
          f"{result['trainer_tokens_per_s']:8,.0f}   bare loop {result['bare_tokens_per_s']:8,.0f}   "
          f"ratio {result['ratio']:.3f}")  # fmt: skip
    print("  ms per step      " + "  ".join(f"{k:>10}" for k in trainer_t))
    print("  trainer          " + "  ".join(f"{v * 1e3:10.1f}" for v in trainer_t.values()))
    print("  bare             " + "  ".join(f"{bare_t.get(k, 0.0) * 1e3:10.1f}" for k in trainer_t))
    print(f"  step-1 loss: {result['loss_step1']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
