"""The expert-aware gradient norm (moe/train/grad_norm.py) on 2 real gloo ranks: at EP=2 each rank holds half of the
experts, and the norm every rank computes must be the norm of the whole model's gradient, as one process holding
every expert (EP=1) computes it with torch, where DeepSpeed's own fp32 path would average the ranks' local norms."""

import json

import pytest
import torch

from moe.model import MoEGPTConfig, build_model
from moe.parallel import expert_parallel_rank
from tests.harness import run_on_ranks

pytestmark = pytest.mark.distributed
CONFIG = dict(
    vocab_size=97,
    d_model=32,
    n_layers=2,
    n_heads=4,
    max_seq_len=16,
    num_experts=4,
    moe_interval=1,
    num_experts_per_tok=2,
    drop_tokens=False,
    use_rts=False,
    top2_2nd_expert_sampling=False,
)


def backward(model) -> None:
    ids = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(3))  # the same batch on every rank
    model(ids, labels=ids).loss.backward()


def norms(rank: int, world_size: int, out: str) -> None:
    from moe.train.grad_norm import expert_aware_global_norm

    shard = build_model(MoEGPTConfig(ep_size=2, **CONFIG), seed=1, ep_rank=expert_parallel_rank(2))
    for layer in shard.moe_layers():
        layer.moe.set_deepspeed_parallelism()  # the expert-parallel group, as deepspeed.initialize hands it over
    backward(shard)
    # The same batch on both ranks: each expert received its tokens from both, twice a single batch's gradient. The
    # engine averages over the 2 data-parallel ranks; so does this, which makes it the gradient of that one batch.
    for name, p in shard.named_parameters():
        if ".deepspeed_experts." in name:
            p.grad /= world_size
    whole = build_model(MoEGPTConfig(ep_size=1, **CONFIG), seed=1)  # every expert, the same weights by global name
    backward(whole)
    local = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in shard.parameters()]))
    result = {
        "expert_aware": float(expert_aware_global_norm(list(shard.parameters()))),
        "whole_model": float(torch.nn.utils.get_total_norm([p.grad for p in whole.parameters()])),
        "this_rank_only": float(local),
    }
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump(result, f)


def test_every_rank_gets_the_norm_of_the_whole_models_gradient(tmp_path):
    run_on_ranks(norms, tmp_path, ranks=2, timeout=300)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r in ranks:  # fp32, the same gradients summed in another order
        assert r["expert_aware"] == pytest.approx(r["whole_model"], rel=1e-6)
        assert r["this_rank_only"] < r["whole_model"] * (1 - 1e-4)  # without the other rank's experts: less
    assert ranks[0]["expert_aware"] == ranks[1]["expert_aware"]  # every rank clips by the same factor
