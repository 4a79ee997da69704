"""model.upcycle: a dense HF Llama checkpoint (our dense export) becomes a MoE GPT that computes the same function:
every expert is a copy of its layer's MLP, the router starts at zero, so top-2 renormalized gates give 1/2 + 1/2."""

import pytest
import torch

from moe.checkpoint.hf_import import load_init_from
from moe.config import ConfigError, load_resolved
from moe.launch.environment import check_environment
from moe.model import MoEGPTConfig, build_model
from moe.model.hf.stock import to_hf_model
from moe.train.model_spec import model_spec
from tests.helpers import REPO

SHAPE = dict(vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=64, init_std=0.2)


@pytest.fixture(scope="module")
def dense_export(tmp_path_factory):
    """(our dense model, the HF Llama folder moe.export writes for it)."""
    folder = tmp_path_factory.mktemp("dense_llama")
    dense = build_model(MoEGPTConfig(moe_enabled=False, **SHAPE), seed=0).eval()
    to_hf_model(dense.config, dense.state_dict()).save_pretrained(folder)
    return dense, folder


@pytest.mark.parametrize("interval", [1, 2])
@pytest.mark.parametrize("training", [False, True])  # training: DeepSpeed samples the 2nd expert; weights stay 1/2
def test_upcycled_moe_computes_the_dense_model(dense_export, interval, training):
    dense, folder = dense_export
    config = MoEGPTConfig(
        moe_enabled=True,
        num_experts=4,
        num_experts_per_tok=2,
        moe_interval=interval,
        expert_d_ff=64,
        drop_tokens=False,
        **SHAPE,
    )  # dropless: no token loses an expert
    moe = build_model(config, seed=1)
    load_init_from(moe, folder, upcycle=True)
    moe.train(training)
    ids = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(2))  # (B, T)
    with torch.no_grad():
        torch.testing.assert_close(moe(ids).logits, dense(ids).logits, rtol=1e-5, atol=1e-5)
    layer = config.moe_layer_ids()[0]
    block = moe.layers[layer].mlp
    assert torch.count_nonzero(block.gate.wg.weight) == 0  # uniform routing to start
    experts = block.moe.deepspeed_moe.experts.deepspeed_experts
    for expert in experts:
        assert torch.equal(expert.down_proj.weight, dense.layers[layer].mlp.down_proj.weight)


def test_upcycle_recipe_resolves_and_refuses_a_different_expert_width(dense_export):
    _, folder = dense_export

    def recipe(*overrides):
        r = load_resolved(
            REPO / "recipes/tiny.yaml",
            REPO / "ds_configs/zero1.json",
            [
                f"model.init_from={folder}",
                f"data.tokenizer={folder}",
                "model.upcycle=true",
                "model.d_model=32",
                "model.n_heads=4",
                "model.n_kv_heads=2",
                "model.d_ff=64",
                "moe.ep_size=1",
                *overrides,
            ],
            world_size=1,
        )
        check_environment(r, cuda=False)  # preflight: the folder against the recipe
        return r

    upcycled = recipe().recipe
    assert model_spec(upcycled).vocab_size(upcycled, tokenizer=range(1000)) == 97
    with pytest.raises(ConfigError, match="moe.expert_d_ff=32 must equal it"):
        recipe("moe.expert_d_ff=32")
    with pytest.raises(ConfigError, match="model.upcycle needs moe.enabled=true"):
        recipe("moe.enabled=false")
    with pytest.raises(ConfigError, match="dense llama checkpoint but moe.enabled=true: set model.upcycle=true"):
        recipe("model.upcycle=false")
