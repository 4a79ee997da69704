"""This CPU's dense matmul peaks per dtype, measured the way a rank measures them at start-up.

    python benchmarks/cpu_peaks.py                 # one thread (a rank of the 2-rank default job on 2 cores)
    python benchmarks/cpu_peaks.py --threads 2 --sizes 512 1024 2048

Per dtype (fp32, bf16) and square size: the best of --repeats timed matmuls (moe/train/throughput.py's
measure_peak_tflops, the function the trainer's MFU, benchmarks/throughput.py and clusters/cpu_2core.yaml use).
`peak_tflops` is the size the trainer measures at (1024). The JSON names the CPU and its matmul-relevant flags
(AMX, AVX512-BF16), since the same 2-core slot has been more than one CPU model.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from moe.train.throughput import MATMUL_DTYPES, measure_peak_tflops

REPO = Path(__file__).resolve().parent.parent
TRAINER_SIZE = 1024  # moe/train/throughput.py cpu_peaks


def cpu_model() -> tuple[str, list[str]]:
    name, flags = platform.processor() or "unknown", []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = sorted(f for f in value.split() if f.startswith(("amx", "avx512_bf16", "avx512f", "avx2")))
                break
    except OSError:
        pass
    return name, flags


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "cpu_peaks.json")
    args = p.parse_args(argv)
    name, flags = cpu_model()
    by_size = {
        precision: {
            str(n): measure_peak_tflops(args.threads, False, n, args.repeats, dtype=MATMUL_DTYPES[precision])
            for n in args.sizes
        }
        for precision in ("fp32", "bf16")
    }
    result = {
        "command": "python benchmarks/cpu_peaks.py " + " ".join(argv if argv is not None else []),
        "cpu": name,
        "flags": flags,
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": args.threads,
        "tflops_by_size": by_size,
        "peak_tflops": {precision: sizes.get(str(TRAINER_SIZE)) for precision, sizes in by_size.items()},
    }
    print(f"{name} ({', '.join(flags)}), {args.threads} thread(s), torch {torch.__version__}")
    for precision, sizes in by_size.items():
        print(f"  {precision}: " + "  ".join(f"{n}: {t * 1e3:,.0f} GFLOP/s" for n, t in sizes.items()))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
