"""Routing under expert parallelism on 2 gloo ranks (one spawn): dropless routing that never hangs, and the routing
options through the real Trainer.

1. Dropless under EP=2 with skewed routing (DeepSpeed issue 6809: dropless capacity is computed per rank, and ranks
   whose all-to-all buffers differ in shape hang). Rank 0 sends every token to expert 0 first, rank 1 spreads them.
   Forward, backward, an optimizer step and a second forward must complete on both ranks (the spawn's timeout), and
   each rank's outputs and input gradients must equal the single-process loop reference (moe/model/reference.py).
2. The routing options (bias balancing, z-loss, seq-aux; and a PR-MoE pyramid) train 2 steps through the real
   Trainer, save a checkpoint, and a fresh Trainer resumes from it.
"""

import json
import math

import pytest
import torch

from moe.model import MoEGPTConfig, build_model
from moe.model.reference import reference_from_layer
from moe.parallel import expert_parallel_rank
from tests.harness import resolved_for, run_on_ranks

pytestmark = pytest.mark.distributed
RATE = 0.01  # moe.bias_update_rate of the "balancing" case

# name: (top_k, routing bias)
DROPLESS_CASES = {"top1": (1, False), "top2": (2, False), "top3": (3, False), "top2_bias": (2, True)}
TRAINER_CASES = {
    "balancing": [
        "moe.bias_update_rate=0.01",
        "moe.top2_2nd_expert_sampling=false",
        "moe.drop_tokens=false",
        "moe.z_loss_coef=0.01",
        "moe.seq_aux_loss_coef=0.01",
    ],
    "pyramid": ["moe.num_experts=[2,4]", "moe.interval=1", "moe.z_loss_coef=0.01", "moe.seq_aux_loss_coef=0.01"],
}
STEPS = 2
TOKENS = (2, 8)  # (B, T) per rank


def dropless_case(rank: int, k: int, biased: bool) -> dict:
    common = dict(
        vocab_size=97,
        d_model=32,
        n_layers=1,
        n_heads=4,
        max_seq_len=16,
        num_experts=4,
        moe_interval=1,
        num_experts_per_tok=k,
        min_capacity=0,
        drop_tokens=False,
        use_rts=False,
        top2_2nd_expert_sampling=False,
        bias_update_rate=0.01 if biased else 0.0,
    )
    layer = build_model(MoEGPTConfig(ep_size=2, **common), seed=5, ep_rank=expert_parallel_rank(2)).layers[0].mlp
    layer.moe.set_deepspeed_parallelism()  # what deepspeed.initialize does: hand the gate its EP group
    full = build_model(MoEGPTConfig(ep_size=1, **common), seed=5).layers[0].mlp  # every expert, one process
    if biased:
        for module in (layer, full):
            module.gate.routing_bias.copy_(torch.tensor([0.05, -0.05, 0.1, 0.0]))
    generator = torch.Generator().manual_seed(100 + rank)
    x = 20.0 * torch.randn(*TOKENS, 32, generator=generator)  # (B, T, d): logits of a few units, decisive routing
    if rank == 0:  # skew: push every token far along expert 0's router direction
        direction = full.gate.wg.weight[0].detach()
        x = 0.005 * x + 200.0 * direction / direction.norm()
    x.requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    grad_out = torch.randn(*TOKENS, 32, generator=generator)

    out, _ = layer.train()(x)
    local_counts = layer.moe.deepspeed_moe.exp_counts.tolist()  # (E,) routes this rank asked for
    out.backward(grad_out)
    torch.optim.SGD(layer.parameters(), lr=0.1).step()
    out_after_step, _ = layer(x.detach())
    ref = reference_from_layer(full.train(), x_ref)
    ref.backward(grad_out)
    out, ref = out.detach(), ref.detach()
    return {
        "local_counts": local_counts,
        "out_max_diff": float((out - ref).abs().max()),
        "out_scale": float(ref.abs().max()),
        "grad_max_diff": float((x.grad - x_ref.grad).abs().max()),
        "grad_scale": float(x_ref.grad.abs().max()),
        "after_step_finite": bool(torch.isfinite(out_after_step).all()),
    }


def trainer_case(rank: int, world_size: int, out_dir: str, name: str, overrides: list[str]) -> dict:
    from moe.train.trainer import Trainer

    def make_trainer(resume: bool) -> Trainer:
        resolved = resolved_for(
            out_dir, name, "zero1.json", ["moe.ep_size=2", "train.eval_interval=0", *overrides], world_size
        )
        return Trainer(resolved, rank, resume=resume)

    def biases(trainer: Trainer) -> list[list[float]]:
        return [
            block.mlp.gate.routing_bias.tolist()
            for block in trainer.engine.module.layers
            if block.is_moe and block.mlp.gate.bias_update_rate > 0
        ]

    def weights(trainer: Trainer) -> dict[str, float]:  # this rank's parameters (its experts), summed
        return {n: float(p.double().sum()) for n, p in trainer.engine.module.named_parameters()}

    trainer = make_trainer(resume=False)
    records, metrics, bias = [], [], []  # per step: the record, the router telemetry (global loads), the biases
    for _ in range(STEPS):
        records.append(trainer.train_step())
        metrics.append(trainer.router_metrics())
        bias.append(biases(trainer))
    trainer.save()
    states = trainer.run_dir / "checkpoints" / f"global_step{STEPS}" / "mp_rank_00_model_states.pt"
    saved = torch.load(states, map_location="cpu", weights_only=False)["module"]
    result = {
        "loss": [r["loss"] for r in records],
        "finite": all(math.isfinite(r["loss"]) and math.isfinite(r["aux_loss"]) for r in records),
        "router_metrics": metrics,
        "bias": bias,
        "weights": weights(trainer),
        "saved_bias": [value.tolist() for key, value in saved.items() if key.endswith("routing_bias")],
    }
    trainer.engine.destroy()
    resumed = make_trainer(resume=True)
    result.update(resumed_bias=biases(resumed), resumed_weights=weights(resumed))
    resumed.engine.destroy()
    return result


