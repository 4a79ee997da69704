"""Throughput telemetry per step: tokens/s, achieved TFLOP/s per device, MFU, memory, and DeepSpeed's time split.

- FLOPs per token come from moe/model/cost.py: 6 x the matmul parameters one token passes through (its top_k experts,
  the router, the LM head) plus causal attention, counted once per layer; capacity padding and dropped tokens are not
  counted, and the expert interval is respected (only MoE layers have experts).
- MFU = achieved FLOP/s per device / the device's peak: `logging.peak_tflops` if the recipe gives it, else the
  dense bf16 peak of a known GPU (PEAK_BF16_TFLOPS), else (CPU) a matmul measured once at start-up with the threads
  a rank has.
- Memory: allocated and peak on a GPU (torch.cuda), resident set size now and at peak on CPU (/proc, getrusage).
- Time split: DeepSpeed's own wall-clock timers (forward, backward, gradient all-reduce, optimizer step, and the MoE
  layers' forward all-to-alls, summed over the step's micro-batches), read after each step when the ds_config sets
  `"wall_clock_breakdown": true`. They synchronize the device, so they are off by default.
"""

from __future__ import annotations

import resource
import time

import torch

# Dense bf16 tensor-core peak TFLOP/s (vendor datasheets, SXM parts, no sparsity), matched on the device name
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "A10G": 70.0, "V100": 125.0}
DEEPSPEED_TIMERS = {
    "fwd": "time_forward_ms",
    "bwd": "time_backward_ms",
    "bwd_allreduce": "time_grad_allreduce_ms",
    "step": "time_optimizer_ms",
}


def measure_peak_tflops(threads: int, cuda: bool, size: int = 2048, repeats: int = 10, batch: int = 1) -> float:
    """Best dense (size x size) matmul TFLOP/s of one rank: bf16 on a GPU, fp32 on `threads` CPU threads. Each of
    the `repeats` timings (after 2 untimed warm-ups) runs `batch` matmuls back to back between synchronizations."""
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))  # (size, size)
    out = torch.empty(size, size, device=device, dtype=dtype)
    best = float("inf")
    for i in range(repeats + 2):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(batch):
            torch.matmul(a, b, out=out)
        if cuda:
            torch.cuda.synchronize()
        if i >= 2:
            best = min(best, (time.perf_counter() - start) / batch)
    torch.set_num_threads(previous)
    return 2 * size**3 / best / 1e12


def device_peak_tflops(given: float | None) -> tuple[float, str]:
    """(peak TFLOP/s of one device, where it came from)."""
    if given:
        return given, "logging.peak_tflops"
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, peak in PEAK_BF16_TFLOPS.items():
            if key in name:
                return peak, f"{key} datasheet bf16"
        return measure_peak_tflops(1, cuda=True), f"measured bf16 matmul on {name}"
    return measure_peak_tflops(torch.get_num_threads(), cuda=False, size=1024), "measured fp32 matmul, CPU"


def train_flops_per_token(model_config, seq_len: int) -> float:
    """Training FLOPs per token of our GPT or of an AutoEP HF family (moe/model/cost.py)."""
    from moe.model import MoEGPTConfig
    from moe.model.cost import hf_model_cost, model_cost

    cost = (
        model_cost(model_config, seq_len)
        if isinstance(model_config, MoEGPTConfig)
        else hf_model_cost(model_config, seq_len)
    )
    return cost.train_flops_per_token()


def memory_gb() -> dict:
    if torch.cuda.is_available():
        return {
            "mem_allocated_gb": torch.cuda.memory_allocated() / 2**30,
            "mem_peak_gb": torch.cuda.max_memory_allocated() / 2**30,
        }
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return {
        "rss_gb": resident_pages * resource.getpagesize() / 2**30,
        "rss_peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }  # ru_maxrss is in KiB


class ThroughputMeter:
    """The numbers one step adds to its metrics record (rank 0's view; every rank runs the same step)."""

    def __init__(
        self, model_config, seq_len: int, global_batch_tokens: int, world_size: int, peak_tflops: float | None
    ):
        self.flops_per_token = train_flops_per_token(model_config, seq_len)
        self.global_batch_tokens, self.world_size = global_batch_tokens, world_size
        self.peak_tflops, self.peak_source = device_peak_tflops(peak_tflops)
        self.alltoall_total_ms = 0.0

    def record(self, engine, step_time_s: float) -> dict:
        tflops = self.global_batch_tokens / step_time_s * self.flops_per_token / self.world_size / 1e12
        out = {"tflops_per_device": tflops, "mfu": tflops / self.peak_tflops, **memory_gb()}
        if engine.wall_clock_breakdown():
            timers = engine.get_wall_clock_timers()  # ms, this step's global timers (DeepSpeed's names)
            out.update({ours: timers[theirs] for theirs, ours in DEEPSPEED_TIMERS.items() if theirs in timers})
            total = alltoall_total_ms(engine)
            if total is not None:  # MOELayer's timers keep running totals: this step's share is the difference
                out["time_alltoall_fwd_ms"] = total - self.alltoall_total_ms
                self.alltoall_total_ms = total
        return out

    def forget_work_between_steps(self, engine) -> None:
        """Drop what the timers counted since the last step outside any step: DeepSpeed times every engine forward,
        validation's too, and resets its forward timer only at the next step's end, so the step after a
        validation would report the validation's forward passes (and all-to-alls) as its own."""
        if engine.wall_clock_breakdown():
            for name in engine.engine_timers.forward_timers:
                engine.timers(name).reset()
            self.alltoall_total_ms = alltoall_total_ms(engine) or 0.0


def alltoall_total_ms(engine) -> float | None:
    """The running total of DeepSpeed MOELayer's dispatch and combine all-to-all timers; None without such layers."""
    moe_layers = [m for m in engine.module.modules() if hasattr(m, "time_falltoall")]
    return sum(m.time_falltoall + m.time_salltoall for m in moe_layers) if moe_layers else None
