"""AutoEP (ds_config `expert_parallel`) on a tiny random HF Mixtral, 2 gloo ranks, ZeRO-1 then ZeRO-3.

Checks that the pinned transformers works with this DeepSpeed's AutoEP: the expert-parallel engine's loss must
equal the plain single-process HF forward on the same weights and batch, and training must run 2 steps.
Started by tests/distributed/test_autoep.py; writes results.json from rank 0.
"""
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import deepspeed  # noqa: E402
import torch  # noqa: E402
from transformers import MixtralConfig, MixtralForCausalLM  # noqa: E402

from moe.parallel import init_distributed  # noqa: E402  (DeepSpeed's, plus unlinking its /dev/shm buffer)

STAGES = (1, 3)


def tiny_mixtral() -> MixtralForCausalLM:
    torch.manual_seed(0)
    return MixtralForCausalLM(MixtralConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=64))


def run_stage(stage: int, rank: int) -> dict:
    model = tiny_mixtral()
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(100 + rank))  # (B, T) per rank
    with torch.no_grad():
        reference = model(ids, labels=ids).loss.item()
    config = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
              "zero_optimization": {"stage": stage},
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
              "expert_parallel": {"enabled": True, "autoep_size": 2, "preset_model": "mixtral"}}
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    losses = []
    for _ in range(2):
        loss = engine(ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    layer = type(engine.module.model.layers[0].mlp).__name__
    engine.destroy()
    return {"reference": reference, "losses": losses, "moe_layer": layer}


def main(out_dir: Path) -> None:
    rank, _ = init_distributed()
    results = {f"rank{rank}_zero{stage}": run_stage(stage, rank) for stage in STAGES}
    gathered = [None, None]
    torch.distributed.all_gather_object(gathered, results)
    if rank == 0:
        (out_dir / "results.json").write_text(json.dumps({k: v for r in gathered for k, v in r.items()}, indent=1))


if __name__ == "__main__":
    main(Path([a for a in sys.argv[1:] if not a.startswith("--local_rank")][0]))
