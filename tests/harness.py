"""Real ranks for tests: a function of a test module run on N gloo ranks through DeepSpeed's own launcher, and what
the rank functions share (OLMo-core's run_distributed_test, with DeepSpeed's real launcher in place of
torch.multiprocessing).

    def train_cases(rank, world_size, out_dir): ...   # a module-level function of the test module, on every rank
    run_on_ranks(train_cases, out_dir, ranks=2)        # in the test (or its fixture); asserts the job exited 0

The job is DeepSpeed's per-node launcher, `python -m deepspeed.launcher.launch --world_info={localhost: [0..N-1]}
--module tests.harness <module> <function> <args>`, which starts the N ranks as `deepspeed` and `bash
launch/pretrain_moe.sh` do on each node (without DeepSpeed's runner in front of it, which on one node only builds
that world info, and costs a process start); each rank joins the process group (moe.parallel.init_distributed) and
calls the function with its rank, the world size and the JSON-able arguments. One rank needs no launcher: a plain
process. Rank functions write what the test asserts on into the output folder.
"""

from __future__ import annotations

import base64
import importlib
import json
import shutil
import sys
from pathlib import Path

import torch

from moe.checkpoint import check_resume
from moe.config import Resolved, load_resolved
from moe.model.global_names import global_param_name, local_expert_counts
from moe.parallel import free_port
from tests.helpers import REPO, explain, run


def run_on_ranks(func, *args, ranks: int = 2, timeout: float = 600, **env: str):
    """Run `func(rank, world_size, *args)` on `ranks` real gloo ranks; returns the finished process."""
    job = ["tests.harness", func.__module__, func.__name__, json.dumps([str(a) for a in args])]
    if ranks == 1:  # a world of one: moe.parallel.init_distributed sets it up itself
        cmd = [sys.executable, "-m", *job]
    else:
        world = base64.urlsafe_b64encode(json.dumps({"localhost": list(range(ranks))}).encode()).decode()
        launch = [f"--world_info={world}", "--master_addr=127.0.0.1", f"--master_port={free_port()}"]
        cmd = [sys.executable, "-m", "deepspeed.launcher.launch", *launch, "--no_local_rank", "--module", *job]
    proc = run(cmd, timeout=timeout, **env)
    assert proc.returncode == 0, explain(proc)
    return proc


def resolved_for(
    out_dir, name: str, ds_config: str, overrides=(), world_size: int = 2, recipe: str = "recipes/tiny.yaml"
) -> Resolved:
    """The tiny recipe (or `recipe`) as run `name` under runs/ of `out_dir`, resolved as the launcher resolves it;
    `ds_config` is a file of ds_configs/ or a path; overrides are the trainer's (ds.* to the ds_config)."""
    ds_path = REPO / ds_config if "/" in ds_config else REPO / "ds_configs" / ds_config
    return load_resolved(
        REPO / recipe,
        ds_path,
        [
            f"logging.runs_dir={Path(out_dir) / 'runs'}",
            f"logging.run_name={name}",
            "logging.progress_bar=false",
            *overrides,
        ],
        world_size,
    )


def resume(resolved: Resolved, rank: int):
    """The resume sequence of a launch: the preflight's refusals, then a Trainer that loads and trains to the end."""
    from moe.train.trainer import Trainer

    check_resume(resolved, True)
    trainer = Trainer(resolved, rank, resume=True)
    trainer.fit()
    return trainer


def global_params(trainer) -> dict[str, torch.Tensor]:
    """This rank's parameters by MoEGPTForCausalLM name, experts by global index (a pipeline stage's too)."""
    from moe.model.global_names import full_param_name

    config, module = trainer.model_config, trainer.engine.module
    ep_size = config.ep_size if config.moe_enabled else 1
    ep_rank = trainer.rank % ep_size  # consecutive ranks form an expert-parallel group, with or without a pipeline
    pipeline = trainer.resolved.pipeline_stages > 1
    out = {}
    for name, param in module.named_parameters():
        name = full_param_name(name, config.n_layers) if pipeline else name
        out[global_param_name(name, ep_rank, local_expert_counts(config))] = param.detach().float().clone()
    return out


def snapshot_step1_gradients(trainer, into: dict) -> None:
    """Record every parameter's full gradient (global names) right after step 1's last backward, before the
    optimizer step clips or applies it, on every ZeRO stage (safe_get_full_grad is collective under ZeRO 1-3)."""
    from deepspeed.utils import safe_get_full_grad

    engine, backward = trainer.engine, trainer.engine.backward
    config = trainer.model_config
    ep_size = config.ep_size if config.moe_enabled else 1
    counts = local_expert_counts(config)

    def backward_then_snapshot(loss, *args, **kwargs):
        last = engine.is_gradient_accumulation_boundary()
        out = backward(loss, *args, **kwargs)
        if last and not into:
            for name, p in engine.module.named_parameters():
                into[global_param_name(name, trainer.rank % ep_size, counts)] = safe_get_full_grad(p).detach().clone()
        return out

    engine.backward = backward_then_snapshot


def merged(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One dict of global-named tensors from every rank's; a name several ranks hold (a replica) must agree exactly."""
    out = {}
    for state in states:
        for name, tensor in state.items():
            if name in out:
                assert torch.equal(out[name], tensor), f"replicas of {name} differ across ranks"
            out[name] = tensor
    return out


def interrupted_copy(runs_dir: Path, source: str, name: str, last_step: int, saved_step: int) -> None:
    """runs_dir/<name>: a copy of runs_dir/<source> as if its job had died right after the step-`saved_step`
    checkpoint (the final step-`last_step` one removed; metrics past `saved_step` are dropped on resume)."""
    src, dst = Path(runs_dir) / source, Path(runs_dir) / name
    shutil.copytree(src, dst)
    shutil.rmtree(dst / "checkpoints" / f"global_step{last_step}")
    (dst / "checkpoints" / "latest").write_text(f"global_step{saved_step}")


if __name__ == "__main__":  # one rank of run_on_ranks
    from moe.parallel import init_distributed, shutdown_distributed

    module, function, arguments = sys.argv[1:4]
    rank, world_size = init_distributed()
    try:
        getattr(importlib.import_module(module), function)(rank, world_size, *json.loads(arguments))
    finally:
        shutdown_distributed()
