"""Our MoE layer (DeepSpeed's MoE + RouterGate) against plain references: the loop over experts, a dense MLP,
the Residual-MoE formula; and PR-MoE pyramids (one expert count per MoE layer) through build, cost, telemetry,
export and resolve."""

import copy

import pytest
import torch

from moe.config import ConfigError, load_resolved
from moe.model import build_model
from moe.model.cost import model_cost
from moe.model.global_names import global_param_name, local_expert_counts
from moe.model.hf.stock import target_family
from moe.model.layers import SwiGLU
from moe.model.reference import reference_from_layer, reference_residual_moe
from tests.helpers import REPO
from tests.model.test_model import tiny_config


@pytest.mark.parametrize("biased, scale", [(False, 1.0), (True, 1.0), (False, 4.0)], ids=["softmax", "bias", "scaled"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_dropless_layer_matches_the_loop_reference_forward_and_grads(k, biased, scale):
    config = tiny_config(
        routed_scaling_factor=scale,
        num_experts_per_tok=k,
        drop_tokens=False,
        top2_2nd_expert_sampling=False,
        use_rts=False,
        z_loss_coef=0.1,
        seq_aux_loss_coef=0.1,
        bias_update_rate=0.01 if biased else 0.0,
    )
    layer = build_model(config, seed=1).layers[1].mlp.train()
    x = torch.randn(2, 8, 32)
    if biased:  # a bias large enough to change choices (checked below)
        layer.gate.routing_bias.copy_(torch.tensor([0.3, -0.2, 0.1, -0.3]))
        unbiased = copy.deepcopy(layer)
        unbiased.gate.routing_bias.zero_()
        with torch.no_grad():
            assert not torch.equal(layer(x)[0], unbiased(x)[0])
    ref_layer = copy.deepcopy(layer)
    x.requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    out, _ = layer(x)
    ref = reference_from_layer(ref_layer, x_ref)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    ref.backward(grad_out)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)
    for (name, p), (_, p_ref) in zip(layer.named_parameters(), ref_layer.named_parameters()):
        # an expert no token chose: zero gradient on the padded fast path, none in the loop
        ref_grad = p_ref.grad if p_ref.grad is not None else torch.zeros_like(p_ref)
        torch.testing.assert_close(p.grad, ref_grad, rtol=1e-5, atol=1e-6, msg=name)


def test_one_expert_layer_with_capacity_equals_the_dense_mlp():
    # 1 expert, top-1, capacity = ceil(16 tokens / 1 * 1.0) = 16: every token reaches it with gate weight 1
    config = tiny_config(num_experts=1, num_experts_per_tok=1, moe_interval=1, capacity_factor=1.0, use_rts=False)
    layer = build_model(config, seed=0).layers[0].mlp
    expert = layer.moe.deepspeed_moe.experts.deepspeed_experts[0]
    dense = SwiGLU(32, expert.gate_proj.out_features)
    dense.load_state_dict(expert.state_dict())
    x = torch.randn(2, 8, 32)
    torch.testing.assert_close(layer(x)[0], dense(x), rtol=1e-6, atol=1e-6)


def test_residual_moe_mixes_experts_and_dense_mlp_by_a_learned_softmax():
    config = tiny_config(use_residual=True, drop_tokens=False, top2_2nd_expert_sampling=False, use_rts=False)
    layer = build_model(config, seed=2).layers[1].mlp
    assert layer.moe.coefficient.out_features == 2 and layer.moe.coefficient.bias is not None
    with torch.no_grad():
        layer.moe.coefficient.bias.copy_(torch.tensor([0.5, -0.5]))  # a mix that is not 50/50
    x = torch.randn(2, 8, 32)
    out, _ = layer(x)
    torch.testing.assert_close(out, reference_residual_moe(layer, x), rtol=1e-5, atol=1e-6)
    plain = layer.moe.deepspeed_moe(x, None)  # the experts alone (no used_token mask) differ
    assert not torch.allclose(out, plain, atol=1e-4)


def pyramid_config(**kw):
    return tiny_config(num_experts=[2, 4], moe_interval=1, **kw)


def test_pyramid_layers_have_their_own_expert_counts_and_cost():
    config = pyramid_config()
    model = build_model(config, seed=0)
    widths = [
        (
            layer.mlp.gate.wg.out_features,
            len(layer.mlp.moe.deepspeed_moe.experts.deepspeed_experts),
            layer.mlp.router_stats.num_experts,
        )
        for layer in model.layers
    ]
    assert widths == [(2, 2, 2), (4, 4, 4)]
    cost = model_cost(config, seq_len=16)
    assert cost.total_params == sum(p.numel() for p in model.parameters())
    expert = 3 * config.d_model * config.expert_d_ff
    assert cost.total_params - cost.active_params == (2 - 2) * expert + (4 - 2) * expert  # top-2 in both layers
    ids = torch.randint(0, 97, (2, 16))
    out = model(ids, labels=ids)
    assert torch.isfinite(out.loss)
    assert [layer.mlp.router_stats.sums["kept"].numel() for layer in model.layers] == [2, 4]


def test_pyramid_initialization_does_not_depend_on_the_expert_parallel_layout():
    full = dict(build_model(pyramid_config(), seed=7).named_parameters())
    sharded_config = pyramid_config(ep_size=2)
    assert local_expert_counts(sharded_config) == {0: 1, 1: 2}
    seen = set()
    for ep_rank in (0, 1):
        shard = build_model(sharded_config, seed=7, ep_rank=ep_rank)
        for name, p in shard.named_parameters():
            global_name = global_param_name(name, ep_rank, local_expert_counts(sharded_config))
            torch.testing.assert_close(p, full[global_name], rtol=0, atol=0)
            seen.add(global_name)
    assert seen == set(full)  # the two ranks' experts cover every expert of every layer


def test_export_refuses_pyramids_and_bias_routing_with_the_reason():
    with pytest.raises(ConfigError, match="PR-MoE.*one expert count"):
        target_family(pyramid_config())
    with pytest.raises(ConfigError, match="bias_update_rate"):
        target_family(tiny_config(bias_update_rate=0.01))
    with pytest.raises(ConfigError, match="routed_scaling_factor=8.0 scales the experts' output"):
        target_family(tiny_config(routed_scaling_factor=8.0))


def test_routed_scaling_factor_multiplies_the_layers_output():
    base = build_model(tiny_config(), seed=3).layers[1].mlp.eval()
    scaled = build_model(tiny_config(routed_scaling_factor=8.0), seed=3).layers[1].mlp.eval()
    x = torch.randn(2, 8, 32)
    with torch.no_grad():
        torch.testing.assert_close(scaled(x)[0], 8.0 * base(x)[0], rtol=1e-6, atol=1e-6)


def resolve_tiny(*overrides: str):
    return load_resolved(
        REPO / "recipes/tiny.yaml", REPO / "ds_configs/zero1.json", ["model.n_layers=4", *overrides], 2
    )


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (
            ["moe.num_experts=[4,4,8]"],
            "lists 3 expert counts but the model has 2 MoE layers (model.n_layers=4, moe.interval=2)",
        ),
        (["moe.num_experts=[4,3]"], "moe.num_experts[1]=3 is not divisible by moe.ep_size=2"),
        (["moe.num_experts=[2,4]", "moe.top_k=3"], "moe.top_k=3 must be between 1 and moe.num_experts[0]=2"),
        (["moe.num_experts=[]"], "lists 0 expert counts"),
        (["moe.use_residual=true", "moe.routed_scaling_factor=2"], "with moe.use_residual DeepSpeed mixes it"),
        (["moe.routed_scaling_factor=0"], "moe.routed_scaling_factor"),
    ],
)
def test_bad_pyramids_and_scaling_are_one_line_errors(overrides, expected):
    with pytest.raises(ConfigError) as err:
        resolve_tiny(*overrides)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_a_pyramid_recipe_resolves_and_reaches_the_model_config():
    from moe.model import config_from_recipe

    resolved = resolve_tiny("moe.num_experts=[2,4,4,8]", "moe.interval=1")
    config = config_from_recipe(resolved.recipe, vocab_size=128)
    assert [config.experts_in_layer(i) for i in range(4)] == [2, 4, 4, 8]
