"""model.init_from on moe.impl=deepspeed: random stock HF MoE checkpoints load into our GPT with the same logits, and
a checkpoint our GPT cannot express (or that does not fit the recipe) is one ConfigError before any rank starts."""

import warnings

import pytest
import torch

from moe.checkpoint.hf_import import load_init_from
from moe.config import ConfigError, load_resolved
from moe.launch.environment import check_environment
from moe.model import MoEGPTConfig, build_model
from moe.train.model_spec import model_spec
from tests.helpers import REPO

SHAPE = dict(
    vocab_size=97,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-5,
    max_position_embeddings=64,
    rope_parameters={"rope_type": "default", "rope_theta": 1e4},
)
FAMILIES = {  # name: (HF config class, its fields, our config fields that express it)
    "mixtral_top2": (
        "MixtralConfig",
        dict(intermediate_size=48, num_local_experts=4, num_experts_per_tok=2),
        dict(moe_interval=1, expert_d_ff=48, num_experts_per_tok=2),
    ),
    "qwen2_moe_top2_every_2nd": (
        "Qwen2MoeConfig",
        dict(
            intermediate_size=64,
            moe_intermediate_size=48,
            num_experts=4,
            num_experts_per_tok=2,
            decoder_sparse_step=2,
            norm_topk_prob=True,
            shared_expert_intermediate_size=0,
            qkv_bias=False,
            mlp_only_layers=[],
        ),
        dict(moe_interval=2, d_ff=64, expert_d_ff=48, num_experts_per_tok=2),
    ),
    "qwen2_moe_top1": (
        "Qwen2MoeConfig",
        dict(
            intermediate_size=64,
            moe_intermediate_size=48,
            num_experts=4,
            num_experts_per_tok=1,
            decoder_sparse_step=1,
            norm_topk_prob=False,
            shared_expert_intermediate_size=0,
            qkv_bias=False,
            mlp_only_layers=[],
        ),
        dict(moe_interval=1, d_ff=64, expert_d_ff=48, num_experts_per_tok=1),
    ),
}


def save_random_hf(folder, class_name: str, **fields):
    """A freshly constructed stock HF model (random weights, scaled up so routing is decisive), save_pretrained."""
    import transformers

    config = getattr(transformers, class_name)(**{**SHAPE, **fields})
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")  # Qwen2-MoE's zero-width shared expert
        model = transformers.AutoModelForCausalLM.from_config(config).float()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.2)
    model.eval().save_pretrained(folder)
    return model


def our_config(**fields) -> MoEGPTConfig:
    return MoEGPTConfig(
        vocab_size=97,
        d_model=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        max_seq_len=64,
        num_experts=4,
        drop_tokens=False,
        **fields,
    )  # dropless, as HF routes


@pytest.mark.parametrize("case", list(FAMILIES))
def test_random_hf_checkpoint_gives_the_same_logits_in_our_gpt(case, tmp_path):
    class_name, hf_fields, ours = FAMILIES[case]
    hf_model = save_random_hf(tmp_path, class_name, **hf_fields)
    model = build_model(our_config(**ours), seed=123).eval()  # a different init, all of it overwritten
    load_init_from(model, tmp_path)
    ids = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(1))  # (B, T)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, hf_model(ids).logits, rtol=1e-4, atol=1e-4)


def test_import_keeps_each_expert_parallel_rank_its_global_experts(tmp_path):
    class_name, hf_fields, ours = FAMILIES["mixtral_top2"]
    save_random_hf(tmp_path, class_name, **hf_fields)
    whole = build_model(our_config(**ours), seed=0)
    load_init_from(whole, tmp_path)
    experts = "layers.{}.mlp.moe.deepspeed_moe.experts.deepspeed_experts.{}.down_proj.weight"
    for ep_rank in (0, 1):
        half = build_model(our_config(ep_size=2, **ours), seed=0)  # 2 local experts per rank
        load_init_from(half, tmp_path, ep_rank=ep_rank)
        for local in (0, 1):
            got = half.state_dict()[experts.format(0, local)]
            assert torch.equal(got, whole.state_dict()[experts.format(0, 2 * ep_rank + local)])


