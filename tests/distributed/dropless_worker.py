"""One 2-rank job for tests/distributed/test_dropless.py (one spawn for every case):

1. dropless under EP=2 with skewed routing: rank 0 sends every token to expert 0 first, rank 1 spreads them.
   Forward, backward, an optimizer step and a second forward must complete on both ranks; outputs and input
   gradients are compared with the single-process loop reference (moe/model/reference.py) on this rank's tokens.
2. the routing options (bias balancing, z-loss, seq-aux; and a PR-MoE pyramid) train 2 steps through the real
   Trainer, save a checkpoint, and a fresh Trainer resumes from it.

Each rank writes rank{R}.json with what the test asserts on.
"""
import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from moe.config import load_ds_config, load_recipe, resolve  # noqa: E402
from moe.model import MoEGPTConfig, build_model  # noqa: E402
from moe.model.reference import reference_from_layer  # noqa: E402
from moe.parallel import expert_parallel_rank, init_distributed  # noqa: E402
from moe.train.trainer import Trainer  # noqa: E402

# name: (top_k, routing bias)
DROPLESS_CASES = {"top1": (1, False), "top2": (2, False), "top3": (3, False), "top2_bias": (2, True)}
TRAINER_CASES = {
    "balancing": ["moe.bias_update_rate=0.01", "moe.top2_2nd_expert_sampling=false", "moe.drop_tokens=false",
                  "moe.z_loss_coef=0.01", "moe.seq_aux_loss_coef=0.01"],
    "pyramid": ["moe.num_experts=[2,4]", "moe.interval=1", "moe.z_loss_coef=0.01", "moe.seq_aux_loss_coef=0.01"],
}
STEPS = 2
TOKENS = (2, 8)  # (B, T) per rank


def dropless_case(rank: int, k: int, biased: bool) -> dict:
    common = dict(vocab_size=97, d_model=32, n_layers=1, n_heads=4, max_seq_len=16, num_experts=4, moe_interval=1,
                  num_experts_per_tok=k, min_capacity=0, drop_tokens=False, use_rts=False,
                  top2_2nd_expert_sampling=False, bias_update_rate=0.01 if biased else 0.0)
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
    return {"local_counts": local_counts,
            "out_max_diff": float((out - ref).abs().max()), "out_scale": float(ref.abs().max()),
            "grad_max_diff": float((x.grad - x_ref.grad).abs().max()), "grad_scale": float(x_ref.grad.abs().max()),
            "after_step_finite": bool(torch.isfinite(out_after_step).all())}


def trainer_case(rank: int, world_size: int, out_dir: Path, name: str, overrides: list[str]) -> dict:
    def make_trainer(resume: bool) -> Trainer:
        recipe = load_recipe(REPO / "recipes/tiny.yaml", [
            "moe.ep_size=2", f"logging.runs_dir={out_dir / 'runs'}", f"logging.run_name={name}",
            "train.eval_interval=0", "logging.progress_bar=false", *overrides])
        resolved = resolve(recipe, load_ds_config(REPO / "ds_configs/zero1.json"), world_size, "zero1.json")
        return Trainer(resolved, rank, resume=resume)

    def biases(trainer: Trainer) -> list[list[float]]:
        return [block.mlp.gate.routing_bias.tolist() for block in trainer.engine.module.layers
                if block.is_moe and block.mlp.gate.bias_update_rate > 0]

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
    result = {"loss": [r["loss"] for r in records],
              "finite": all(math.isfinite(r["loss"]) and math.isfinite(r["aux_loss"]) for r in records),
              "router_metrics": metrics, "bias": bias, "weights": weights(trainer),
              "saved_bias": [value.tolist() for key, value in saved.items() if key.endswith("routing_bias")]}
    trainer.engine.destroy()
    resumed = make_trainer(resume=True)
    result.update(resumed_bias=biases(resumed), resumed_weights=weights(resumed))
    resumed.engine.destroy()
    return result


def main(out_dir: Path) -> None:
    rank, world_size = init_distributed()
    results = {"dropless": {name: dropless_case(rank, k, biased) for name, (k, biased) in DROPLESS_CASES.items()},
               "trainer": {name: trainer_case(rank, world_size, out_dir, name, overrides)
                           for name, overrides in TRAINER_CASES.items()}}
    (out_dir / f"rank{rank}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    main(Path(args[0]))
