"""A native (moe.impl=deepspeed) training state without a layout: per *global* parameter name, the fp32 master
value and the Adam moments; what `python -m moe.reshard` writes so that a run resumes at another expert-parallel
size, rank count or ZeRO stage (0/1/2, fp32 or bf16), and the fp32 consolidation of a native checkpoint.

    <tag>/layout_free/
      rank<R>.pt   {"fp32" | "exp_avg" | "exp_avg_sq": {global name: tensor}} of the parameters rank R owns
                   (dense ones on rank 0, each expert slice on the first rank of its expert-data-parallel group)
      state.pt     optimizer step count, LR-scheduler state, client state (step, samples consumed, W&B id),
                   module buffers, tied-weight aliases, and the layout it came from
      COMPLETE     written last; the folder is renamed into place only after it

`gather` reads the state from a DeepSpeed engine at the layout that trained it (`write` puts it in the folder);
`load` writes it into a fresh engine of any layout. Experts are named by their global index
(`moe.model.build.global_param_name`), so the same name means the same weights under every EP size.

Why our own and not DeepSpeed's universal checkpoint: `deepspeed.checkpoint.ds_to_universal` skips the experts of
native `deepspeed.moe` layers (DeepSpeed issue 5716), and `engine.load_checkpoint` cannot load expert files or
ZeRO optimizer shards at another EP / data-parallel size. Each read and write below goes through DeepSpeed's own
per-parameter API where it has one:

- ZeRO 1/2 (fp32 or bf16) and DeepSpeed's BF16_Optimizer keep a flat fp32 partition per rank, linked to every
  parameter (`_hp_mapping`): read with `safe_get_full_fp32_param` / `safe_get_full_optimizer_state` (collectives
  over the parameter's data-parallel group: experts over their expert-data-parallel group); write the way
  DeepSpeed's universal-checkpoint loader does (`load_hp_checkpoint_state_from_checkpoint_dir`): the master
  fragment with `safe_set_full_fp32_param`, the moments as fragments gathered by `map_to_flat_opt_states`;
- ZeRO 0 has no partitions: the torch optimizer's state is keyed by the fp32 parameter itself (fp32) or by its
  fp32 master copy (bf16: DeepSpeed's FP16_UnfusedOptimizer, `fp16_groups` / `fp32_groups`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from moe.checkpoint.metadata import COMPLETE, LAYOUT_FREE, Tag, reshard_command
from moe.config.loader import ConfigError
from moe.model.global_names import global_param_name, local_expert_counts
from moe.parallel import expert_parallel_rank

FORMAT = 1
MASTER = "fp32"
MOMENTS = ("exp_avg", "exp_avg_sq")  # Adam / AdamW; the step count is stored once, it is the same for every param
KINDS = (MASTER, *MOMENTS)


def global_names(module) -> dict[int, str]:
    """{id(param): its global name} of our GPT, experts by global index."""
    config = module.config
    ep_rank = expert_parallel_rank(config.ep_size) if config.moe_enabled else 0
    counts = local_expert_counts(config)
    return {id(p): global_param_name(n, ep_rank, counts) for n, p in module.named_parameters()}


def _torch_optimizer(engine) -> torch.optim.Optimizer:
    optimizer = engine.optimizer
    return optimizer if isinstance(optimizer, torch.optim.Optimizer) else optimizer.optimizer


def _fragmented(engine) -> bool:
    """ZeRO 1/2 or BF16_Optimizer: every parameter is linked to a fragment of a flat fp32 partition."""
    return any(hasattr(p, "_hp_mapping") for p in engine.module.parameters())


def _lp_groups(engine) -> list[list[torch.nn.Parameter]]:
    optimizer = engine.optimizer
    groups = getattr(optimizer, "bit16_groups", None) or getattr(optimizer, "bf16_groups", None)
    if groups is None:
        raise NotImplementedError(f"layout-free state: unsupported optimizer wrapper {type(optimizer).__name__}")
    return groups


def _zero0_masters(engine) -> dict[int, torch.Tensor]:
    """ZeRO 0: {id(model param): the fp32 tensor the optimizer steps}."""
    optimizer = engine.optimizer
    if isinstance(optimizer, torch.optim.Optimizer):  # fp32: the parameters themselves
        return {id(p): p for p in engine.module.parameters()}
    if hasattr(optimizer, "fp16_groups") and hasattr(optimizer, "fp32_groups"):  # bf16: FP16_UnfusedOptimizer
        pairs = zip(optimizer.fp16_groups, optimizer.fp32_groups)
        return {id(lp): hp for lps, hps in pairs for lp, hp in zip(lps, hps)}
    raise NotImplementedError(f"layout-free state: unsupported optimizer wrapper {type(optimizer).__name__}")


def _owns(param) -> bool:
    """Whether this rank writes `param`: dense ones on global rank 0, an expert on the first rank of its
    expert-data-parallel group (which holds that expert slice)."""
    import deepspeed.comm as dist
    from deepspeed.moe.utils import is_moe_param
    from deepspeed.utils import groups

    if is_moe_param(param):
        return groups._get_expert_data_parallel_rank(param.group_name) == 0
    return dist.get_rank() == 0


def optimizer_step(engine) -> float:
    """Adam's step count (bias correction), the same for every parameter group."""
    optimizer = _torch_optimizer(engine)
    steps = {float(state["step"]) for state in optimizer.state.values() if "step" in state}
    if len(steps) != 1:
        raise RuntimeError(f"expected one optimizer step count, found {sorted(steps)}")
    return steps.pop()


