"""Router z-loss, the sequence-wise balance loss and aux-loss-free bias routing (moe/model/gate.py) against
hand-computed values, through the real DeepSpeed MoE layer; and their one-line config refusals. The bias update
after each step: tests/train/test_routing_bias.py."""

import math

import pytest
import torch

from moe.config import ConfigError, load_resolved
from moe.model import build_model
from moe.model.gate import RouterGate, biased_topk_routing, router_z_loss, sequence_balance_loss
from moe.model.moe_layer import MoEMLP
from tests.helpers import REPO
from tests.model.test_model import tiny_config


def gate_with_identity_router(num_experts: int, k: int, **kw) -> RouterGate:
    """A gate whose logits are its input (d = E, wg = I), so tests choose the logits directly."""
    gate = RouterGate(num_experts, num_experts, k=k, min_capacity=0, top2_2nd_expert_sampling=False, **kw)
    with torch.no_grad():
        gate.wg.weight.copy_(torch.eye(num_experts))
    return gate


def test_z_loss_is_the_mean_squared_logsumexp():
    logits = torch.tensor([[0.0, 0.0], [math.log(3), 0.0]])  # logsumexp: ln 2 and ln 4
    assert float(router_z_loss(logits)) == pytest.approx((math.log(2) ** 2 + math.log(4) ** 2) / 2)


def test_sequence_balance_loss_is_per_sequence_then_averaged():
    # 2 sequences x 2 tokens, 2 experts, top-1. Sequence A sends both tokens to expert 0, B one to each.
    probs = torch.tensor([[0.9, 0.1], [0.7, 0.3], [0.6, 0.4], [0.2, 0.8]])
    selected = torch.tensor([[1.0, 0], [1.0, 0], [1.0, 0], [0.0, 1]])
    # A: f = 2/(1*2) * [2, 0] = [2, 0], P = [0.8, 0.2] -> 1.6;  B: f = [1, 1], P = [0.4, 0.6] -> 1.0
    assert float(sequence_balance_loss(probs, selected, k=1, tokens_per_sequence=2)) == pytest.approx(1.3)
    # one 4-token sequence (the batch-level loss) differs: f = [1.5, 0.5], P = [0.6, 0.4] -> 1.1
    assert float(sequence_balance_loss(probs, selected, k=1, tokens_per_sequence=4)) == pytest.approx(1.1)


def test_the_gate_reports_both_losses_from_its_own_logits():
    gate = gate_with_identity_router(2, k=1, drop_tokens=False, z_loss_coef=1.0, seq_aux_loss_coef=1.0)
    gate.tokens_per_sequence = 2
    probs = torch.tensor([[0.9, 0.1], [0.7, 0.3], [0.6, 0.4], [0.2, 0.8]])
    gate(probs.log(), sparse_routes=True)
    z, seq_aux = gate.last_losses.z, gate.last_losses.seq_aux
    assert float(seq_aux.detach()) == pytest.approx(1.3, rel=1e-5)
    assert float(z.detach()) == pytest.approx(0.0, abs=1e-10)  # log-probabilities: logsumexp = 0 for every token
    z.backward()  # a coefficient > 0 keeps the gradient into the router
    assert gate.wg.weight.grad is not None


def test_model_loss_adds_each_router_loss_with_its_coefficient():
    config = tiny_config(aux_loss_coef=0.01, z_loss_coef=0.1, seq_aux_loss_coef=0.5)
    model = build_model(config, seed=0)
    ids = torch.randint(0, 97, (2, 16))
    out = model(ids, labels=ids)
    torch.testing.assert_close(out.loss, out.lm_loss + 0.01 * out.aux_loss + 0.1 * out.z_loss + 0.5 * out.seq_aux_loss)
    assert float(out.z_loss.detach()) > 0 and float(out.seq_aux_loss.detach()) > 0
    router = model.layers[1].mlp.gate.wg.weight
    (grad_z,) = torch.autograd.grad(out.z_loss, router, retain_graph=True)
    assert grad_z.abs().sum() > 0

    plain = build_model(tiny_config(), seed=0)  # coefficients 0: the terms are telemetry without a gradient
    out = plain(ids, labels=ids)
    assert not out.z_loss.requires_grad and not out.seq_aux_loss.requires_grad
    torch.testing.assert_close(out.loss, out.lm_loss + 0.01 * out.aux_loss)


def test_router_telemetry_reports_z_loss_and_seq_aux():
    from moe.model.router_stats import summarize

    layer = MoEMLP(tiny_config(z_loss_coef=0.1)).train()
    x = torch.randn(2, 8, 32)
    _, losses = layer(x)
    stats = summarize(layer.router_stats.sums)
    assert stats["z_loss"] == pytest.approx(float(losses.z.detach()))
    assert stats["seq_aux_loss"] == pytest.approx(float(losses.seq_aux.detach()))


