"""moe.impl=autoep through the real Trainer on 2 gloo ranks (one spawn for every case), against single-layout
references.

- EP=2 against EP=1 (Mixtral, ZeRO-1): losses, grad norms, and the full step-1 gradients of the embedding, a
  router and an expert weight (experts gathered from both EP ranks).
- ZeRO-2 and ZeRO-3 against ZeRO-1 at EP=2; CPU offload; bf16.
- Qwen3-MoE (interleaved dense layers) and DeepSeek-V3 (shared expert, sigmoid routing, no aux loss) train.
- Router telemetry from AutoEP's own counters; export to the stock HF family reproduces the training logits.
- The pinned transformers works with AutoEP (5.23.0 breaks it): a tiny random HF Mixtral straight through
  deepspeed.initialize, ZeRO-1 then ZeRO-3, gives the plain single-process HF forward's loss and trains 2 steps.
Each case trains the tiny recipe as a stock HF family. Step 1 is driven by hand so that the full (ZeRO-gathered)
gradients can be read between backward and step; every case then saves a checkpoint and records its eval-mode
logits on a fixed batch, which the test compares with the `python -m moe.export` output.
"""

import json
import re
import sys
from importlib.metadata import version

import pytest
import torch

from tests.harness import resolved_for, run_on_ranks
from tests.helpers import REPO, run

pytestmark = pytest.mark.distributed
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
COMPAT_STAGES = (1, 3)  # ZeRO stages of the plain HF Mixtral check
WATCHED = (".embed_tokens.weight", ".layers.1.mlp.router.gate.weight", ".layers.1.mlp.experts.w2")
AUTOEP = [
    "moe.impl=autoep",
    "model.n_kv_heads=2",
    "moe.interval=1",
    "moe.capacity_factor=1.0",
    "moe.eval_capacity_factor=1.0",
    "train.eval_interval=0",
]


def first_step_by_hand(trainer) -> tuple[float, dict]:
    """Step 1 as train_step does it, reading full gradients between backward and step."""
    from deepspeed.utils import safe_get_full_grad

    from moe.parallel import all_reduce_mean

    engine = trainer.engine
    ids = trainer.batches.batch(0).to(engine.device)  # (B, T)
    out = engine(ids, labels=ids)
    engine.backward(out.loss)
    grads = {
        name: safe_get_full_grad(p).detach().clone()
        for name, p in engine.module.named_parameters()
        if name.endswith(WATCHED)
    }
    engine.step()
    trainer.step = 1
    (loss,) = all_reduce_mean([float(out.loss)])
    return loss, grads


def tiny_mixtral():
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    return MixtralForCausalLM(
        MixtralConfig(
            vocab_size=128,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_local_experts=4,
            num_experts_per_tok=2,
            max_position_embeddings=64,
        )
    )


def train_stage(stage: int, rank: int) -> dict:
    import deepspeed

    model = tiny_mixtral()
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(100 + rank))  # (B, T) per rank
    with torch.no_grad():
        reference = model(ids, labels=ids).loss.item()
    config = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": stage},
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
        "expert_parallel": {"enabled": True, "autoep_size": 2, "preset_model": "mixtral"},
    }
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


def train_families(rank: int, world_size: int, out: str) -> None:
    from moe.train.trainer import Trainer

    results = {}
    probe = torch.randint(0, 1000, (1, 24), generator=torch.Generator().manual_seed(7))  # (1, T), same on all ranks
    for name, (family, ep_size, ds_config, extra) in CASES.items():
        overrides = [*AUTOEP, f"model.family={family}", f"moe.ep_size={ep_size}", *extra]
        trainer = Trainer(resolved_for(out, name, ds_config, overrides, world_size), rank)
        loss1, grads = first_step_by_hand(trainer)
        records = [trainer.train_step() for _ in range(STEPS - 1)]
        router = trainer.router_metrics()
        trainer.save()
        trainer.engine.eval()
        with torch.no_grad():
            logits = trainer.engine(probe).logits.float()  # (1, T, V)
        torch.save({"grads": grads, "logits": logits}, f"{out}/{name}_rank{rank}.pt")
        results[name] = {
            "loss": [loss1] + [r["loss"] for r in records],
            "grad_norm": [r["grad_norm"] for r in records],
            "moe_layers": type(trainer.engine.module.model.layers[-1].mlp).__name__,
            "router": router,
        }
        trainer.engine.destroy()
    compat = [None] * world_size
    torch.distributed.all_gather_object(compat, {f"rank{rank}_zero{s}": train_stage(s, rank) for s in COMPAT_STAGES})
    if rank == 0:
        torch.save(probe, f"{out}/probe.pt")
        with open(f"{out}/results.json", "w") as f:
            json.dump(results, f, indent=1)
        with open(f"{out}/compat.json", "w") as f:
            json.dump({k: v for r in compat for k, v in r.items()}, f, indent=1)


@pytest.fixture(scope="module")
def autoep_runs(tmp_path_factory, deepspeed_cpu_adam_built):
    out = tmp_path_factory.mktemp("autoep")
    run_on_ranks(train_families, out, ranks=2)
    results = json.loads((out / "results.json").read_text())
    states = {name: [torch.load(out / f"{name}_rank{r}.pt") for r in range(2)] for name in CASES}
    return out, results, states


def test_installed_transformers_is_the_pinned_one():
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (REPO / "requirements.txt").read_text(), re.M))
    assert version("transformers") == pins["transformers"]