def recipe_for(folder, *overrides):
    """The recipe resolved and checked against its init_from folder, as preflight does before any rank starts."""
    resolved = load_resolved(
        REPO / "recipes/tiny.yaml",
        REPO / "ds_configs/zero1.json",
        [
            f"model.init_from={folder}",
            f"data.tokenizer={folder}",
            "model.d_model=32",
            "model.n_heads=4",
            "model.n_kv_heads=2",
            "moe.num_experts=4",
            "moe.top_k=2",
            "moe.interval=1",
            "moe.expert_d_ff=48",
            "moe.ep_size=1",
            *overrides,
        ],
        world_size=1,
    )
    check_environment(resolved, cuda=False)
    return resolved


def test_matching_recipe_resolves_and_takes_the_checkpoint_vocab(tmp_path):
    save_random_hf(tmp_path, "MixtralConfig", **FAMILIES["mixtral_top2"][1])
    recipe = recipe_for(tmp_path).recipe
    assert model_spec(recipe).vocab_size(recipe, tokenizer=range(1000)) == 97  # not the tokenizer's 1000 (-> 1024)


@pytest.mark.parametrize(
    "overrides, hf_fields, message",
    [
        (["moe.num_experts=8"], {}, "num_local_experts=4, the recipe gives moe.num_experts=8"),
        (["model.n_layers=3"], {}, "num_hidden_layers=2, the recipe gives model.n_layers=3"),
        (["moe.expert_d_ff=64"], {}, "intermediate_size=48, the recipe gives moe.expert_d_ff=64"),
        (["model.rope_theta=500000"], {}, "rope_theta=10000.0, the recipe gives model.rope_theta=500000"),
        (["moe.interval=2"], {}, "Mixtral has MoE in every layer"),
        (["moe.top_k=1"], {"num_experts_per_tok": 1}, "top-1 with renormalized gates"),
        (["moe.enabled=false"], {}, "mixtral MoE checkpoint but moe.enabled=false"),
        (["model.upcycle=true"], {}, "must be a dense llama checkpoint, got mixtral"),
    ],
)
def test_mismatched_recipe_is_one_line_config_error(tmp_path, overrides, hf_fields, message):
    save_random_hf(tmp_path, "MixtralConfig", **{**FAMILIES["mixtral_top2"][1], **hf_fields})
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        recipe_for(tmp_path, *overrides)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "class_name, fields, message",
    [
        (
            "Qwen3MoeConfig",
            dict(
                intermediate_size=64,
                moe_intermediate_size=48,
                num_experts=4,
                num_experts_per_tok=2,
                norm_topk_prob=True,
                head_dim=8,
            ),
            "Qwen3-MoE normalizes queries and keys per head",
        ),
        (
            "Qwen2MoeConfig",
            dict(FAMILIES["qwen2_moe_top2_every_2nd"][1], shared_expert_intermediate_size=16),
            "a shared expert",
        ),
        ("Qwen2MoeConfig", dict(FAMILIES["qwen2_moe_top2_every_2nd"][1], qkv_bias=True), "q/k/v biases"),
        ("Qwen2MoeConfig", dict(FAMILIES["qwen2_moe_top2_every_2nd"][1], norm_topk_prob=False), "norm_topk_prob=False"),
    ],
)
def test_checkpoints_our_gpt_cannot_compute_are_refused_with_the_reason(tmp_path, class_name, fields, message):
    import transformers

    getattr(transformers, class_name)(**{**SHAPE, **fields}).save_pretrained(tmp_path)  # the config decides
    with pytest.raises(ConfigError, match=message):
        recipe_for(tmp_path, "moe.interval=2", "model.d_ff=64")


def test_init_from_must_be_an_hf_folder_and_upcycle_needs_it(tmp_path):
    with pytest.raises(ConfigError, match="no HF model folder"):
        recipe_for(tmp_path)
    with pytest.raises(ConfigError, match="model.upcycle needs model.init_from"):
        load_resolved(REPO / "recipes/tiny.yaml", REPO / "ds_configs/zero1.json", ["model.upcycle=true"], 2)
