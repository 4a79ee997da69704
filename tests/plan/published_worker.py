"""Every published recipe (recipes/published/) for 2 steps at reduced width, on 2 gloo ranks in one spawn, through
the real Trainer with its stated ds_config. Started by tests/plan/test_published_runs.py; writes each recipe's losses.
"""
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from moe.config import load_ds_config, load_recipe, resolve, split_overrides  # noqa: E402
from moe.parallel import init_distributed  # noqa: E402
from moe.train.trainer import Trainer  # noqa: E402
from tests.plan.test_planner import PUBLISHED, stated_layout  # noqa: E402

STEPS = 2
# The shape the recipes keep (family, routing, top-k, capacity, PR-MoE pyramid, residual, MLA) at toy width
SHRINK = ["model.d_model=64", "model.n_heads=4", "model.d_ff=128", "moe.expert_d_ff=64", "model.max_seq_len=64",
          "data.seq_len=64", "moe.ep_size=2", "data.max_documents=600", "data.val_fraction=0.1",
          "data.vocab_size=1024", "ds.train_micro_batch_size_per_gpu=2", "ds.gradient_accumulation_steps=1",
          "train.warmup_steps=1", "train.eval_interval=0", "logging.wandb=false", "logging.progress_bar=false"]
PER_RECIPE = {
    "ds_moe_1p3b_pr_moe_64_128": ["model.n_layers=4", "moe.num_experts=[4, 8]"],
    "mixtral_8x7b_autoep": ["model.n_layers=2", "moe.num_experts=4", "model.n_kv_heads=2", "model.vocab_size=1024"],
    "deepseek_v3_small_autoep": ["model.n_layers=2", "moe.num_experts=8",
                                 "model.hf_config={first_k_dense_replace: 1, n_shared_experts: 1, q_lora_rank: 32, "
                                 "kv_lora_rank: 16, qk_nope_head_dim: 16, qk_rope_head_dim: 8, v_head_dim: 16, "
                                 "n_group: 1, topk_group: 1}"],
}


def shrunk(path: Path, world_size: int, runs_dir: Path):
    _, ds_config, _ = stated_layout(path)
    overrides = [*SHRINK, *PER_RECIPE.get(path.stem, ["model.n_layers=2", "moe.num_experts=4"]),
                 f"train.max_steps={STEPS}", f"logging.runs_dir={runs_dir}", f"logging.run_name={path.stem}"]
    recipe_overrides, ds_overrides = split_overrides(overrides)
    return resolve(load_recipe(path, recipe_overrides), load_ds_config(REPO / ds_config, ds_overrides), world_size,
                   ds_config)


def main(out_dir: Path) -> None:
    rank, world_size = init_distributed()
    results = {}
    for path in PUBLISHED:
        start = time.perf_counter()
        trainer = Trainer(shrunk(path, world_size, out_dir / "runs"), rank)
        records = [trainer.train_step() for _ in range(STEPS)]
        trainer.engine.destroy()
        results[path.stem] = {"loss": [r["loss"] for r in records], "seconds": time.perf_counter() - start,
                              "precision": trainer.recipe.train.precision, "impl": trainer.recipe.moe.impl}
    if rank == 0:
        (out_dir / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[-1]))
