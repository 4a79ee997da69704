"""Train a recipe for N steps through the real launcher and report tokens/s and MFU.

    python benchmarks/throughput.py                                  # default recipe, 2 CPU ranks, peak measured
    python benchmarks/throughput.py --recipe recipes/tiny.yaml --steps 40 --peak-tflops 989 model.d_model=1024

tokens/s is the global batch's tokens over the median step time after --skip warm-up steps, from
runs/<run>/metrics.jsonl (one median, so tokens/s and step time always agree). MFU is
    tokens/s x train FLOPs per token (moe/model/cost.py) / (peak FLOP/s per rank x ranks).
The peak is --peak-tflops (per rank: a GPU's dense bf16 peak, say) or, without it, the one the run's rank 0 measured
at start-up in the run's matmul dtype with its own threads (runs/<run>/device_peaks.json, moe/train/throughput.py),
so the trainer's logged MFU and this one agree. --json writes the numbers to a file.

`train_run` (one launcher run, its metrics and resolved config) and `measure` (the numbers above) are also used by
benchmarks/gpu_mfu.py; `read_run` (what a run folder holds) by benchmarks/sweep_parallel.py.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from moe.model import MoEGPTConfig
from moe.model.cost import ModelCost, hf_model_cost, model_cost

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Run:
    """What one launcher run left in runs/<run>/: its metrics lines and the resolved configs."""

    records: list[dict]  # metrics.jsonl, one dict per line (steps and validations)
    model_config: object  # MoEGPTConfig (our GPT) or the HF family's config (AutoEP)
    model_config_dict: dict  # model_config/config.json as written by the trainer
    recipe: dict  # the resolved recipe.yaml
    ds_config: dict  # the resolved ds_config.json
    wall_s: float  # launcher start to the last step's metrics line (or to exit)
    command: list[str]  # the launcher command line
    device_peaks: dict  # device_peaks.json: the peak the trainer's MFU is against and every peak it measured

    @property
    def seq_len(self) -> int:
        return self.recipe["data"]["seq_len"]

    @property
    def cost(self) -> ModelCost:
        return run_cost(self.model_config, self.seq_len)


def run_cost(config, seq_len: int) -> ModelCost:
    return model_cost(config, seq_len) if isinstance(config, MoEGPTConfig) else hf_model_cost(config, seq_len)


def load_model_config(folder: Path):
    """The trainer's model_config/: our MoEGPTConfig, or an HF family's config (moe.impl=autoep)."""
    if json.loads((folder / "config.json").read_text())["model_type"] == MoEGPTConfig.model_type:
        return MoEGPTConfig.from_pretrained(folder)
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(folder)


def _last_step_logged(metrics: Path, steps: int) -> bool:
    """Whether metrics.jsonl holds step `steps`'s training line (each line is written whole, with its newline)."""
    if not metrics.is_file():
        return False
    records = [json.loads(line) for line in metrics.read_text().splitlines()[-4:] if line.endswith("}")]
    return any(r.get("step") == steps and "tokens_per_s" in r for r in records)


def _stop(proc: subprocess.Popen) -> None:
    """End the launcher and every rank it started: they share the process group started for it."""
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            pass


def train_run(
    recipe: str,
    ds_config: str,
    steps: int,
    ranks: int,
    overrides: list[str],
    runs_dir: Path,
    run_name: str = "throughput",
    log_path: Path | None = None,
    stop_after_last_step: bool = False,
    timeout_s: float | None = None,
    master_port: int | None = None,
    cpus: str | None = None,
) -> Run:
    """Train `recipe` for `steps` steps through `bash launch/pretrain_moe.sh` and read back what it wrote.

    stop_after_last_step: end the job once the last step's metrics line is written. The trainer always validates
    and checkpoints at its last step; a benchmark needs neither (a 2.8B-parameter model's checkpoint with Adam
    states is ~40 GB). log_path: the job's stdout and stderr go there instead of this process's.
    cpus: run the job under `taskset -c cpus` (its ranks split those cores, moe/launch/threads.py).
    Raises RuntimeError when the job fails, TimeoutError when it runs past timeout_s before its last step.
    """
    port = ["--master_port", str(master_port)] if master_port else []
    cmd = [
        *(["taskset", "-c", cpus] if cpus else []),
        "bash",
        str(REPO / "launch/pretrain_moe.sh"),
        "--num_gpus",
        str(ranks),
        *port,
        "--recipe",
        recipe,
        "--ds_config",
        ds_config,
        f"train.max_steps={steps}",
        "train.eval_interval=0",
        "train.save_interval=0",
        f"logging.runs_dir={runs_dir}",
        f"logging.run_name={run_name}",
        "logging.wandb=false",
        "logging.progress_bar=false",
        *overrides,
    ]
    run_dir, start = Path(runs_dir) / run_name, time.perf_counter()
    log = open(log_path, "w") if log_path else None  # noqa: SIM115 (closed after the job, below)
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT if log else None, start_new_session=True
    )
    stopped = False
    try:
        while proc.poll() is None:
            if stop_after_last_step and _last_step_logged(run_dir / "metrics.jsonl", steps):
                stopped = True
                break
            if timeout_s and time.perf_counter() - start > timeout_s:
                raise TimeoutError(f"{recipe}: no step {steps} after {timeout_s:.0f} s")
            time.sleep(0.5)
        wall_s = time.perf_counter() - start
        if not stopped and proc.returncode != 0:
            tail = Path(log_path).read_text()[-3000:] if log_path else ""
            raise RuntimeError(f"{recipe}: the launcher exited with {proc.returncode}\n{tail}")
    finally:
        if proc.poll() is None:
            _stop(proc)
        if log:
            log.close()
    return read_run(run_dir, wall_s, cmd)


