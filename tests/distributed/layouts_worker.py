"""One 2-rank job that trains the tiny recipe for 3 steps under several layouts, one after another in the same
process group, and writes each layout's losses, grad norms and final (global-named) parameters.

Started by tests/distributed/test_layouts.py through DeepSpeed's launcher; shares one spawn for all layouts.
"""
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from moe.config import load_ds_config, load_recipe, resolve, split_overrides  # noqa: E402
from moe.model.build import global_param_name  # noqa: E402
from moe.parallel import init_distributed  # noqa: E402
from moe.train.trainer import Trainer  # noqa: E402

# Routing that makes MoE gradient accumulation exact: no capacity (drops depend on the micro-batch), no balance loss
# (a mean over micro-batches of a per-micro-batch product is not the batch's), no sampled 2nd expert.
ACCUM_EXACT_MOE = ["moe.drop_tokens=false", "moe.aux_loss_coef=0", "moe.top2_2nd_expert_sampling=false"]
DENSE = ["moe.enabled=false"]
# name: (ep_size, ds_config, extra overrides: recipe keys, or ds.<key> for the ds_config)
LAYOUTS = {
    "ep1_zero0": (1, "zero0.json", []),
    "ep2_zero0": (2, "zero0.json", []),
    "ep1_zero1": (1, "zero1.json", []),
    "ep2_zero1": (2, "zero1.json", []),
    "ep2_zero2": (2, "zero2.json", []),
    "ep2_zero1_batched": (2, "zero1.json", ["moe.batched_experts=true"]),
    # clipping at 0.05 scales every step's update (grad norms here are ~0.3-2): the clipped update must match too
    "ep1_zero0_clip": (1, "zero0.json", ["ds.gradient_clipping=0.05"]),
    "ep2_zero0_clip": (2, "zero0.json", ["ds.gradient_clipping=0.05"]),
    "ep2_zero2_offload": (2, "zero2_offload.json", []),
    "ep2_zero1_bf16": (2, "zero1_bf16.json", []),
    "ep2_zero1_actckpt": (2, "zero1_activation_ckpt.json", []),
    "ep2_zero1_recompute_mlp": (2, "zero1_activation_ckpt.json", ["train.recompute=mlp"]),
    "ep2_micro4_accum1": (2, "zero1.json", ["ds.train_micro_batch_size_per_gpu=4", *ACCUM_EXACT_MOE]),
    "ep2_micro1_accum4": (2, "zero1_accum4.json", ["ds.train_micro_batch_size_per_gpu=1", *ACCUM_EXACT_MOE]),
    "dense_zero0": (1, "zero0.json", DENSE),
    "dense_zero1": (1, "zero1.json", DENSE),
    "dense_zero2": (1, "zero2.json", DENSE),
    "dense_zero3": (1, "zero3.json", DENSE),
    "dense_zero3_bf16": (1, "zero3_bf16.json", DENSE),
    "dense_micro4_accum1": (1, "zero1.json", ["ds.train_micro_batch_size_per_gpu=4", *DENSE]),
    "dense_micro1_accum4": (1, "zero1_accum4.json", ["ds.train_micro_batch_size_per_gpu=1", *DENSE]),
}
STEPS = 3


def main(out_dir: Path) -> None:
    rank, world_size = init_distributed()
    results = {}
    for name, (ep_size, ds_name, extra) in LAYOUTS.items():
        recipe_overrides, ds_overrides = split_overrides(extra)
        recipe = load_recipe(REPO / "recipes/tiny.yaml", [
            f"moe.ep_size={ep_size}", f"logging.runs_dir={out_dir / 'runs'}", f"logging.run_name={name}",
            "train.eval_interval=0", "logging.progress_bar=false", *recipe_overrides])
        resolved = resolve(recipe, load_ds_config(REPO / "ds_configs" / ds_name, ds_overrides), world_size, ds_name)
        trainer = Trainer(resolved, rank)
        num_local = recipe.moe.num_experts // ep_size
        ep_rank = rank % ep_size
        step1_grads = {}
        if ds_name == "zero0.json" and not extra:  # grads live in p.grad only on this path; snapshot them before clipping
            clip = trainer.engine.clip_fp32_gradients

            def snapshot_then_clip():
                if not step1_grads:
                    step1_grads.update({global_param_name(n, ep_rank, num_local): p.grad.detach().clone()
                                        for n, p in trainer.engine.module.named_parameters()})
                clip()
            trainer.engine.clip_fp32_gradients = snapshot_then_clip
        records = [trainer.train_step() for _ in range(STEPS)]
        params = {global_param_name(n, ep_rank, num_local): p.detach().float().clone()
                  for n, p in trainer.engine.module.named_parameters()}
        torch.save({"params": params, "step1_grads": step1_grads}, out_dir / f"{name}_rank{rank}.pt")
        router = {k: v for k, v in trainer.router_metrics().items() if k.endswith("tokens_per_expert")}
        results[name] = {"loss": [r["loss"] for r in records], "grad_norm": [r["grad_norm"] for r in records],
                         "router": router}
        trainer.engine.destroy()
    if rank == 0:
        (out_dir / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    main(Path(args[0]))
