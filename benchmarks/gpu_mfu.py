"""One call on one GPU: the device's measured bf16 matmul peak, the MFU of every recipes/gpu/ recipe trained
through the real launcher, and the MoE layer benchmark at the MoE recipes' layer shape.

    python benchmarks/gpu_mfu.py --json $OUT/gpu_mfu.json --logs $OUT/logs    # one H100/H200, ~7 min (below)
    python benchmarks/gpu_mfu.py --smoke                                       # CPU, shrunk models, ~1.5 min
    python benchmarks/gpu_mfu.py --only moe_1b_8x_top2 --steps 30 moe.aux_loss_coef=0   # extra dotted overrides

Stages, in order; the JSON is rewritten after each, so a call cut short still leaves one:
1. peak: the best dense matmul TFLOP/s of one rank: bf16 on CUDA (square sizes 4096, 8192, 16384; back-to-back
   batches between synchronizations, best of --trials), on CPU too, with the threads one rank has. Every MFU here
   is against it: the runs get it as logging.peak_tflops. On a GPU listed in
   moe.train.throughput.PEAK_BF16_TFLOPS, MFU against the datasheet peak is reported too.
2. prepare: the data cache (byte-level BPE of 32000 on the stdlib corpus and 2048-token blocks, once; content keyed,
   $MOE_CACHE) and on CUDA DeepSpeed's FusedAdam JIT build (once), so that neither lands in a run's time.
3. moe layer: benchmarks/moe_layer.py at the first MoE recipe's layer shape (micro-batch x seq_len tokens,
   d_model, expert d_ff, experts, top-k) on this device; each implementation's median time / DeepSpeed native's.
4. runs: each recipe via `bash launch/pretrain_moe.sh --num_gpus N` at the layout of its `# plan:` header
   line, --warmup + --steps steps with ds.wall_clock_breakdown=true. tokens/s and MFU come from the median timed
   step (benchmarks/throughput.py: tokens/s x train FLOPs per token of moe/model/cost.py / (peak x ranks)), the step
   split from the medians of DeepSpeed's timers, peak memory from mem_peak_gb (GPU) or rss_peak_gb (CPU). The job
   is stopped after its last step's metrics line: the trainer's final validation and checkpoint (~40 GB for the
   2.8B-parameter MoE) are not benchmarked.

The layer benchmark runs before the runs because it takes seconds: --time-budget-s (default 480 on a GPU, counted
from the start of this process) then only ever cuts runs. A run that would not end in time is skipped ("skipped" in the
JSON), one that overruns is stopped ("timeout"), so one 10-minute device call always returns a JSON.
--smoke shrinks every model by dotted overrides (SMOKE) and trains bf16 on ds_configs/zero1_bf16.json.
Exit code 1 when a run failed or timed out or the layer benchmark failed (a skipped run is not a failure).
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # the time budget counts from here, before the slow imports

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

import torch

from benchmarks.throughput import measure, train_run
from moe.parallel import free_port
from moe.plan.stated_layout import stated_layout
from moe.train.throughput import PEAK_BF16_TFLOPS, measure_peak_tflops

RECIPES = sorted((REPO / "recipes" / "gpu").glob("*.yaml"))
SMOKE = [
    "model.d_model=64",
    "model.n_layers=2",
    "model.n_heads=4",
    "model.n_kv_heads=2",
    "model.d_ff=128",
    "moe.expert_d_ff=64",
    "model.max_seq_len=64",
    "data.seq_len=64",
    "data.vocab_size=512",
    "data.max_documents=600",
    "data.val_fraction=0.1",
]
SMOKE_DS_CONFIG = "ds_configs/zero1_bf16.json"  # bf16 as on a GPU: on CPU too it is the faster dtype
SPLIT = {
    "forward": "time_forward_ms",
    "backward": "time_backward_ms",
    "grad_allreduce": "time_grad_allreduce_ms",
    "optimizer": "time_optimizer_ms",
    "alltoall_fwd": "time_alltoall_fwd_ms",
}
JSON_RESERVE_S = 15  # kept from the budget for stopping a run and writing the JSON
DEFAULT_BUDGET_S = 480.0  # on a GPU: 8 minutes from the start of this process, inside a 10-minute device call


def matmul_peak(cuda: bool, threads: int, sizes: tuple[int, ...], trials: int) -> dict:
    """Best dense bf16 matmul TFLOP/s of one rank, per size and overall (on `threads` threads on CPU)."""
    dtype = torch.bfloat16
    by_size = {}
    for n in sizes:  # on CUDA ~5 ms of back-to-back matmuls per timing on an H100
        batch = max(1, 8192**3 // n**3 * 4) if cuda else 1
        by_size[str(n)] = measure_peak_tflops(threads, cuda, size=n, repeats=trials, batch=batch, dtype=dtype)
    if cuda:
        torch.cuda.empty_cache()
    return {
        "measured_tflops": max(by_size.values()),
        "by_size": by_size,
        "dtype": str(dtype).removeprefix("torch."),
        "trials": trials,
        "threads": None if cuda else threads,
    }


def datasheet_peak(cuda: bool) -> tuple[str | None, float | None]:
    if cuda:
        name = torch.cuda.get_device_name()
        for key, peak in PEAK_BF16_TFLOPS.items():
            if key in name:
                return key, peak
    return None, None


def resolve_recipe(recipe: Path, ds_config: str, overrides: list[str], ranks: int, cuda: bool):
    """The run's resolved config, exactly as the launcher's preflight resolves it (fails early on bad input)."""
    from moe.config import load_resolved

    return load_resolved(recipe, REPO / ds_config, overrides, ranks, cuda=cuda)


def path_label(recipe) -> str:
    if not recipe.moe.enabled:
        return "dense GPT"
    return "deepspeed.moe native" if recipe.moe.impl == "deepspeed" else f"AutoEP {recipe.model.family}"


def prepare(plans: list[dict], cuda: bool) -> dict:
    """Build the data caches the runs will read, and FusedAdam on CUDA; seconds each."""
    from moe.data import prepare_data

    out, configs = {}, {}
    for plan in plans:
        configs[repr(plan["resolved"].recipe.data)] = plan["resolved"].recipe.data
    start = time.perf_counter()
    for data in configs.values():
        prepare_data(data)
    out["data_s"] = time.perf_counter() - start
    if cuda:
        from deepspeed.ops.op_builder import FusedAdamBuilder

        start = time.perf_counter()
        FusedAdamBuilder().load()
        out["fused_adam_build_s"] = time.perf_counter() - start
    return out


def layer_benchmark(plan: dict, cuda: bool, threads: int, smoke: bool, json_path: Path) -> dict:
    """benchmarks/moe_layer.py at `plan`'s MoE layer shape; each implementation's time relative to native."""
    from benchmarks.moe_layer import main as moe_layer_main

    r, ds = plan["resolved"].recipe, plan["resolved"].ds_config
    argv = [
        "--device",
        "cuda" if cuda else "cpu",
        "--dtype",
        "bfloat16",
        "--tokens",
        str(ds["train_micro_batch_size_per_gpu"] * r.data.seq_len),
        "--d-model",
        str(r.model.d_model),
        "--d-ff",
        str(r.moe.expert_d_ff or r.model.d_ff),
        "--experts",
        str(r.moe.num_experts),
        "--top-k",
        str(r.moe.top_k),
        "--iters",
        "3" if smoke else "10",
        "--warmup",
        "1" if smoke else "3",
        "--json",
        str(json_path),
    ]
    if not cuda:
        argv += ["--threads", str(threads)]
    result = moe_layer_main(argv)
    if cuda:
        torch.cuda.empty_cache()
    rows = [{k: v for k, v in row.items() if k != "iter_s"} for row in result["rows"]]
    return {
        "recipe": plan["name"],
        "argv": argv,
        "status": "ok",
        "autoep_expert_path": result["autoep_expert_path"],
        "ratios_to_native": {row["implementation"]: row["ratio_to_native"] for row in rows},
        "rows": rows,
        "check": result["check"],
    }


def run_one(
    plan: dict, args, peak: dict, datasheet: float | None, runs_dir: Path, logs: Path, timeout_s: float | None
) -> dict:
    steps = args.warmup + args.steps
    run = train_run(
        str(plan["recipe"].relative_to(REPO)),
        plan["ds_config"],
        steps,
        plan["ranks"],
        plan["overrides"],
        runs_dir,
        run_name=plan["name"],
        log_path=logs / f"{plan['name']}.log",
        stop_after_last_step=True,
        timeout_s=timeout_s,
        master_port=free_port(),
    )
    numbers = measure(run, args.warmup, plan["ranks"], peak["measured_tflops"])
    timed = [r for r in run.records if "tokens_per_s" in r][args.warmup :]
    split = {
        k: statistics.median(r[m] for r in timed) if all(m in r for r in timed) else None for k, m in SPLIT.items()
    }
    memory_key = "mem_peak_gb" if "mem_peak_gb" in timed[-1] else "rss_peak_gb"
    per_device = numbers["achieved_tflops"] / plan["ranks"]
    return {
        **numbers,
        "tflops_per_device": per_device,
        "mfu_datasheet": per_device / datasheet if datasheet else None,
        "peak_memory_gb": max(r[memory_key] for r in run.records if memory_key in r),
        "memory_metric": memory_key,
        "split_ms": split,
        "step_times_s": [r["step_time_s"] for r in timed],
        "trainer_mfu_median": statistics.median(r["mfu"] for r in timed),
        "model_config": run.model_config_dict,
        "wall_s": run.wall_s,
        "command": " ".join(run.command),
    }


def first_line(text: str | None) -> str:
    return (text or "").strip().split("\n")[0]


def fmt_count(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def table(result: dict) -> str:
    head = (
        f"{'recipe':<24}{'path':<22}{'params tot/act':>16}{'tokens/s':>11}{'TFLOP/s':>9}{'MFU meas':>9}"
        f"{'MFU sheet':>10}{'mem GB':>8}{'fwd ms':>9}{'bwd ms':>9}{'allred ms':>10}{'optim ms':>9}{'a2a ms':>8}"
    )
    lines = [head]
    for r in result["runs"]:
        if r["status"] != "ok":
            lines.append(f"{r['name']:<24}{r['path']:<22}  {r['status']}: {first_line(r.get('error'))[:90]}")
            continue
        ms = [("-" if r["split_ms"][k] is None else f"{r['split_ms'][k]:.1f}") for k in SPLIT]
        sheet = "-" if r["mfu_datasheet"] is None else f"{r['mfu_datasheet']:.1%}"
        params = f"{fmt_count(r['total_params'])}/{fmt_count(r['active_params'])}"
        lines.append(
            f"{r['name']:<24}{r['path']:<22}{params:>16}{r['tokens_per_s']:>11,.0f}"
            f"{r['tflops_per_device']:>9.3f}{r['mfu']:>9.1%}{sheet:>10}{r['peak_memory_gb']:>8.2f}"
            f"{ms[0]:>9}{ms[1]:>9}{ms[2]:>10}{ms[3]:>9}{ms[4]:>8}"
        )
    layer = result.get("moe_layer") or {}
    if layer.get("status") == "ok":
        ratios = ", ".join(f"{k} {v:.2f}x" for k, v in layer["ratios_to_native"].items())
        lines.append(f"MoE layer ({layer['recipe']} shape), time vs deepspeed native: {ratios}")
    elif layer:
        lines.append(f"MoE layer: {layer['status']}: {first_line(layer.get('error'))[:100]}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="CPU-sized models, bf16, 3 timed steps")
    p.add_argument(
        "--only",
        action="append",
        default=None,
        choices=[r.stem for r in RECIPES],
        help="run only this recipe (repeatable)",
    )
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 15, smoke 3)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps left out (default 5, smoke 2)")
    p.add_argument(
        "--ds_config", default=None, help=f"for every run (default: the recipe's plan line; smoke: {SMOKE_DS_CONFIG})"
    )
    p.add_argument("--trials", type=int, default=None, help="timings per matmul size (default 10, smoke 5)")
    p.add_argument(
        "--time-budget-s",
        type=float,
        default=None,
        help=f"default {DEFAULT_BUDGET_S:.0f} on a GPU (from process start), none on CPU",
    )
    p.add_argument("--json", type=Path, default=None, help="default benchmarks/results/gpu_mfu_<device>.json")
    p.add_argument("--logs", type=Path, default=None, help="keep each run's launcher log here")
    p.add_argument("overrides", nargs="*", help="dotted recipe/ds overrides for every run")
    args = p.parse_args(argv)
    args.steps = args.steps or (3 if args.smoke else 15)
    args.warmup = args.warmup if args.warmup is not None else (2 if args.smoke else 5)
    args.trials = args.trials or (5 if args.smoke else 10)
    return args


def make_plans(args, cuda: bool) -> list[dict]:
    """Each recipe's run: its layout (the `# plan:` line), overrides, resolved config and planned peak memory."""
    from moe.plan import make_plan, parse_bytes

    plans = []
    for recipe in RECIPES:
        ranks, ds_config, layout_overrides = stated_layout(recipe)
        ds_config = args.ds_config or (SMOKE_DS_CONFIG if args.smoke else ds_config)
        overrides = [
            *layout_overrides,
            *(SMOKE if args.smoke else []),
            f"train.warmup_steps={args.warmup}",
            "ds.wall_clock_breakdown=true",
            *args.overrides,
        ]
        resolved = resolve_recipe(recipe, ds_config, overrides, ranks, cuda)
        plans.append(
            {
                "name": recipe.stem,
                "recipe": recipe,
                "ranks": ranks,
                "ds_config": ds_config,
                "overrides": overrides,
                "resolved": resolved,
                "path": path_label(resolved.recipe),
                "planned_peak_gb": make_plan(resolved, parse_bytes("80GB")).memory.peak / 1e9,
            }
        )
    return plans