def read_run(run_dir: Path, wall_s: float, command: list[str]) -> Run:
    """What a finished (or stopped) launcher run left in `run_dir`."""
    config_dir = run_dir / "model_config"
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return Run(
        records=[json.loads(line) for line in lines if line.endswith("}")],  # a stopped job's last may be cut
        model_config=load_model_config(config_dir),
        model_config_dict=json.loads((config_dir / "config.json").read_text()),
        recipe=yaml.safe_load((run_dir / "recipe.yaml").read_text()),
        ds_config=json.loads((run_dir / "ds_config.json").read_text()),
        wall_s=wall_s,
        command=command,
        device_peaks=json.loads(peaks.read_text()) if (peaks := run_dir / "device_peaks.json").is_file() else {},
    )


def measure(run: Run, skip: int, ranks: int, peak_tflops: float) -> dict:
    """tokens/s, step time, TFLOP/s and MFU of `run` from the median step time after `skip` warm-up steps."""
    steps = [r for r in run.records if "tokens_per_s" in r][skip:]
    step_time_s = statistics.median(r["step_time_s"] for r in steps)
    cost = run.cost
    tokens_per_s = run.ds_config["train_batch_size"] * run.seq_len / step_time_s
    achieved_tflops = tokens_per_s * cost.train_flops_per_token() / 1e12
    return {
        "steps_timed": len(steps),
        "global_batch": run.ds_config["train_batch_size"],
        "seq_len": run.seq_len,
        "total_params": cost.total_params,
        "active_params": cost.active_params,
        "train_flops_per_token": cost.train_flops_per_token(),
        "tokens_per_s": tokens_per_s,
        "step_time_s": step_time_s,
        "achieved_tflops": achieved_tflops,
        "peak_tflops_per_rank": peak_tflops,
        "mfu": achieved_tflops / (peak_tflops * ranks),
    }


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
        run = train_run(args.recipe, args.ds_config, args.steps, ranks, args.overrides, Path(runs))
    threads = int(os.environ.get("OMP_NUM_THREADS", 0)) or max(1, len(os.sched_getaffinity(0)) // ranks)
    peak = args.peak_tflops or run.device_peaks["mfu_peak_tflops"]
    numbers = measure(run, args.skip, ranks, peak)
    result = {
        "recipe": args.recipe,
        "ds_config": args.ds_config,
        "overrides": args.overrides,
        "ranks": ranks,
        "device": torch.cuda.get_device_name() if cuda else f"cpu x{threads} threads/rank",
        **numbers,
        "peak_source": "given" if args.peak_tflops else run.device_peaks["source"],
        "measured_peaks_tflops": run.device_peaks.get("measured_tflops", {}),
    }
    print(
        f"{args.recipe} on {ranks} rank(s), {result['device']}: {result['tokens_per_s']:,.0f} tokens/s, "
        f"step {result['step_time_s'] * 1e3:.1f} ms, {result['active_params'] / 1e6:.2f}M active / "
        f"{result['total_params'] / 1e6:.2f}M total params, {result['achieved_tflops'] * 1e3:.2f} GFLOP/s, "
        f"MFU {result['mfu']:.1%} of {peak:.3f} TFLOP/s/rank ({result['peak_source']})"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
