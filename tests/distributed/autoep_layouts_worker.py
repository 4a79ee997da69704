"""The AutoEP path (moe.impl=autoep) through the real Trainer on 2 gloo ranks, one spawn for every case.

Each case trains the tiny recipe as a stock HF family for a few steps. Step 1 is driven by hand so that the full
(ZeRO-gathered) gradients of a router, an expert and an embedding can be read between backward and step. Every
case then saves a checkpoint and records its eval-mode logits on a fixed batch, which the test compares with the
`python -m moe.export` output. Started by tests/distributed/test_autoep_path.py.
"""
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from deepspeed.utils import safe_get_full_grad  # noqa: E402

from moe.config import load_ds_config, load_recipe, resolve  # noqa: E402
from moe.parallel import all_reduce_mean, init_distributed  # noqa: E402
from moe.train.trainer import Trainer  # noqa: E402

# name: (family, ep_size, ds_config, extra overrides)
CASES = {
    "mixtral_ep1_zero1": ("mixtral", 1, "zero1.json", []),
    "mixtral_ep2_zero1": ("mixtral", 2, "zero1.json", []),
    "mixtral_ep2_zero2": ("mixtral", 2, "zero2.json", []),
    "mixtral_ep2_zero3": ("mixtral", 2, "zero3.json", []),
    "qwen3_moe_ep2_zero3": ("qwen3_moe", 2, "zero3.json", ["moe.interval=2"]),
    "deepseek_v3_ep2_zero2": ("deepseek_v3", 2, "zero2.json", ["moe.aux_loss_coef=0", "model.n_kv_heads=null"]),
    "mixtral_ep2_zero2_offload": ("mixtral", 2, "zero2_offload.json", []),
    "mixtral_ep2_zero1_bf16": ("mixtral", 2, "zero1_bf16.json", []),
}
STEPS = 3
WATCHED = (".embed_tokens.weight", ".layers.1.mlp.router.gate.weight", ".layers.1.mlp.experts.w2")


def tiny_recipe(family: str, ep_size: int, out_dir: Path, name: str, extra: list[str]):
    return load_recipe(REPO / "recipes/tiny.yaml", [
        "moe.impl=autoep", f"model.family={family}", "model.n_kv_heads=2", "moe.interval=1", f"moe.ep_size={ep_size}",
        "moe.capacity_factor=1.0", "moe.eval_capacity_factor=1.0", f"logging.runs_dir={out_dir / 'runs'}",
        f"logging.run_name={name}", "train.eval_interval=0", "logging.progress_bar=false", *extra])


def first_step_by_hand(trainer: Trainer) -> tuple[float, dict]:
    """Step 1 as train_step does it, reading full gradients between backward and step."""
    engine = trainer.engine
    ids = trainer.batches.batch(0).to(engine.device)  # (B, T)
    out = engine(ids, labels=ids)
    engine.backward(out.loss)
    grads = {name: safe_get_full_grad(p).detach().clone() for name, p in engine.module.named_parameters()
             if name.endswith(WATCHED)}
    engine.step()
    trainer.step = 1
    (loss,) = all_reduce_mean([float(out.loss)])
    return loss, grads


def main(out_dir: Path) -> None:
    rank, world_size = init_distributed()
    results = {}
    probe = torch.randint(0, 1000, (1, 24), generator=torch.Generator().manual_seed(7))  # (1, T), same on all ranks
    for name, (family, ep_size, ds_name, extra) in CASES.items():
        recipe = tiny_recipe(family, ep_size, out_dir, name, extra)
        resolved = resolve(recipe, load_ds_config(REPO / "ds_configs" / ds_name), world_size, ds_name)
        trainer = Trainer(resolved, rank)
        loss1, grads = first_step_by_hand(trainer)
        records = [trainer.train_step() for _ in range(STEPS - 1)]
        router = trainer.router_metrics()
        trainer.save()
        trainer.engine.eval()
        with torch.no_grad():
            logits = trainer.engine(probe).logits.float()  # (1, T, V)
        torch.save({"grads": grads, "logits": logits}, out_dir / f"{name}_rank{rank}.pt")
        results[name] = {"loss": [loss1] + [r["loss"] for r in records],
                         "grad_norm": [r["grad_norm"] for r in records],
                         "moe_layers": type(trainer.engine.module.model.layers[-1].mlp).__name__,
                         "router": router}
        trainer.engine.destroy()
    if rank == 0:
        torch.save(probe, out_dir / "probe.pt")
        (out_dir / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    main(Path(args[0]))
