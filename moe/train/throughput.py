"""Throughput telemetry per step: tokens/s, achieved TFLOP/s per device, MFU, memory, and DeepSpeed's time split.

- FLOPs per token come from moe/model/cost.py: 6 x the matmul parameters one token passes through (its top_k experts,
  the router, the LM head) plus causal attention, counted once per layer; capacity padding and dropped tokens are not
  counted, and the expert interval is respected (only MoE layers have experts).
- MFU = achieved FLOP/s per device / the device's peak *in the dtype the matmuls run in* (the run's precision:
  bf16, fp16 or fp32): `logging.peak_tflops` if the recipe gives it, else the dense bf16 peak of a known GPU
  (PEAK_BF16_TFLOPS) for a bf16/fp16 run, else a matmul measured once at start-up in that dtype with the threads the
  rank has. On CPU both the fp32 and the bf16 peak are measured (`device_peaks`): bf16 runs several times faster
  than fp32 where the CPU has AMX or AVX512-BF16, so an MFU against the fp32 peak overstates a bf16 run's.
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


MATMUL_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def measure_peak_tflops(
    threads: int, cuda: bool, size: int = 2048, repeats: int = 10, batch: int = 1, dtype: torch.dtype | None = None
) -> float:
    """Best dense (size x size) matmul TFLOP/s of one rank in `dtype` (default: bf16 on a GPU, fp32 on CPU), on
    `threads` CPU threads. Each of the `repeats` timings (after 2 untimed warm-ups) runs `batch` matmuls back to back
    between synchronizations."""
    device = "cuda" if cuda else "cpu"
    dtype = dtype or (torch.bfloat16 if cuda else torch.float32)
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


def cpu_peaks(threads: int, size: int = 1024, repeats: int = 6) -> dict[str, float]:
    """{precision: measured TFLOP/s} of a CPU rank on `threads` threads, fp32 and bf16 (about a second)."""
    return {p: measure_peak_tflops(threads, False, size, repeats, dtype=MATMUL_DTYPES[p]) for p in ("fp32", "bf16")}


def device_peak_tflops(given: float | None, precision: str = "fp32") -> tuple[float, str, dict[str, float]]:
    """(peak TFLOP/s of one device in `precision`'s matmul dtype, where it came from, every peak measured here)."""
    if given:
        return given, "logging.peak_tflops", {}
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        if precision in ("bf16", "fp16"):
            for key, peak in PEAK_BF16_TFLOPS.items():
                if key in name:
                    return peak, f"{key} datasheet {precision}", {}
        measured = measure_peak_tflops(1, cuda=True, dtype=MATMUL_DTYPES[precision])
        return measured, f"measured {precision} matmul on {name}", {precision: measured}
    threads = torch.get_num_threads()
    peaks = cpu_peaks(threads)
    if precision not in peaks:  # fp16 on CPU: no fast path to compare with; measure it too
        peaks[precision] = measure_peak_tflops(threads, False, 1024, 6, dtype=MATMUL_DTYPES[precision])
    return peaks[precision], f"measured {precision} matmul, CPU, {threads} thread(s)", peaks


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
        self,
        model_config,
        seq_len: int,
        global_batch_tokens: int,
        world_size: int,
        peak_tflops: float | None,
        precision: str = "fp32",
    ):
        self.flops_per_token = train_flops_per_token(model_config, seq_len)
        self.global_batch_tokens, self.world_size = global_batch_tokens, world_size
        self.peak_tflops, self.peak_source, self.measured_peaks = device_peak_tflops(peak_tflops, precision)
        self.alltoall_total_ms = 0.0

    def describe(self) -> dict:
        """What the run folder keeps: the peak MFU is against, its source, and every peak measured."""
        return {"mfu_peak_tflops": self.peak_tflops, "source": self.peak_source, "measured_tflops": self.measured_peaks}

    def slow_bf16_warning(self) -> str | None:
        """One line when a bf16 run's CPU multiplies bf16 slower than fp32 (no AMX or AVX512-BF16), else None."""
        peaks = self.measured_peaks
        if self.peak_source.startswith("measured bf16") and peaks.get("bf16", 1.0) < peaks.get("fp32", 0.0):
            return (
                f"bf16 matmuls run slower than fp32 on this CPU ({peaks['bf16']:.3f} against {peaks['fp32']:.3f} "
                "TFLOP/s per rank); `ds.bf16.enabled=false` (or --ds_config ds_configs/zero1.json) trains in fp32"
            )
        return None

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
