"""Make a checkpoint loadable at any layout, so a run resumes at another expert-parallel size, rank count or ZeRO
stage (and a native run's fp32 master weights consolidate into one state dict).

    python -m moe.reshard runs/<run_name> [--tag global_stepN]

moe.impl=autoep: DeepSpeed's own universal checkpoint (ds_to_universal), `<tag>/universal/`, made readable by every
ZeRO stage (moe/train/universal.py): an offline single process, no ranks needed.

moe.impl=deepspeed: it starts the checkpoint's own layout (its world size and moe.ep_size, as CPU/gloo ranks:
possible on any machine), loads the checkpoint there through DeepSpeed (`engine.load_checkpoint`, model + ZeRO
shards + expert files), and writes `<tag>/layout_free/` (moe/train/layout_free.py explains why this is not
DeepSpeed's universal checkpoint):

    rank<R>.pt   {"fp32" | "exp_avg" | "exp_avg_sq": {global name: tensor}} of the parameters rank R owns
                 (dense ones on rank 0, each expert slice on the first rank of its expert-data-parallel group)
    state.pt     optimizer step count, LR-scheduler state, client state (step, samples consumed, W&B id),
                 module buffers, and the layout it came from
    COMPLETE     written last; the folder is renamed into place only after it

The trainer does not convert by itself: a `--resume` whose layout differs from the checkpoint's is refused before
any rank starts, naming this command (moe/train/checkpoint.py). A native conversion needs the old layout's rank
count, which the new job may not have; either output is kept for every later resume and export.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

import torch

from moe.config.loader import ConfigError

FOLDER = "layout_free"
COMPLETE = "COMPLETE"
FORMAT = 1


def layout_free_dir(tag_dir: Path) -> Path:
    return tag_dir / FOLDER


def is_converted(tag_dir: Path) -> bool:
    return (layout_free_dir(tag_dir) / COMPLETE).is_file()


def reshard_command(run_dir: Path, tag: str) -> str:
    return f"python -m moe.reshard {run_dir} --tag {tag}"


def read_tensors(tag_dir: Path, kinds: tuple[str, ...] | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """{kind: {global name: tensor}} merged over the rank files (memory-mapped: ranks share the page cache)."""
    from moe.train.layout_free import KINDS
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
        command = reshard_command(tag_dir.parent.parent, tag_dir.name)
        raise ConfigError(f"{tag_dir} has no layout-free state; run: {command}")
    state = dict(read_tensors(tag_dir, ("fp32",))["fp32"])
    saved = read_state(tag_dir)
    state.update(saved["buffers"])
    state.update({alias: state[name] for alias, name in saved["aliases"].items()})
    return state


def load_layout_free(engine, tag_dir: Path) -> dict:
    """Load a converted checkpoint into a fresh engine of any layout; returns its client state."""
    from moe.train import layout_free
    saved = read_state(tag_dir)
    layout_free.load(engine, read_tensors(tag_dir), saved["optimizer_step"])
    client = saved["client_state"]
    layout_free.load_schedule(engine, saved["lr_scheduler"], client["step"], client["samples_consumed"])
    engine.module.load_state_dict(saved["buffers"], strict=False)
    return client


def _engine_for(run_dir: Path, tag_dir: Path):
    """A DeepSpeed engine of the checkpoint's own model, optimizer, schedule and layout (weights are then loaded)."""
    import deepspeed

    from moe.config import load_recipe
    from moe.model import MoEGPTConfig, build_model, config_from_recipe
    from moe.parallel import expert_parallel_rank
    from moe.train.optim import param_groups
    from moe.train.schedule import build_scheduler
    recipe = load_recipe(tag_dir / "recipe.yaml")
    ds_config = json.loads((tag_dir / "ds_config.json").read_text())
    ds_config["optimizer"]["params"]["torch_adam"] = not torch.cuda.is_available()  # same state keys as FusedAdam
    vocab = MoEGPTConfig.from_pretrained(run_dir / "model_config").vocab_size
    ep_rank = expert_parallel_rank(recipe.moe.ep_size) if recipe.moe.enabled else 0
    model = build_model(config_from_recipe(recipe, vocab_size=vocab), seed=recipe.train.seed, ep_rank=ep_rank)
    weight_decay = ds_config["optimizer"]["params"]["weight_decay"]
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=param_groups(model, weight_decay),
                                           lr_scheduler=partial(build_scheduler, train_cfg=recipe.train),
                                           config=ds_config)
    return engine


