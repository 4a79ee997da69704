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

from moe.config import load_ds_config, load_recipe, resolve  # noqa: E402
from moe.model.build import global_param_name  # noqa: E402
from moe.parallel import init_distributed  # noqa: E402
from moe.train.trainer import Trainer  # noqa: E402

# name: (ep_size, ds_config, extra overrides)
LAYOUTS = {
    "ep1_zero0": (1, "zero0.json", []),
    "ep2_zero0": (2, "zero0.json", []),
    "ep1_zero1": (1, "zero1.json", []),
    "ep2_zero1": (2, "zero1.json", []),
    "ep2_zero2": (2, "zero2.json", []),
}
STEPS = 3


def main(out_dir: Path) -> None:
    rank, world_size = init_distributed()
    results = {}
    for name, (ep_size, ds_name, extra) in LAYOUTS.items():
        recipe = load_recipe(REPO / "recipes/tiny.yaml", [
            f"moe.ep_size={ep_size}", f"logging.runs_dir={out_dir / 'runs'}", f"logging.run_name={name}",
            "train.eval_interval=0", "logging.progress_bar=false", *extra])
        resolved = resolve(recipe, load_ds_config(REPO / "ds_configs" / ds_name), world_size, ds_name)
        trainer = Trainer(resolved, rank)
        num_local = recipe.moe.num_experts // ep_size
        ep_rank = rank % ep_size
        step1_grads = {}
        if ds_name == "zero0.json":  # grads live in p.grad only on this path; snapshot them before clipping
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
        results[name] = {"loss": [r["loss"] for r in records], "grad_norm": [r["grad_norm"] for r in records]}
        trainer.engine.destroy()
    if rank == 0:
        (out_dir / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    main(Path(args[0]))