def route_and_train(rank: int, world_size: int, out_dir: str) -> None:
    results = {
        "dropless": {name: dropless_case(rank, k, biased) for name, (k, biased) in DROPLESS_CASES.items()},
        "trainer": {
            name: trainer_case(rank, world_size, out_dir, name, overrides) for name, overrides in TRAINER_CASES.items()
        },
    }
    with open(f"{out_dir}/rank{rank}.json", "w") as f:
        json.dump(results, f, indent=1)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("routing_ep")
    run_on_ranks(route_and_train, out, ranks=2, timeout=300)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.parametrize("case", list(DROPLESS_CASES))
def test_skewed_dropless_ep2_matches_the_loop_reference_on_every_rank(ranks, case):
    rank0, rank1 = ranks[0]["dropless"][case], ranks[1]["dropless"][case]
    tokens = TOKENS[0] * TOKENS[1]
    assert rank0["local_counts"][0] == tokens  # the skew: all of rank 0's tokens picked expert 0
    assert max(rank1["local_counts"]) < tokens  # rank 1's are spread
    for r, result in enumerate((rank0, rank1)):
        # fp32, same weights: only summation order may differ (measured <= 2e-7 of the output scale)
        assert result["out_max_diff"] <= 1e-5 * result["out_scale"], (r, result)
        assert result["grad_max_diff"] <= 1e-5 * result["grad_scale"], (r, result)
        assert result["after_step_finite"], r


def test_routing_options_train_with_finite_losses(ranks):
    for name in ("balancing", "pyramid"):
        results = [rank["trainer"][name] for rank in ranks]
        assert all(r["finite"] and len(r["loss"]) == STEPS for r in results), name
        assert results[0]["loss"] == results[1]["loss"]  # all-reduced: every rank logs the same
        for metrics in results[0]["router_metrics"]:
            for key, value in metrics.items():
                if key.endswith(("/z_loss", "/seq_aux_loss")):
                    assert value > 0, (name, key)


def expected_step(load: list[int]) -> list[float]:
    mean = sum(load) / len(load)
    return [RATE * ((mean > n) - (mean < n)) for n in load]  # rate * sign(mean - load)


def test_bias_moves_toward_balance_from_the_global_load_and_stays_identical_across_ranks(ranks):
    rank0, rank1 = ranks[0]["trainer"]["balancing"], ranks[1]["trainer"]["balancing"]
    assert rank0["bias"] == rank1["bias"]  # bit-identical on both ranks after every step
    previous = [0.0] * 4
    for step in range(STEPS):
        # the telemetry's tokens_per_expert is the load summed over both ranks (dropless: every route is kept)
        load = rank0["router_metrics"][step]["router/layer1/tokens_per_expert"]
        (bias,) = rank0["bias"][step]
        moved = [b - p for b, p in zip(bias, previous)]
        assert moved == pytest.approx(expected_step(load), abs=1e-6), (step, load)
        previous = bias
    assert any(b != 0 for b in rank0["bias"][0][0])


def test_bias_is_saved_in_the_checkpoint_and_restored_on_resume(ranks):
    for rank in ranks:
        result = rank["trainer"]["balancing"]
        assert result["saved_bias"] == result["bias"][-1]
        assert result["resumed_bias"] == result["bias"][-1]


def test_pyramid_checkpoint_resumes_every_layers_experts(ranks):
    for rank in ranks:
        result = rank["trainer"]["pyramid"]
        assert any(".deepspeed_experts." in name for name in result["weights"])
        assert result["resumed_weights"] == result["weights"]


def test_pyramid_reports_each_layer_at_its_own_width(ranks):
    metrics = ranks[0]["trainer"]["pyramid"]["router_metrics"][0]
    assert len(metrics["router/layer0/tokens_per_expert"]) == 2
    assert len(metrics["router/layer1/tokens_per_expert"]) == 4
    routes = 8 * 64 * 2 * 2  # micro-batch x seq_len x ranks x top-2, one step
    for layer in (0, 1):
        kept = sum(metrics[f"router/layer{layer}/tokens_per_expert"])
        assert kept == pytest.approx(routes * (1 - metrics[f"router/layer{layer}/dropped_frac"]))
    assert math.isfinite(metrics["router/layer1/router_entropy"])
