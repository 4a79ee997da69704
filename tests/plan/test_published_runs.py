"""Each published recipe (recipes/published/) trains 2 steps at reduced width on CPU through the real Trainer with
its stated ds_config (one 2-rank spawn for all of them)."""

import json
import math
import time

import pytest

from moe.plan.stated_layout import stated_layout
from tests.harness import resolved_for, run_on_ranks
from tests.plan.test_planner import PUBLISHED

pytestmark = pytest.mark.distributed
STEPS = 2
# The shape the recipes keep (family, routing, top-k, capacity, PR-MoE pyramid, residual, MLA) at toy width
SHRINK = [
    "model.d_model=64",
    "model.n_heads=4",
    "model.d_ff=128",
    "moe.expert_d_ff=64",
    "model.max_seq_len=64",
    "data.seq_len=64",
    "moe.ep_size=2",
    "data.max_documents=600",
    "data.val_fraction=0.1",
    "data.vocab_size=1024",
    "ds.train_micro_batch_size_per_gpu=2",
    "ds.gradient_accumulation_steps=1",
    "train.warmup_steps=1",
    "train.eval_interval=0",
    "logging.wandb=false",
]
PER_RECIPE = {
    "ds_moe_1p3b_pr_moe_64_128": ["model.n_layers=4", "moe.num_experts=[4, 8]"],
    "mixtral_8x7b_autoep": ["model.n_layers=2", "moe.num_experts=4", "model.n_kv_heads=2", "model.vocab_size=1024"],
    "deepseek_v3_small_autoep": [
        "model.n_layers=2",
        "moe.num_experts=8",
        "model.hf_config={first_k_dense_replace: 1, n_shared_experts: 1, q_lora_rank: 32, "
        "kv_lora_rank: 16, qk_nope_head_dim: 16, qk_rope_head_dim: 8, v_head_dim: 16, "
        "n_group: 1, topk_group: 1}",
    ],
}


def train_published(rank: int, world_size: int, out_dir: str) -> None:
    from moe.train.trainer import Trainer

    results = {}
    for path in PUBLISHED:
        start = time.perf_counter()
        _, ds_config, _ = stated_layout(path)
        overrides = [
            *SHRINK,
            *PER_RECIPE.get(path.stem, ["model.n_layers=2", "moe.num_experts=4"]),
            f"train.max_steps={STEPS}",
        ]
        resolved = resolved_for(out_dir, path.stem, ds_config, overrides, world_size, recipe=path)
        trainer = Trainer(resolved, rank)
        records = [trainer.train_step() for _ in range(STEPS)]
        trainer.engine.destroy()
        results[path.stem] = {
            "loss": [r["loss"] for r in records],
            "seconds": time.perf_counter() - start,
            "precision": trainer.recipe.train.precision,
            "impl": trainer.recipe.moe.impl,
        }
    if rank == 0:
        with open(f"{out_dir}/results.json", "w") as f:
            json.dump(results, f, indent=1)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("published")
    run_on_ranks(train_published, out, ranks=2)
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("recipe", [p.stem for p in PUBLISHED])
def test_published_recipe_trains_two_steps(results, recipe):
    losses = results[recipe]["loss"]
    print(f"{recipe}: losses {losses}, {results[recipe]['seconds']:.1f} s")
    assert len(losses) == 2 and all(math.isfinite(x) and 0 < x < 20 for x in losses)
