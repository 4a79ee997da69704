import copy

import pytest
import torch

from moe.model import MoEGPTConfig, MoEGPTForCausalLM, build_model
from moe.model.global_names import global_param_name
from moe.model.layers import SwiGLU
from moe.model.reference import reference_from_layer


def tiny_config(**kw) -> MoEGPTConfig:
    base = dict(
        vocab_size=97,
        d_model=32,
        n_layers=2,
        n_heads=4,
        max_seq_len=16,
        num_experts=4,
        num_experts_per_tok=2,
        moe_interval=2,
        min_capacity=0,
    )
    base.update(kw)
    return MoEGPTConfig(**base)


def test_forward_shapes_and_losses():
    model = build_model(tiny_config(), seed=0)
    ids = torch.randint(0, 97, (3, 16))
    out = model(ids, labels=ids)
    assert out.logits.shape == (3, 16, 97)
    assert out.loss.shape == () and out.aux_loss.shape == ()
    assert torch.allclose(out.loss, out.lm_loss + 0.01 * out.aux_loss)
    assert [layer.is_moe for layer in model.layers] == [False, True]


def test_dense_baseline_has_no_moe_layers():
    model = build_model(tiny_config(moe_enabled=False), seed=0)
    assert model.moe_layers() == [] and float(model(torch.zeros(1, 4, dtype=torch.long)).aux_loss) == 0.0


def test_one_expert_moe_equals_the_dense_mlp_with_the_same_weights():
    moe_model = build_model(
        tiny_config(num_experts=1, num_experts_per_tok=1, moe_interval=1, drop_tokens=False), seed=0
    )
    layer = moe_model.layers[0].mlp
    expert = layer.moe.deepspeed_moe.experts.deepspeed_experts[0]
    dense = SwiGLU(32, expert.gate_proj.out_features)
    dense.load_state_dict(expert.state_dict())
    x = torch.randn(2, 8, 32)
    out, _ = layer(x)
    torch.testing.assert_close(out, dense(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_dropless_fast_path_matches_loop_over_experts_forward_and_grads(k):
    config = tiny_config(num_experts_per_tok=k, drop_tokens=False, top2_2nd_expert_sampling=False, use_rts=False)
    layer = build_model(config, seed=1).layers[1].mlp
    ref_layer = copy.deepcopy(layer)
    x = torch.randn(2, 8, 32, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    out, _ = layer(x)
    ref = reference_from_layer(ref_layer, x_ref)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    ref.backward(grad_out)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)
    for (name, p), (_, p_ref) in zip(layer.named_parameters(), ref_layer.named_parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_initialization_does_not_depend_on_the_expert_parallel_layout():
    full = build_model(tiny_config(), seed=7)
    full_params = dict(full.named_parameters())
    for ep_rank in (0, 1):
        shard = build_model(tiny_config(ep_size=2), seed=7, ep_rank=ep_rank)
        for name, p in shard.named_parameters():
            torch.testing.assert_close(p, full_params[global_param_name(name, ep_rank, 2)], rtol=0, atol=0)


def test_save_pretrained_from_pretrained_and_generate(tmp_path):
    model = build_model(tiny_config(), seed=3).eval()
    ids = torch.randint(0, 97, (2, 10))
    model.save_pretrained(tmp_path)
    loaded = MoEGPTForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    generated = loaded.generate(ids[:, :4], max_new_tokens=6, do_sample=False)
    assert generated.shape == (2, 10) and torch.equal(generated[:, :4], ids[:, :4])


def test_eval_is_deterministic_although_training_routing_samples():
    model = build_model(tiny_config(), seed=3)
    ids = torch.randint(0, 97, (2, 16))
    model.eval()
    torch.testing.assert_close(model(ids).logits, model(ids).logits, rtol=0, atol=0)
    model.train()
    assert not torch.equal(model(ids).logits, model(ids).logits)  # 2nd-expert sampling is on in training