def run_all(
    plans: list[dict],
    args,
    peak: dict,
    datasheet: float | None,
    cuda: bool,
    tmp: Path,
    t0: float,
    budget: float | None,
    save,
) -> list[dict]:
    """Train each plan in turn; a run that would not end within the budget is skipped, one that overruns stopped."""
    logs = args.logs or tmp / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    rows, walls = [], []
    for plan in plans:
        started = time.perf_counter()
        row = {
            "name": plan["name"],
            "recipe": str(plan["recipe"].relative_to(REPO)),
            "path": plan["path"],
            "ranks": plan["ranks"],
            "ds_config": plan["ds_config"],
            "overrides": plan["overrides"],
            "planned_peak_gb": plan["planned_peak_gb"],
        }
        left = budget - (started - t0) - JSON_RESERVE_S if budget else None
        guess = max([*walls, 90.0 if cuda else 30.0])
        if left is not None and left < guess:
            row.update(
                status="skipped", error=f"{left:.0f} s left of --time-budget-s {budget:.0f}, a run takes ~{guess:.0f} s"
            )
        else:
            try:
                row.update(status="ok", **run_one(plan, args, peak, datasheet, tmp / "runs", logs, left))
                walls.append(row["wall_s"])
            except TimeoutError as e:
                row.update(status="timeout", error=str(e))
            except Exception as e:  # recorded; the other recipes still run
                row.update(status="failed", error=str(e)[-3000:])
        rows.append(row)
        print(
            f"run {plan['name']}: {row['status']}"
            + (
                f", {row['tokens_per_s']:,.0f} tokens/s, MFU {row['mfu']:.1%}, {row['wall_s']:.0f} s"
                if row["status"] == "ok"
                else f": {row['error'][-500:]}"
            ),
            flush=True,
        )
        save(f"run {plan['name']}", started, rows)
    return rows


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    t0, cuda = STARTED, torch.cuda.is_available()
    budget = args.time_budget_s or (DEFAULT_BUDGET_S if cuda else None)
    import deepspeed
    import transformers

    plans = make_plans(args, cuda)
    ranks = max(p["ranks"] for p in plans)
    threads = int(os.environ.get("OMP_NUM_THREADS", 0)) or max(1, (os.cpu_count() or 1) // ranks)
    device = torch.cuda.get_device_name() if cuda else f"cpu ({os.cpu_count()} cores, {threads} threads/rank)"
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-") if cuda else "cpu" + ("-smoke" * args.smoke)
    out = args.json or REPO / "benchmarks" / "results" / f"gpu_mfu_{slug}.json"
    result = {
        "benchmark": "benchmarks/gpu_mfu.py",
        "smoke": args.smoke,
        "command": " ".join(["python benchmarks/gpu_mfu.py", *(sys.argv[1:] if argv is None else argv)]),
        "device": {"type": "cuda" if cuda else "cpu", "name": device, "threads_per_rank": threads},
        "versions": {
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "deepspeed": deepspeed.__version__,
            "transformers": transformers.__version__,
            "python": sys.version.split()[0],
        },
        "steps": {"warmup": args.warmup, "timed": args.steps},
        "time_budget_s": budget,
        "stage_s": {},
        "runs": [],
    }

    def save(stage: str, started: float, runs: list | None = None) -> None:  # after every stage
        if runs is not None:
            result["runs"] = runs
        result["stage_s"][stage] = time.perf_counter() - started
        result["total_s"] = time.perf_counter() - t0
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1, default=str) + "\n")

    started = time.perf_counter()
    sheet_name, sheet = datasheet_peak(cuda)
    sizes = (4096, 8192, 16384) if cuda else (512, 1024)
    result["peak"] = peak = {
        **matmul_peak(cuda, threads, sizes, args.trials),
        "datasheet_name": sheet_name,
        "datasheet_tflops": sheet,
    }
    print(
        f"peak: {peak['measured_tflops']:.3f} TFLOP/s {peak['dtype']} matmul on {device} (by size "
        f"{json.dumps({k: round(v, 3) for k, v in peak['by_size'].items()})}; datasheet {sheet})",
        flush=True,
    )
    for plan in plans:
        plan["overrides"].append(f"logging.peak_tflops={peak['measured_tflops']!r}")
    save("peak", started)

    chosen = [p for p in plans if not args.only or p["name"] in args.only]
    started = time.perf_counter()
    try:
        result["prepare"] = prepare(chosen, cuda)
    except Exception as e:  # the runs then build the data or the op themselves, or fail and say why
        result["prepare"] = {"error": str(e)[-3000:]}
    print(f"prepare: {json.dumps(result['prepare'])[:300]}", flush=True)
    save("prepare", started)

    moe_plan = next(p for p in plans if p["resolved"].recipe.moe.enabled)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        try:
            result["moe_layer"] = layer_benchmark(moe_plan, cuda, threads, args.smoke, Path(tmp) / "layer.json")
        except (Exception, SystemExit) as e:  # moe_layer.py exits when the implementations disagree
            result["moe_layer"] = {"recipe": moe_plan["name"], "status": "failed", "error": str(e)[-3000:]}
        save("moe_layer", started)
        run_all(chosen, args, peak, sheet, cuda, Path(tmp), t0, budget, save)
    print(table(result))
    print(f"wrote {out} ({result['total_s']:.0f} s)")
    return result


if __name__ == "__main__":
    from moe.config import ConfigError

    try:
        r = main()
    except ConfigError as e:  # a recipe, ds_config or override that cannot run: said before anything starts
        sys.exit(f"error: {e}")
    sys.exit(
        1 if any(x["status"] in ("failed", "timeout") for x in r["runs"]) or r["moe_layer"]["status"] != "ok" else 0
    )