def dump(run_dir: Path, tag: str) -> Path:
    """On every rank of the checkpoint's own layout: load it through DeepSpeed, write its layout-free state."""
    import deepspeed.comm as dist

    from moe.train import layout_free
    from moe.train.checkpoint import checkpoint_dir, saved_layout
    tag_dir = checkpoint_dir(run_dir) / tag
    engine = _engine_for(run_dir, tag_dir)
    load_path, client_state = engine.load_checkpoint(str(checkpoint_dir(run_dir)), tag=tag)
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {tag_dir}")
    parts = layout_free.gather(engine)
    rank, out = dist.get_rank(), layout_free_dir(tag_dir)
    tmp = out.with_name(FOLDER + ".tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    dist.barrier()
    if any(parts.values()):
        torch.save(parts, tmp / f"rank{rank}.pt")
    if rank == 0:
        module = engine.module
        canonical = {id(p): n for n, p in module.named_parameters()}
        aliases = {n: canonical[id(p)] for n, p in module.named_parameters(remove_duplicate=False)
                   if n != canonical[id(p)]}  # tied weights: lm_head.weight -> embed_tokens.weight
        params = set(canonical.values()) | set(aliases)
        buffers = {n: t.detach().cpu().clone() for n, t in module.state_dict().items() if n not in params}
        torch.save({"format": FORMAT, "layout": saved_layout(tag_dir), "lr_scheduler": engine.lr_scheduler.state_dict(),
                    "optimizer_step": layout_free.optimizer_step(engine), "buffers": buffers, "aliases": aliases,
                    "client_state": {"step": client_state["step"], "wandb_id": client_state.get("wandb_id"),
                                     "samples_consumed": client_state.get("samples_consumed", engine.global_samples)}},
                   tmp / "state.pt")
    dist.barrier()
    if rank == 0:
        (tmp / COMPLETE).write_text("")
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    dist.barrier()
    engine.destroy()
    return out


def convert(run_dir: Path, tag: str | None = None, timeout: float | None = None) -> Path:
    """AutoEP: DeepSpeed's ds_to_universal. Native: run `dump` on the checkpoint's own layout, CPU/gloo ranks through
    DeepSpeed's launcher (one rank: a plain process). Returns the converted folder."""
    from moe.train.checkpoint import checkpoint_dir, is_autoep, latest_tag, saved_layout
    tag = tag or latest_tag(run_dir)
    if tag is None:
        raise ConfigError(f"no complete checkpoint in {checkpoint_dir(run_dir)}")
    tag_dir = checkpoint_dir(run_dir) / tag
    if not (tag_dir / "recipe.yaml").is_file() or not (tag_dir / "ds_config.json").is_file():
        raise ConfigError(f"{tag_dir} has no recipe.yaml / ds_config.json to read its layout from")
    if is_autoep(tag_dir):
        from moe.train import universal
        return universal.convert(tag_dir, timeout=timeout)
    from moe.model.pipeline import is_pipeline_checkpoint
    if is_pipeline_checkpoint(tag_dir):
        raise ConfigError(f"{tag_dir} is a pipeline-parallel checkpoint: it resumes only at its own layout, and "
                          f"`python -m moe.export` reads it directly (fp32); there is nothing to convert")
    layout = saved_layout(tag_dir)
    from moe.cli import REPO
    from moe.parallel import free_port
    port = free_port()
    env = dict(os.environ, DS_ACCELERATOR="cpu", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.setdefault("OMP_NUM_THREADS", "1")
    dump_args = ["moe.reshard", "--dump", str(Path(run_dir).resolve()), "--tag", tag]
    if layout["world_size"] == 1:  # a world of one needs no launcher (moe.parallel.init_distributed)
        cmd = [sys.executable, "-m", *dump_args]
        env["MASTER_PORT"] = str(port)
    else:
        cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(layout["world_size"]),
               "--master_port", str(port), "--module", "--no_local_rank", *dump_args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not is_converted(tag_dir):
        raise RuntimeError(f"moe.reshard: converting {tag_dir} on {layout['world_size']} ranks failed "
                           f"(exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return layout_free_dir(tag_dir)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m moe.reshard", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="runs/<run_name>")
    p.add_argument("--tag", default=None, help="checkpoint tag (default: the newest complete one)")
    p.add_argument("--dump", action="store_true", help=argparse.SUPPRESS)  # a rank spawned by `convert`
    args = p.parse_args(argv)
    if args.dump:
        from moe.parallel import init_distributed
        init_distributed()
        dump(args.run_dir, args.tag)
        return 0
    try:
        out = convert(args.run_dir, args.tag)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