@torch.no_grad()
def gather(engine) -> dict[str, dict[str, torch.Tensor]]:
    """{kind: {global name: fp32 CPU tensor}} of the parameters this rank owns (see `_owns`).

    A collective on the ZeRO 1/2 path: every rank calls it, and walks the parameters in the same order."""
    names = global_names(engine.module)
    out: dict[str, dict[str, torch.Tensor]] = {kind: {} for kind in KINDS}
    if _fragmented(engine):
        from deepspeed.utils import (
            lazy_init_hp_params_optimizer_state,
            safe_get_full_fp32_param,
            safe_get_full_optimizer_state,
        )

        optimizer = _torch_optimizer(engine)
        for lps, group in zip(_lp_groups(engine), optimizer.param_groups):  # after load_checkpoint, not yet linked
            lazy_init_hp_params_optimizer_state(lps, group["params"][0], optimizer.state)
        for p in engine.module.parameters():
            values = {MASTER: safe_get_full_fp32_param(p)}
            values.update({key: safe_get_full_optimizer_state(p, key) for key in MOMENTS})
            if _owns(p):
                for kind, value in values.items():
                    out[kind][names[id(p)]] = value.detach().float().cpu().clone()
        return out
    masters, state = _zero0_masters(engine), _torch_optimizer(engine).state
    for p in engine.module.parameters():
        if _owns(p):
            master, moments = masters[id(p)], state.get(masters[id(p)], {})  # no state: never had a gradient
            out[MASTER][names[id(p)]] = master.detach().float().cpu().clone()
            for key in MOMENTS:
                out[key][names[id(p)]] = moments.get(key, torch.zeros_like(master)).detach().float().cpu().clone()
    return out


@torch.no_grad()
def load(engine, tensors: dict[str, dict[str, torch.Tensor]], step: float) -> None:
    """Write masters, moments and the step count into a fresh engine (every rank, any layout).

    tensors: {kind: {global name: full tensor}} covering every parameter of the model."""
    names = global_names(engine.module)
    missing = sorted(set(names.values()) - set(tensors[MASTER]))
    if missing:
        raise KeyError(f"the layout-free state has no {missing[0]} (and {len(missing) - 1} more)")
    optimizer = _torch_optimizer(engine)
    # torch's Adam / AdamW count steps in a float32 tensor, DeepSpeed's FusedAdam in a Python int
    torch_adam = isinstance(optimizer, torch.optim.Adam)  # AdamW included

    def step_value():  # a fresh tensor per state: torch's Adam increments it in place
        return torch.tensor(step, dtype=torch.float32) if torch_adam else int(step)

    for p in engine.module.parameters():  # the low-precision (or only) copy the forward reads; whole on every rank
        p.data.copy_(tensors[MASTER][names[id(p)]].view_as(p))
    if _fragmented(engine):
        from deepspeed.utils import safe_set_full_fp32_param
        from deepspeed.utils.tensor_fragment import map_to_flat_opt_states

        for lps, group in zip(_lp_groups(engine), optimizer.param_groups):
            for lp in lps:
                full = {kind: tensors[kind][names[id(lp)]] for kind in KINDS}
                safe_set_full_fp32_param(lp, full[MASTER])
                if lp._hp_mapping is not None:  # this rank's slice of the moments, as DeepSpeed's UC loader does
                    address = lp._hp_mapping.lp_fragment_address
                    lp._hp_mapping.optim_fragment = {
                        key: full[key].flatten().narrow(0, address.start, address.numel).clone() for key in MOMENTS
                    }
            flat = group["params"][0]
            map_to_flat_opt_states(flat, lps, optimizer.state, MOMENTS)
            optimizer.state[flat]["step"] = step_value()
    else:
        masters = _zero0_masters(engine)
        for p in engine.module.parameters():
            master = masters[id(p)]
            master.data.copy_(tensors[MASTER][names[id(p)]].view_as(master))
            optimizer.state[master] = {
                "step": step_value(),
                **{key: tensors[key][names[id(p)]].to(master.device).view_as(master).clone() for key in MOMENTS},
            }
    if not torch_adam:  # DeepSpeed's FusedAdam starts a new state's count from its group's
        for group in optimizer.param_groups:
            group["step"] = int(step)


