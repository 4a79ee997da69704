"""torch.compile, when the ds_config has a `compile` section (its presence turns it on, as for activation
checkpointing; its keys are DeepSpeed's CompileConfig).

- moe.impl=autoep: `engine.compile()` with DeepSpeed's `compile.autoep_non_moe` (set by resolve): every decoder layer
  is compiled and its AutoEP MoE layer stays eager.
- moe.impl=deepspeed (our GPT): the same regional scheme, done here because DeepSpeed's `engine.compile()` compiles
  the whole module. Tracing into `deepspeed.moe` would meet its data-dependent capacity (`int(C)`, a new shape, hence
  a recompile, whenever the busiest expert's load changes in dropless routing), its all-to-all autograd functions
  and the gate's Python-side sampling. So each block is compiled with its MoE MLP wrapped in
  `torch.compiler.disable`: attention, the norms, the residual adds and the dense MLPs fuse; routing, dispatch and
  the experts run as DeepSpeed wrote them. The blocks share one code object, so one compiled graph serves them all.
"""

from __future__ import annotations

import torch


def compile_gpt_blocks(engine, ds_config: dict) -> list[str]:
    """Our GPT: compile each block around its MoE layer; returns the regions' names ([] without a section)."""
    if ds_config.get("compile") is None:
        return []
    regions = []
    for i, block in enumerate(engine.module.layers):
        if block.is_moe:
            block.mlp.forward = torch.compiler.disable(block.mlp.forward)
        block.compile(dynamic=False)
        regions.append(f"layers.{i}")
    return regions


def compile_autoep(engine, ds_config: dict) -> list[str]:
    """AutoEP: DeepSpeed's own regional compile; returns the regions' names ([] without a section)."""
    if ds_config.get("compile") is None:
        return []
    engine.compile(compile_kwargs={"dynamic": False})
    return list(getattr(engine, "_compiled_regions", []))
