"""Parallel layouts and precision against single-layout references, on 2 real gloo ranks (one spawn for every
layout; tests/distributed/layouts_worker.py lists them).

- EP=2 against EP=1: losses, raw step-1 gradients of every (global-named) parameter, grad norms, and the update
  under active gradient clipping.
- ZeRO-1 and ZeRO-2 against ZeRO-0 at the same EP (native MoE); ZeRO-1/2/3 against ZeRO-0 for the dense model.
- ZeRO-Offload (DeepSpeedCPUAdam on the host) against no offload.
- Gradient accumulation 4 x micro-batch 1 against 1 x micro-batch 4, dense and MoE.
- Activation checkpointing against none, including the router telemetry (a recompute must not count twice).
- bf16 against fp32, within a stated bf16 tolerance.
fp32 unless named. The only differences allowed in fp32 are float reduction order (all-to-all vs local experts,
gloo sums, accumulation order).
"""
import json

import pytest
import torch

from tests.distributed.layouts_worker import LAYOUTS, STEPS
from tests.helpers import REPO, explain, run_distributed

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def layouts(tmp_path_factory, deepspeed_cpu_adam_built):
    out = tmp_path_factory.mktemp("layouts")
    proc = run_distributed(REPO / "tests/distributed/layouts_worker.py", str(out), ranks=2)
    assert proc.returncode == 0, explain(proc)
    results = json.loads((out / "results.json").read_text())
    states = {name: [torch.load(out / f"{name}_rank{r}.pt") for r in range(2)] for name in LAYOUTS}
    return results, states


def merged(states: list[dict], key: str) -> dict:
    """One dict of global-named tensors from both ranks; replicated names must agree exactly."""
    out = {}
    for state in states:
        for name, tensor in state[key].items():
            if name in out:
                assert torch.equal(out[name], tensor), f"replicas of {name} differ across ranks"
            out[name] = tensor
    return out


def test_every_layout_ran_all_steps(layouts):
    results, _ = layouts
    assert set(results) == set(LAYOUTS)
    for name, r in results.items():
        assert len(r["loss"]) == STEPS and all(l == l for l in r["loss"]), name


@pytest.mark.parametrize("zero", ["zero0", "zero1"])
def test_ep2_losses_match_ep1(layouts, zero):
    results, _ = layouts
    ep1, ep2 = results[f"ep1_{zero}"]["loss"], results[f"ep2_{zero}"]["loss"]
    # Same weights, data and gate-sampling streams: only float summation order may differ (measured ~4e-8).
    assert ep2 == pytest.approx(ep1, rel=1e-6)


