"""moe.impl=autoep through the real Trainer on 2 gloo ranks (one spawn), against single-layout references.

- EP=2 against EP=1 (Mixtral, ZeRO-1): losses, grad norms, and the full step-1 gradients of the embedding, a
  router and an expert weight (experts gathered from both EP ranks).
- ZeRO-2 and ZeRO-3 against ZeRO-1 at EP=2.
- Qwen3-MoE (interleaved dense layers) and DeepSeek-V3 (shared expert, sigmoid routing, no aux loss) train.
- Router telemetry from AutoEP's own counters; export to the stock HF family reproduces the training logits.
"""
import json
import subprocess
import sys

import pytest
import torch

from tests.distributed.autoep_layouts_worker import CASES, STEPS
from tests.helpers import REPO, child_env, explain, run_distributed

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def autoep_runs(tmp_path_factory, deepspeed_cpu_adam_built):
    out = tmp_path_factory.mktemp("autoep")
    proc = run_distributed(REPO / "tests/distributed/autoep_layouts_worker.py", str(out), ranks=2)
    assert proc.returncode == 0, explain(proc)
    results = json.loads((out / "results.json").read_text())
    states = {name: [torch.load(out / f"{name}_rank{r}.pt") for r in range(2)] for name in CASES}
    return out, results, states


def test_every_case_trained_with_autoep_layers(autoep_runs):
    _, results, _ = autoep_runs
    assert set(results) == set(CASES)
    for name, r in results.items():
        assert len(r["loss"]) == STEPS and all(0 < l < 20 for l in r["loss"]), name
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
        torch.testing.assert_close(got, full, rtol=1e-5, atol=1e-8, msg=lambda m: f"{name}: {m}")


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


@pytest.mark.parametrize("name,model_type", [("mixtral_ep2_zero3", "mixtral"), ("qwen3_moe_ep2_zero3", "qwen3_moe"),
                                             ("deepseek_v3_ep2_zero2", "deepseek_v3")])
def test_export_reproduces_the_training_logits(autoep_runs, tmp_path, name, model_type):
    from transformers import AutoModelForCausalLM
    out_dir, _, states = autoep_runs
    proc = subprocess.run([sys.executable, "-m", "moe.export", str(out_dir / "runs" / name), str(tmp_path / "hf")],
                          cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()  # the stock class, no remote code
    assert model.config.model_type == model_type
    probe = torch.load(out_dir / "probe.pt")
    with torch.no_grad():
        logits = model(probe).logits
    torch.testing.assert_close(logits, states[name][0]["logits"], rtol=1e-4, atol=1e-4)
    assert model.generate(probe, max_new_tokens=3, do_sample=False).shape[1] == probe.shape[1] + 3
