"""`train.data_seed` fixes the training blocks' order apart from `train.seed`, so a seed repeat can vary the
initialization alone (the MoE-against-dense study's seed noise, docs/moe_vs_dense.md): the real Trainer on one
rank, built three times."""

import json
from pathlib import Path

import torch

from tests.harness import resolved_for, run_on_ranks

CASES = {"seed1": [], "seed2-data1": ["train.seed=2", "train.data_seed=1"], "seed2": ["train.seed=2"]}


def build_cases(rank: int, world_size: int, out_dir: str) -> None:
    from moe.train.trainer import Trainer

    out = {}
    for name, overrides in CASES.items():
        base = ["train.seed=1", "train.max_steps=4", "train.warmup_steps=1", "moe.ep_size=1", "logging.wandb=false"]
        trainer = Trainer(resolved_for(out_dir, name, "zero1.json", [*base, *overrides], world_size=1), rank)
        first = trainer.batches.batch(0)  # (micro batch, seq_len + 1) token ids
        params = torch.cat([p.detach().flatten() for p in trainer.engine.module.parameters()])
        out[name] = {"batch": first.tolist(), "param_sum": params.double().sum().item(), "param0": params[:8].tolist()}
        trainer.engine.destroy()
    Path(out_dir, "cases.json").write_text(json.dumps(out))


def test_data_seed_fixes_the_data_order_and_seed_the_initialization(tmp_path):
    run_on_ranks(build_cases, tmp_path, ranks=1)
    cases = json.loads((tmp_path / "cases.json").read_text())
    assert cases["seed2-data1"]["batch"] == cases["seed1"]["batch"]  # data order: data_seed's
    assert cases["seed2"]["batch"] != cases["seed1"]["batch"]  # unset, it follows seed
    assert cases["seed2-data1"]["param0"] == cases["seed2"]["param0"]  # initialization: seed's
    assert cases["seed2-data1"]["param0"] != cases["seed1"]["param0"]