def test_ep2_step1_gradients_match_ep1(layouts):
    _, states = layouts
    g1, g2 = merged(states["ep1_zero0"], "step1_grads"), merged(states["ep2_zero0"], "step1_grads")
    assert set(g1) == set(g2) and any(".experts." in n for n in g1)
    for name in g1:
        torch.testing.assert_close(g2[name], g1[name], rtol=1e-5, atol=1e-9, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("zero", ["zero0", "zero1"])
def test_ep2_grad_norm_matches_ep1(layouts, zero):
    results, _ = layouts
    ep1, ep2 = results[f"ep1_{zero}"]["grad_norm"], results[f"ep2_{zero}"]["grad_norm"]
    assert None not in ep1 + ep2
    assert ep2 == pytest.approx(ep1, rel=1e-5)


def test_zero_stages_match_zero0(layouts):
    results, states = layouts
    reference = results["ep2_zero0"]
    for name in ("ep2_zero1", "ep2_zero2"):
        assert results[name]["loss"] == pytest.approx(reference["loss"], rel=1e-6), name
        assert results[name]["grad_norm"] == pytest.approx(reference["grad_norm"], rel=1e-5), name
    final0 = merged(states["ep2_zero0"], "params")
    for name in ("ep2_zero1", "ep2_zero2"):
        final = merged(states[name], "params")
        for p in final0:
            torch.testing.assert_close(final[p], final0[p], rtol=1e-5, atol=1e-6, msg=lambda m: f"{name} {p}: {m}")


def test_batched_experts_at_ep2_match_the_loop_at_ep1(layouts):
    """moe.batched_experts (one bmm per projection over the local experts) is the same math as DeepSpeed's loop."""
    results, states = layouts
    batched, loop = results["ep2_zero1_batched"], results["ep1_zero1"]
    assert batched["loss"] == pytest.approx(loop["loss"], rel=1e-6)
    assert batched["grad_norm"] == pytest.approx(loop["grad_norm"], rel=1e-5)
    assert_final_params_match(states, "ep2_zero1_batched", "ep1_zero1")


def test_dense_replicas_stay_identical_under_ep(layouts):
    _, states = layouts
    merged(states["ep2_zero0"], "params")  # raises if a replicated parameter drifted between ranks


def assert_final_params_match(states, name, reference, rtol=1e-5, atol=1e-5):
    """Every final (global-named) parameter equal. atol: Adam divides by sqrt(v), so for a near-zero gradient (a
    rare token's embedding row) float-order noise moves the update by up to ~1e-3 of lr (measured: at most 5.7e-6,
    on 1-3 of 65,536 weights)."""
    final0, final = merged(states[reference], "params"), merged(states[name], "params")
    assert set(final) == set(final0)
    for p in final0:
        torch.testing.assert_close(final[p], final0[p], rtol=rtol, atol=atol, msg=lambda m: f"{name} {p}: {m}")


def test_ep2_clipped_update_matches_ep1(layouts):
    results, states = layouts
    ep1, ep2 = results["ep1_zero0_clip"], results["ep2_zero0_clip"]
    assert min(ep1["grad_norm"]) > 0.05  # clipping was active on every step
    assert ep2["grad_norm"] == pytest.approx(ep1["grad_norm"], rel=1e-5)
    assert ep2["loss"] == pytest.approx(ep1["loss"], rel=1e-6)
    assert_final_params_match(states, "ep2_zero0_clip", "ep1_zero0_clip")
    # and the clip changed the update, far beyond that tolerance (Adam undoes a constant scale, not a per-step one)
    clipped, unclipped = merged(states["ep2_zero0_clip"], "params"), merged(states["ep2_zero0"], "params")
    assert max(float((clipped[p] - unclipped[p]).abs().max()) for p in clipped) > 1e-3


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_dense_zero_stages_match_zero0(layouts, stage):
    results, states = layouts
    name, reference = f"dense_zero{stage}", results["dense_zero0"]
    assert results[name]["loss"] == pytest.approx(reference["loss"], rel=1e-6)
    assert results[name]["grad_norm"] == pytest.approx(reference["grad_norm"], rel=1e-5)
    assert_final_params_match(states, name, "dense_zero0")


def test_cpu_offload_matches_no_offload(layouts):
    results, states = layouts
    # DeepSpeedCPUAdam (SIMD C++ on the host) against torch's AdamW: same math, different float op order
    assert results["ep2_zero2_offload"]["loss"] == pytest.approx(results["ep2_zero2"]["loss"], rel=1e-6)
    assert results["ep2_zero2_offload"]["grad_norm"] == pytest.approx(results["ep2_zero2"]["grad_norm"], rel=1e-5)
    assert_final_params_match(states, "ep2_zero2_offload", "ep2_zero2")


@pytest.mark.parametrize("model", ["dense", "ep2"])
def test_accumulating_4_micro_batches_of_1_matches_1_micro_batch_of_4(layouts, model):
    results, states = layouts
    accum, single = f"{model}_micro1_accum4", f"{model}_micro4_accum1"
    assert results[accum]["loss"] == pytest.approx(results[single]["loss"], rel=1e-6)
    assert results[accum]["grad_norm"] == pytest.approx(results[single]["grad_norm"], rel=1e-5)
    assert_final_params_match(states, accum, single)


def test_activation_checkpointing_changes_nothing_but_memory(layouts):
    results, states = layouts
    ckpt, plain = results["ep2_zero1_actckpt"], results["ep2_zero1"]
    assert ckpt["loss"] == pytest.approx(plain["loss"], rel=1e-6)  # the recompute replays the same gate sampling
    assert ckpt["grad_norm"] == pytest.approx(plain["grad_norm"], rel=1e-5)
    assert_final_params_match(states, "ep2_zero1_actckpt", "ep2_zero1")
    assert plain["router"] and ckpt["router"] == plain["router"]  # tokens per expert: the recompute is not counted


@pytest.mark.parametrize("name", ["ep2_zero1_actckpt", "ep2_zero1_recompute_mlp"])
def test_selective_recompute_changes_nothing_but_memory(layouts, name):
    """train.recompute=mlp (experts and dense MLPs only) trains exactly as without checkpointing, as blocks does."""
    results, states = layouts
    ckpt, plain = results[name], results["ep2_zero1"]
    assert ckpt["loss"] == pytest.approx(plain["loss"], rel=1e-6)
    assert ckpt["grad_norm"] == pytest.approx(plain["grad_norm"], rel=1e-5)
    assert_final_params_match(states, name, "ep2_zero1")
    assert ckpt["router"] == plain["router"]


@pytest.mark.parametrize("bf16_name, fp32_name", [("ep2_zero1_bf16", "ep2_zero1"), ("dense_zero3_bf16", "dense_zero0")])
def test_bf16_tracks_fp32(layouts, bf16_name, fp32_name):
    results, _ = layouts
    bf16, fp32 = results[bf16_name], results[fp32_name]
    # bf16 keeps 8 mantissa bits (2^-9 ~ 2e-3 relative rounding per op). Over 3 steps of the tiny model (MoE, ZeRO-1):
    # measured loss within 2.6e-5 and grad norm within 1.1e-3 of fp32; the bound is 1% for both.
    assert bf16["loss"] == pytest.approx(fp32["loss"], rel=1e-2)
    assert bf16["grad_norm"] == pytest.approx(fp32["grad_norm"], rel=1e-2)
    assert bf16["grad_norm"] != pytest.approx(fp32["grad_norm"], rel=1e-5)  # and it did run in bf16