def load_schedule(engine, scheduler_state: dict, step: int, samples: int) -> None:
    """The LR schedule's position and the engine's counters (what `load_checkpoint` restores besides weights)."""
    scheduler = engine.lr_scheduler
    scheduler.load_state_dict(scheduler_state)
    lrs = scheduler.get_last_lr()
    for i, group in enumerate(_torch_optimizer(engine).param_groups):  # LambdaLR writes them only when it steps
        group["lr"] = lrs[min(i, len(lrs) - 1)]
    engine.global_steps, engine.global_samples, engine.skipped_steps = step, samples, 0


def layout_free_dir(tag_dir: Path) -> Path:
    return Path(tag_dir) / LAYOUT_FREE


def is_converted(tag_dir: Path) -> bool:
    return (layout_free_dir(tag_dir) / COMPLETE).is_file()


def write(engine, tag_dir: Path, client_state: dict, layout: dict) -> Path:
    """On every rank of the layout that loaded the checkpoint into `engine`: write `<tag>/layout_free/` (a
    collective; the folder appears atomically once every rank's part is on disk)."""
    import deepspeed.comm as dist

    parts = gather(engine)
    rank, out = dist.get_rank(), layout_free_dir(tag_dir)
    tmp = out.with_name(LAYOUT_FREE + ".tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    dist.barrier()
    if any(parts.values()):
        torch.save(parts, tmp / f"rank{rank}.pt")
    if rank == 0:
        module = engine.module
        canonical = {id(p): n for n, p in module.named_parameters()}
        aliases = {
            n: canonical[id(p)] for n, p in module.named_parameters(remove_duplicate=False) if n != canonical[id(p)]
        }  # tied weights: lm_head.weight -> embed_tokens.weight
        params = set(canonical.values()) | set(aliases)
        buffers = {n: t.detach().cpu().clone() for n, t in module.state_dict().items() if n not in params}
        torch.save(
            {
                "format": FORMAT,
                "layout": layout,
                "lr_scheduler": engine.lr_scheduler.state_dict(),
                "optimizer_step": optimizer_step(engine),
                "buffers": buffers,
                "aliases": aliases,
                "client_state": {
                    "step": client_state["step"],
                    "wandb_id": client_state.get("wandb_id"),
                    "samples_consumed": client_state.get("samples_consumed", engine.global_samples),
                },
            },
            tmp / "state.pt",
        )
    dist.barrier()
    if rank == 0:
        (tmp / COMPLETE).write_text("")
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    dist.barrier()
    return out


def read_tensors(tag_dir: Path, kinds: tuple[str, ...] | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """{kind: {global name: tensor}} merged over the rank files (memory-mapped: ranks share the page cache)."""
    out: dict[str, dict[str, torch.Tensor]] = {kind: {} for kind in kinds or KINDS}
    for part in sorted(layout_free_dir(tag_dir).glob("rank*.pt")):
        saved = torch.load(part, map_location="cpu", mmap=True, weights_only=True)
        for kind in out:
            out[kind].update(saved[kind])
    return out


def read_state(tag_dir: Path) -> dict:
    return torch.load(layout_free_dir(tag_dir) / "state.pt", map_location="cpu", weights_only=False)


def consolidated_fp32(tag_dir: Path) -> dict[str, torch.Tensor]:
    """One fp32 state dict of the whole model (all experts by global index, the fp32 masters of a bf16 run, and the
    module buffers): what DeepSpeed's zero_to_fp32 cannot produce for MoE checkpoints (DeepSpeed issue 1876)."""
    if not is_converted(tag_dir):
        raise ConfigError(f"{tag_dir} has no layout-free state; run: {reshard_command(Tag(Path(tag_dir)))}")
    state = dict(read_tensors(tag_dir, (MASTER,))[MASTER])
    saved = read_state(tag_dir)
    state.update(saved["buffers"])
    state.update({alias: state[name] for alias, name in saved["aliases"].items()})
    return state


def load_converted(engine, tag_dir: Path) -> dict:
    """Load `<tag>/layout_free/` into a fresh engine of any layout; returns its client state."""
    saved = read_state(tag_dir)
    load(engine, read_tensors(tag_dir), saved["optimizer_step"])
    client = saved["client_state"]
    load_schedule(engine, saved["lr_scheduler"], client["step"], client["samples_consumed"])
    engine.module.load_state_dict(saved["buffers"], strict=False)
    return client