def test_autoep_mixtral_matches_plain_hf_forward_under_zero1_and_zero3(autoep_runs):
    out, _, _ = autoep_runs
    results = json.loads((out / "compat.json").read_text())
    assert len(results) == 4
    for name, r in results.items():
        assert r["moe_layer"] == "AutoEPMoELayer", name  # the HF sparse MoE block was swapped for AutoEP's
        assert r["losses"][0] == pytest.approx(r["reference"], rel=1e-6), name
    for rank in (0, 1):  # ZeRO-3 trains like ZeRO-1
        assert results[f"rank{rank}_zero3"]["losses"] == pytest.approx(results[f"rank{rank}_zero1"]["losses"], rel=1e-5)


def test_every_case_trained_with_autoep_layers(autoep_runs):
    _, results, _ = autoep_runs
    assert set(results) == set(CASES)
    for name, r in results.items():
        assert len(r["loss"]) == STEPS and all(0 < loss < 20 for loss in r["loss"]), name
        assert r["moe_layers"] == "AutoEPMoELayer", name  # the HF sparse block was swapped for AutoEP's


def test_ep2_matches_ep1(autoep_runs):
    _, results, states = autoep_runs
    ep1, ep2 = results["mixtral_ep1_zero1"], results["mixtral_ep2_zero1"]
    # Same weights and data per data-parallel rank; only float summation order may differ.
    assert ep2["loss"] == pytest.approx(ep1["loss"], rel=1e-6)
    assert ep2["grad_norm"] == pytest.approx(ep1["grad_norm"], rel=1e-5)
    g1 = states["mixtral_ep1_zero1"][0]["grads"]
    g2 = [s["grads"] for s in states["mixtral_ep2_zero1"]]
    assert len(g1) == 3
    for name, full in g1.items():
        if ".experts." in name:  # EP=2: each rank holds half of the experts, (E/2, d, ff)
            assert g2[0][name].shape[0] == full.shape[0] // 2
            got = torch.cat([g2[0][name], g2[1][name]])
        else:
            got = g2[0][name]
            torch.testing.assert_close(g2[1][name], got, rtol=0, atol=0)  # replicated: identical on both ranks
        torch.testing.assert_close(got, full, rtol=1e-5, atol=1e-8, msg=lambda m, name=name: f"{name}: {m}")


def test_zero2_and_zero3_match_zero1(autoep_runs):
    _, results, _ = autoep_runs
    reference = results["mixtral_ep2_zero1"]
    for name in ("mixtral_ep2_zero2", "mixtral_ep2_zero3"):
        assert results[name]["loss"] == pytest.approx(reference["loss"], rel=1e-6), name
        assert results[name]["grad_norm"] == pytest.approx(reference["grad_norm"], rel=1e-5), name


def test_cpu_offload_matches_no_offload(autoep_runs):
    _, results, _ = autoep_runs
    offload, reference = results["mixtral_ep2_zero2_offload"], results["mixtral_ep2_zero2"]
    assert offload["loss"] == pytest.approx(reference["loss"], rel=1e-6)  # DeepSpeedCPUAdam against torch AdamW
    assert offload["grad_norm"] == pytest.approx(reference["grad_norm"], rel=1e-5)


def test_bf16_tracks_fp32(autoep_runs):
    _, results, _ = autoep_runs
    bf16, fp32 = results["mixtral_ep2_zero1_bf16"], results["mixtral_ep2_zero1"]
    assert bf16["loss"] == pytest.approx(fp32["loss"], rel=1e-2)  # the bf16 bound of test_layouts.py
    assert bf16["grad_norm"] == pytest.approx(fp32["grad_norm"], rel=1e-2)
    assert bf16["grad_norm"] != pytest.approx(fp32["grad_norm"], rel=1e-5)  # and it did run in bf16


def test_router_telemetry_counts_every_route(autoep_runs):
    _, results, _ = autoep_runs
    routes = 2 * 8 * 64 * 2  # ranks x micro-batch x seq_len x top_k, per step
    for name, r in results.items():
        layers = {k.split("/")[1] for k in r["router"]}
        assert layers, name
        for layer in layers:
            counts = r["router"][f"router/{layer}/tokens_per_expert"]
            assert len(counts) == 4 and sum(counts) == STEPS * routes, (name, layer)  # no call since step 0
            assert r["router"][f"router/{layer}/dropped_frac"] == 0.0  # AutoEP is dropless
        has_entropy = any(k.endswith("router_entropy") for k in r["router"])
        assert has_entropy == (not name.startswith("deepseek")), name  # DeepSeek-V3 returns no router logits
    assert {k.split("/")[1] for k in results["qwen3_moe_ep2_zero3"]["router"]} == {"layer1"}  # interval 2


@pytest.mark.parametrize(
    "name,model_type",
    [("mixtral_ep2_zero3", "mixtral"), ("qwen3_moe_ep2_zero3", "qwen3_moe"), ("deepseek_v3_ep2_zero2", "deepseek_v3")],
)
def test_export_reproduces_the_training_logits(autoep_runs, tmp_path, name, model_type):
    from transformers import AutoModelForCausalLM

    out_dir, _, states = autoep_runs
    proc = run(
        [sys.executable, "-m", "moe.export", str(out_dir / "runs" / name), str(tmp_path / "hf")],
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()  # the stock class, no remote code
    assert model.config.model_type == model_type
    probe = torch.load(out_dir / "probe.pt")
    with torch.no_grad():
        logits = model(probe).logits
    torch.testing.assert_close(logits, states[name][0]["logits"], rtol=1e-4, atol=1e-4)
    assert model.generate(probe, max_new_tokens=3, do_sample=False).shape[1] == probe.shape[1] + 3
