"""Train a recipe for N steps through the real launcher and report tokens/s and MFU.

    python benchmarks/throughput.py                                  # default recipe, 2 CPU ranks, peak measured
    python benchmarks/throughput.py --recipe recipes/tiny.yaml --steps 40 --peak-tflops 989 model.d_model=1024

tokens/s is the global batch's tokens over the median step time after --skip warm-up steps, from
runs/<run>/metrics.jsonl (one median, so tokens/s and step time always agree). MFU is
    tokens/s x train FLOPs per token (moe/cost.py) / (peak FLOP/s per rank x ranks).
The peak is --peak-tflops (per rank: a GPU's dense bf16 peak, say) or, without it, a matmul measured here with
the threads one rank gets. --json writes the numbers to a file.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from moe.cost import model_cost  # noqa: E402
from moe.model import MoEGPTConfig  # noqa: E402
from moe.train.throughput import measure_peak_tflops  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="recipes/default.yaml")
    p.add_argument("--ds_config", default="ds_configs/zero1.json")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--skip", type=int, default=5, help="warm-up steps left out of the median")
    p.add_argument("--num_gpus", type=int, default=None, help="ranks per node (default: GPUs, or 2 on CPU)")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak TFLOP/s of one rank; measured if absent")
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    p.add_argument("overrides", nargs="*", help="recipe/ds overrides passed to the trainer")
    args = p.parse_args(argv)

    import torch
    cuda = torch.cuda.is_available()
    ranks = args.num_gpus or (torch.cuda.device_count() if cuda else 2)
    with tempfile.TemporaryDirectory() as runs:
        cmd = ["bash", str(REPO / "launch/pretrain_moe.sh"), "--num_gpus", str(ranks), "--recipe", args.recipe,
               "--ds_config", args.ds_config, f"train.max_steps={args.steps}", "train.eval_interval=0",
               "train.save_interval=0", f"logging.runs_dir={runs}", "logging.run_name=throughput",
               "logging.wandb=false", "logging.progress_bar=false", *args.overrides]
        subprocess.run(cmd, cwd=REPO, check=True)
        run_dir = Path(runs) / "throughput"
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        config = MoEGPTConfig.from_pretrained(run_dir / "model_config")
        resolved_ds = json.loads((run_dir / "ds_config.json").read_text())
    steps = [r for r in records if "tokens_per_s" in r][args.skip:]
    step_time_s = statistics.median(r["step_time_s"] for r in steps)
    seq_len = config.max_seq_len
    tokens_per_s = resolved_ds["train_batch_size"] * seq_len / step_time_s
    cost = model_cost(config, seq_len)
    threads = int(os.environ.get("OMP_NUM_THREADS", 0)) or max(1, (os.cpu_count() or 1) // ranks)
    peak = args.peak_tflops or measure_peak_tflops(threads, cuda)
    achieved_tflops = tokens_per_s * cost.train_flops_per_token() / 1e12
    result = {
        "recipe": args.recipe, "ds_config": args.ds_config, "overrides": args.overrides, "ranks": ranks,
        "device": torch.cuda.get_device_name() if cuda else f"cpu x{threads} threads/rank",
        "steps_timed": len(steps), "global_batch": resolved_ds["train_batch_size"], "seq_len": seq_len,
        "total_params": cost.total_params, "active_params": cost.active_params,
        "train_flops_per_token": cost.train_flops_per_token(),
        "tokens_per_s": tokens_per_s, "step_time_s": step_time_s,
        "achieved_tflops": achieved_tflops, "peak_tflops_per_rank": peak,
        "peak_source": "given" if args.peak_tflops else "measured matmul", "mfu": achieved_tflops / (peak * ranks),
    }
    print(f"{args.recipe} on {ranks} rank(s), {result['device']}: {tokens_per_s:,.0f} tokens/s, "
          f"step {result['step_time_s'] * 1e3:.1f} ms, {cost.active_params / 1e6:.2f}M active / "
          f"{cost.total_params / 1e6:.2f}M total params, {achieved_tflops * 1e3:.2f} GFLOP/s, "
          f"MFU {result['mfu']:.1%} of {peak:.3f} TFLOP/s/rank ({result['peak_source']})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
