"""moe/model/hf/stock.py maps our MoE GPT onto stock transformers classes that compute the same logits."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from moe.config import ConfigError
from moe.model import build_model
from moe.model.hf.stock import target_family, to_hf_model
from tests.model.test_model import tiny_config

CASES = {  # our config -> the stock family it must export to
    "top2_every_2nd_layer": ({}, "qwen2_moe"),
    "top1_every_2nd_layer": ({"num_experts_per_tok": 1}, "qwen2_moe"),
    "top2_every_layer": ({"moe_interval": 1}, "mixtral"),
    "top1_every_layer_gqa": ({"moe_interval": 1, "num_experts_per_tok": 1, "n_kv_heads": 2}, "qwen2_moe"),
    "dense": ({"moe_enabled": False}, "llama"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_exported_model_matches_training_model_logits(case, tmp_path):
    overrides, family = CASES[case]
    # Dropless, so routing has no capacity limit on either side; scaled-up weights make routing decisive.
    config = tiny_config(drop_tokens=False, init_std=0.2, **overrides)
    model = build_model(config, seed=0).eval()
    assert target_family(config) == family
    ids = torch.randint(0, config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(ids).logits
    to_hf_model(config, model.state_dict()).save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()  # stock class, no trust_remote_code
    assert loaded.config.model_type == family
    with torch.no_grad():
        got = loaded(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert loaded.generate(ids[:1, :4], max_new_tokens=4, do_sample=False).shape == (1, 8)


def test_residual_moe_export_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match="Residual-MoE.*no stock transformers class"):
        target_family(tiny_config(use_residual=True))
