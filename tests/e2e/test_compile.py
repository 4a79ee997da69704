"""torch.compile (ds_configs/zero1_bf16_compile.json, run in fp32 here) trains exactly as eager: the same losses on
our GPT at EP=2 (blocks compiled, MoE layers eager) and on AutoEP Mixtral (DeepSpeed's compile.autoep_non_moe).
The first compile of a block takes ~15-50 s on the 2-core CPU; Inductor caches it for later runs."""
import pytest

from tests.e2e.conftest import SMALL_DATA
from tests.helpers import explain, launch_bash, read_metrics

pytestmark = pytest.mark.e2e
STEPS = 3


def losses(tmp_path, name, recipe, ds_config, *overrides):
    proc = launch_bash("--recipe", f"recipes/{recipe}", "--ds_config", f"ds_configs/{ds_config}",
                       f"train.max_steps={STEPS}", "train.warmup_steps=1", "train.eval_interval=0", "train.save_interval=0", "logging.progress_bar=false", *SMALL_DATA,
                       f"logging.runs_dir={tmp_path}", f"logging.run_name={name}", *overrides, timeout=600)
    assert proc.returncode == 0, explain(proc)
    return proc, [m["loss"] for m in read_metrics(tmp_path / name) if "loss" in m]


@pytest.mark.parametrize("recipe, regions", [("tiny.yaml", "layers.0"), ("autoep.yaml", "model.layers.0")])
def test_compiled_training_matches_eager(tmp_path, recipe, regions):
    _, eager = losses(tmp_path, "eager", recipe, "zero1.json")
    proc, compiled = losses(tmp_path, "compiled", recipe, "zero1_bf16_compile.json", "ds.bf16.enabled=false")
    assert "torch.compile: " in proc.stdout and f"({regions}, ...)" in proc.stdout
    assert len(compiled) == STEPS and compiled == pytest.approx(eager, rel=1e-6)