def test_bias_changes_the_choice_but_weights_stay_unbiased_probabilities():
    probs = torch.tensor([[0.5, 0.3, 0.2]])
    logits = probs.log()
    out = biased_topk_routing(
        logits, torch.tensor([0.0, 0.25, 0.0]), k=1, capacity_factor=1.0, min_capacity=0, drop_tokens=False
    )
    assert out[3].tolist() == [[1]]  # 0.3 + 0.25 beats 0.5
    assert out[5].flatten().tolist() == pytest.approx([0.3])  # the weight is the unbiased probability
    out = biased_topk_routing(
        logits, torch.tensor([0.0, 0.0, 0.4]), k=2, capacity_factor=1.0, min_capacity=0, drop_tokens=False
    )
    assert out[3].flatten().tolist() == [2, 0]  # scores 0.5, 0.3, 0.6
    assert out[5].flatten().tolist() == pytest.approx([0.2 / 0.7, 0.5 / 0.7])  # renormalized unbiased
    unbiased = biased_topk_routing(logits, torch.zeros(3), k=2, capacity_factor=1.0, min_capacity=0, drop_tokens=False)
    assert unbiased[3].flatten().tolist() == [0, 1]


def test_biased_routing_with_capacity_keeps_each_experts_most_probable_tokens():
    # 4 tokens all choose expert 0 (top-1); capacity = ceil(4 / 2 * 1.0) = 2 keeps tokens 0 and 2 (p = 0.9, 0.8)
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2], [0.7, 0.3]])
    out = biased_topk_routing(probs.log(), torch.zeros(2), k=1, capacity_factor=1.0, min_capacity=0, drop_tokens=True)
    assert int(out[1]) == 2 and out[3].tolist() == [[0, -1, 0, -1]] and out[4].tolist() == [[0, 0, 1, 0]]
    assert out[6].tolist() == [4, 0]  # load counts the choices, before the capacity limit


def test_bias_is_a_persistent_buffer_without_gradient():
    model = build_model(tiny_config(bias_update_rate=0.01, drop_tokens=False, top2_2nd_expert_sampling=False), seed=0)
    state = model.state_dict()
    key = "layers.1.mlp.moe.deepspeed_moe.gate.routing_bias"
    assert key in state and "expert" not in key  # DeepSpeed saves keys containing "expert" as expert files
    assert not any("selection_counts" in k for k in state)
    assert not any("routing_bias" in name for name, _ in model.named_parameters())
    assert "routing_bias" not in str(list(build_model(tiny_config(), seed=0).state_dict()))  # off: no buffer
    gate = model.layers[1].mlp.gate
    gate.routing_bias.fill_(0.123456789)
    model.bfloat16()  # what the engine does under bf16: the bias stays fp32, to the bit
    assert gate.wg.weight.dtype == torch.bfloat16 and gate.routing_bias.dtype == torch.float32
    assert gate.routing_bias[0].item() == torch.tensor(0.123456789).item()


def resolved(*overrides: str):
    return load_resolved(REPO / "recipes/tiny.yaml", REPO / "ds_configs/zero1.json", list(overrides), 2)


def refusal(*overrides: str) -> str:
    with pytest.raises(ConfigError) as err:
        resolved(*overrides)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_balancing_combinations_that_cannot_work_are_refused():
    assert "top2_2nd_expert_sampling=false" in refusal("moe.bias_update_rate=0.01")
    assert "use_rts=false" in refusal("moe.bias_update_rate=0.01", "moe.top_k=1")
    assert "Jitter or null" in refusal(
        "moe.bias_update_rate=0.01", "moe.top_k=1", "moe.use_rts=false", "moe.noisy_gate_policy=RSample"
    )
    assert "moe.z_loss_coef must be >= 0" in refusal("moe.z_loss_coef=-0.1")
    for key in ("z_loss_coef", "seq_aux_loss_coef", "bias_update_rate"):
        assert "needs moe.impl=deepspeed" in refusal("moe.impl=autoep", "model.family=mixtral", f"moe.{key}=0.01")
    bias = "load_balance_coeff"
    assert bias in refusal("moe.impl=autoep", "model.family=mixtral", "moe.bias_update_rate=0.01")


def test_working_balancing_recipes_resolve():
    for overrides in (
        ["moe.bias_update_rate=0.01", "moe.top2_2nd_expert_sampling=false"],
        ["moe.bias_update_rate=0.01", "moe.top_k=1", "moe.drop_tokens=false"],
        ["moe.z_loss_coef=0.001", "moe.seq_aux_loss_coef=0.001"],
    ):
        resolved(*overrides)
