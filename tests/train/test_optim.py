"""Optimizer parameter groups (moe/train/optim.py): weight decay on matrices only (never on norms, biases or the
router), and every expert parameter in a DeepSpeed MoE group of its own expert group, which the engine reduces over
the expert-data-parallel group; together the groups hold every parameter exactly once."""

import pytest

from moe.model import build_model
from moe.train.optim import no_decay, param_groups
from tests.model.test_model import tiny_config

WEIGHT_DECAY = 0.1


@pytest.mark.parametrize("moe", [True, False], ids=["moe", "dense"])
def test_every_parameter_is_in_exactly_one_group(moe):
    model = build_model(tiny_config(moe_enabled=moe, use_residual=moe), seed=0)
    groups = param_groups(model, WEIGHT_DECAY)
    grouped = [id(p) for group in groups for p in group["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters()) and len(set(grouped)) == len(grouped)


def test_decay_on_matrices_only_and_never_on_the_router():
    model = build_model(tiny_config(use_residual=True), seed=0)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in param_groups(model, WEIGHT_DECAY):
        for p in group["params"]:
            name = names[id(p)]
            decays = not (p.dim() < 2 or ".gate.wg." in name)
            assert group["weight_decay"] == (WEIGHT_DECAY if decays else 0.0), name
            assert no_decay(name, p) != decays
    router = [n for n in names.values() if ".gate.wg." in n]
    norms_and_biases = [n for n, p in model.named_parameters() if p.dim() < 2]
    assert router and any(n.endswith("norm.weight") for n in norms_and_biases)
    assert any(n.endswith(".bias") for n in norms_and_biases)  # Residual-MoE's mixing coefficient


def test_expert_parameters_sit_in_moe_groups_of_their_expert_group():
    from deepspeed.moe.utils import is_moe_param

    model = build_model(tiny_config(), seed=0)
    groups = param_groups(model, WEIGHT_DECAY)
    for group in groups:
        experts = [is_moe_param(p) for p in group["params"]]
        assert group.get("moe", False) == all(experts) and (all(experts) or not any(experts))
        if group.get("moe"):
            assert {p.group_name for p in group["params"]} == {group["name"]}
    moe_groups = [g for g in groups if g.get("moe")]
    assert moe_groups and {g["weight_decay"] for g in moe_groups} == {WEIGHT_DECAY}  # expert matrices decay
    expert_params = sum(p.numel() for g in moe_groups for p in g["params"])
    experts = [p for n, p in model.named_parameters() if ".deepspeed_experts." in n]
    assert expert_params == sum(p.numel() for p in experts)
