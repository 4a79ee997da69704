"""Router telemetry summed over all ranks since the last log line, per MoE layer, in one all-reduce."""

from __future__ import annotations

import torch

from moe.model.router_stats import summarize
from moe.parallel import all_reduce_named


def router_metrics(telemetry, device: torch.device) -> dict:
    """{"router/layer<L>/<metric>": value} from every layer's named sums (moe/model/router_stats.py), reduced over
    ranks (a collective: every rank calls it on the same steps), then reset. `device`: where the sums are reduced
    (NCCL reduces device tensors only)."""
    sums = telemetry.sums()  # {layer: {name: tensor}}; the same names on every rank
    summed = all_reduce_named(
        {f"{layer}/{name}": t for layer, named in sums.items() for name, t in named.items()}, device
    )
    telemetry.reset()
    out = {}
    for layer, named in sums.items():
        for key, value in summarize({name: summed[f"{layer}/{name}"] for name in named}).items():
            out[f"router/layer{layer}/{key}"] = value
    return out
