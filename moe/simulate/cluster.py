"""A cluster YAML (clusters/*.yaml): per-GPU peak FLOP/s, link bandwidths and latencies, and the achieved MFU of
each model family.

    name: a100_80g_dgx
    gpus_per_node: 8
    peak_tflops: {bf16: 312, fp32: 156}   # per GPU, dense, by the recipe's train.precision
    intra_node_GBps: 300                  # per GPU, one direction (NVLink)
    inter_node_GBps: 25                   # per GPU, one direction (its share of the node's NICs)
    intra_node_latency_us: 5
    inter_node_latency_us: 10
    mfu: {dense: 0.16, moe: 0.20}         # achieved fraction of the peak on the model FLOPs (moe/model/cost.py),
                                          # by family: a recipe with moe.enabled uses moe, any other dense

The MFU is what the step model (step_time.py) does not resolve: everything but the modelled collectives. It is
fitted per family by `python -m moe.simulate.calibrate` (why two: docs/scaling.md, "Calibration"). Unknown keys
and wrong types are errors, as in a recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from moe.config import ConfigError
from moe.config.loader import from_dict

FAMILIES = ("dense", "moe")


@dataclass
class FamilyMFU:
    dense: float = 0.0  # recipes with moe.enabled: false
    moe: float = 0.0  # recipes with moe.enabled: true (expert GEMMs, gating, dispatch; the all-to-all is modelled)


@dataclass
class Cluster:
    name: str
    gpus_per_node: int
    peak_tflops: dict = field(default_factory=dict)  # precision -> dense peak TFLOP/s per GPU
    intra_node_GBps: float = 0.0  # noqa: N815 (the cluster YAML's key)
    inter_node_GBps: float = 0.0  # noqa: N815
    intra_node_latency_us: float = 0.0
    inter_node_latency_us: float = 0.0
    mfu: FamilyMFU = field(default_factory=FamilyMFU)
    source: str = ""  # where the numbers come from (datasheet, measurement, fit): shown in the table header

    def peak_flops(self, precision: str) -> float:
        if precision not in self.peak_tflops:
            raise ConfigError(
                f"cluster {self.name} has no peak_tflops for {precision}; it lists "
                f"{', '.join(self.peak_tflops) or 'none'}"
            )
        return self.peak_tflops[precision] * 1e12

    def family_mfu(self, family: str) -> float:
        """The achieved MFU of a model family ('dense' or 'moe')."""
        return getattr(self.mfu, family)

    def bandwidth(self, inter_node: bool) -> float:
        """Bytes/s one GPU sends (or receives) on the link a collective crosses."""
        return (self.inter_node_GBps if inter_node else self.intra_node_GBps) * 1e9

    def latency(self, inter_node: bool) -> float:
        return (self.inter_node_latency_us if inter_node else self.intra_node_latency_us) * 1e-6


def load_cluster(path: str | Path) -> Cluster:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"cluster file not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    missing = [
        k for k in ("name", "gpus_per_node", "peak_tflops", "intra_node_GBps", "inter_node_GBps", "mfu") if k not in raw
    ]
    if missing:
        raise ConfigError(
            f"{path}: missing key '{missing[0]}' (a cluster needs name, gpus_per_node, peak_tflops, "
            f"intra_node_GBps, inter_node_GBps, mfu)"
        )
    if not isinstance(raw["mfu"], dict):
        raise ConfigError(
            f"{path}: mfu is fitted per model family: write mfu: {{dense: ..., moe: ...}} "
            f"(python -m moe.simulate.calibrate), got {raw['mfu']!r}"
        )
    c = from_dict(Cluster, raw, where=str(path))
    if c.gpus_per_node < 1 or c.intra_node_GBps <= 0 or c.inter_node_GBps <= 0:
        raise ConfigError(f"{path}: gpus_per_node, intra_node_GBps and inter_node_GBps must be positive")
    if not c.peak_tflops or not all(isinstance(v, (int, float)) and v > 0 for v in c.peak_tflops.values()):
        raise ConfigError(f"{path}: peak_tflops must map precisions (bf16, fp32, ...) to positive TFLOP/s")
    for family in FAMILIES:
        if not 0 < c.family_mfu(family) <= 1:
            raise ConfigError(f"{path}: mfu.{family} must be in (0, 1], got {c.family_mfu(family)}")
    return c
