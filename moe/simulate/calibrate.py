"""Calibrate the simulator's one free constant, the achieved MFU, on published or measured throughput, and check it.

    python -m moe.simulate.calibrate            # DeepSpeed-MoE Table 3 (128 A100s) and our 2-rank CPU runs

A calibration set is two measured runs of one cluster. The MFU is fitted on the first so that the simulator gives
its measured throughput exactly (step = compute / MFU + communication, solved for MFU); the second run is then
predicted with that same MFU, and its relative error is the simulator's error on that cluster. Both directions
are printed; the cluster YAML keeps the MFU fitted on the first run.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from moe.simulate.cluster import load_cluster
from moe.simulate.predict import simulate

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Measured:
    name: str
    recipe: str
    ds_config: str
    overrides: tuple[str, ...]
    gpus: int
    samples_per_s: float
    source: str


# DeepSpeed-MoE (Rajbhandari et al. 2022, arXiv 2201.05596), Table 3: training throughput on 128 A100 GPUs,
# sequence length 2048; batch sizes from Table 1 (6.7B: 1024, 1.3B+MoE-128: 512), ZeRO-1 and bf16 as in
# Megatron-DeepSpeed's examples_deepspeed/MoE scripts.
PAPER = "DeepSpeed-MoE Table 3"
DSMOE_TABLE3 = (
    Measured("6.7B dense", "recipes/scaling/dsmoe_6.7b_dense.yaml", "ds_configs/zero1_bf16.json", (), 128, 70.0, PAPER),
    Measured(
        "1.3B+MoE-128",
        "recipes/scaling/dsmoe_1.3b_moe128.yaml",
        "ds_configs/zero1_bf16.json",
        ("ds.train_micro_batch_size_per_gpu=4",),
        128,
        372.0,
        PAPER,
    ),
)


def cpu_runs() -> tuple[Measured, ...]:
    """Our own runs: benchmarks/results/throughput_{default,tiny}_cpu2.json (2 gloo ranks on the 2-core CPU)."""
    runs = []
    for name in ("default", "tiny"):
        path = REPO / "benchmarks" / "results" / f"throughput_{name}_cpu2.json"
        r = json.loads(path.read_text())
        runs.append(
            Measured(
                f"{name} recipe",
                r["recipe"],
                r["ds_config"],
                tuple(r["overrides"]),
                r["ranks"],
                r["tokens_per_s"] / r["seq_len"],
                str(path.relative_to(REPO)),
            )
        )
    return tuple(runs)


def fit_mfu(run: Measured, cluster_path: str | Path) -> float:
    """The MFU at which the simulator gives `run`'s measured throughput exactly."""
    cluster = load_cluster(cluster_path)
    (at_peak,) = simulate(REPO / run.recipe, REPO / run.ds_config, list(run.overrides), cluster, [run.gpus], mfu=1.0)
    measured_step = at_peak.global_batch / run.samples_per_s
    not_compute = at_peak.step_s - at_peak.compute_s - at_peak.bubble_s
    if measured_step <= not_compute:
        raise ValueError(
            f"{run.name}: the modelled communication alone ({not_compute:.3f} s) exceeds the measured "
            f"step ({measured_step:.3f} s)"
        )
    return (at_peak.compute_s + at_peak.bubble_s) / (measured_step - not_compute)


def predict(run: Measured, cluster_path: str | Path, mfu: float) -> float:
    """Predicted samples/s of `run` at `mfu`."""
    (estimate,) = simulate(
        REPO / run.recipe, REPO / run.ds_config, list(run.overrides), load_cluster(cluster_path), [run.gpus], mfu=mfu
    )
    return estimate.samples_per_s


@dataclass(frozen=True)
class Check:
    fitted_on: str
    mfu: float
    checked_on: str
    measured: float
    predicted: float

    @property
    def error(self) -> float:
        return self.predicted / self.measured - 1


def calibrate(runs: tuple[Measured, Measured], cluster_path: str | Path) -> list[Check]:
    """Fit on each run, check on the other: [fit on runs[0], fit on runs[1]]."""
    checks = []
    for fit, check in (runs, runs[::-1]):
        mfu = fit_mfu(fit, cluster_path)
        checks.append(Check(fit.name, mfu, check.name, check.samples_per_s, predict(check, cluster_path, mfu)))
    return checks


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu-cluster", default="clusters/a100_80g_dgx.yaml")
    p.add_argument("--cpu-cluster", default="clusters/cpu_2core.yaml")
    args = p.parse_args(argv)
    sets = [(PAPER, DSMOE_TABLE3, args.gpu_cluster), ("our CPU runs", cpu_runs(), args.cpu_cluster)]
    print("| measured on | MFU fitted on | fitted MFU | checked on | measured samples/s | predicted | error |")
    print("|---|---|---|---|---|---|---|")
    for label, runs, cluster in sets:
        for c in calibrate(runs, REPO / cluster):
            print(
                f"| {label} ({cluster}) | {c.fitted_on} | {c.mfu:.4f} | {c.checked_on} | {c.measured:,.1f} | "
                f"{c.predicted:,.1f} | {c.error:+.1%} |"
            )


if __name__ == "__main__":
    main()
