"""`python -m moe.export` on a real EP=2 ZeRO-1 DeepSpeed checkpoint, loaded back by stock transformers."""

import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from moe.checkpoint.hf_export import consolidated_state_dict
from moe.model import MoEGPTConfig, build_model
from tests.helpers import run

pytestmark = pytest.mark.e2e


def test_export_cli_writes_a_stock_hf_model_with_the_training_logits(bash_run, tmp_path):
    _, run_dir = bash_run
    out = tmp_path / "hf"
    proc = run(
        [sys.executable, "-m", "moe.export", str(run_dir), str(out)],
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()

    config = MoEGPTConfig.from_pretrained(run_dir / "model_config")
    config.ep_size, config.drop_tokens = 1, False  # the trained weights on one rank, dropless like the export
    reference = build_model(config, seed=0).eval()
    state = consolidated_state_dict(run_dir / "checkpoints" / "global_step20")
    assert sum(".experts." in name for name in state) == 3 * config.num_experts  # every expert, from 2 EP ranks
    reference.load_state_dict(state, strict=True)

    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("def main(argv):\n    import os\n    return 0\n", return_tensors="pt").input_ids  # (1, T)
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    assert exported.config.model_type == "qwen2_moe"  # tiny recipe: top-2 MoE in every 2nd layer
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, reference(ids).logits, rtol=1e-4, atol=1e-4)
    assert exported.generate(ids, max_new_tokens=5, do_sample=False).shape[1] == ids.shape[1] + 5


def test_export_of_a_folder_without_checkpoint_is_one_line_error(tmp_path):
    proc = run(
        [sys.executable, "-m", "moe.export", str(tmp_path), str(tmp_path / "out")],
        timeout=60,
    )
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: no complete checkpoint"), proc.stderr
