"""Dropless routing that never hangs under expert parallelism, and the routing options through the real Trainer,
on 2 gloo ranks (one spawn: tests/distributed/dropless_worker.py).

DeepSpeed issue 6809: dropless capacity is computed per rank, and ranks whose all-to-all buffers differ in
shape hang. Rank 0 sends every token to expert 0 while rank 1 spreads them; the run must finish (the spawn's
timeout) and each rank's outputs and input gradients must equal the single-process loop reference.
"""
import json
import math

import pytest

from tests.distributed.dropless_worker import DROPLESS_CASES, STEPS, TOKENS
from tests.helpers import REPO, explain, run_distributed

pytestmark = pytest.mark.distributed
RATE = 0.01  # moe.bias_update_rate of the "balancing" case


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("dropless")
    proc = run_distributed(REPO / "tests/distributed/dropless_worker.py", str(out), ranks=2, timeout=300)
    assert proc.returncode == 0, explain(proc)
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
