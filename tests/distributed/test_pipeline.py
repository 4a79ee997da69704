"""Pipeline parallelism (deepspeed.pipe, ds_configs/pipeline2.json) against the non-pipeline run, through the real
Trainer on real gloo ranks: one 2-rank spawn (PP=2 dense and MoE, their PP=1 references, ZeRO-0, a resume) and one
4-rank spawn (PP=2 x EP=2). All fp32 with the same weights (moe/model/build.py by global name), data and routing:
only float summation order may differ. Measured on 2 ranks, 4 steps: PP=2 losses within 3.5e-8 relative of PP=1
(max |diff| 2.4e-7 dense, 0 MoE), grad norms within 1e-7 relative (9e-7 under ZeRO-0, whose norm is our cross-stage
sum), final weights bit-equal; on 4 ranks (PP=2 x EP=2 against 4 data-parallel ranks), 2 steps: losses within 2e-8
relative, weights within 5.2e-6 absolute. Bounds: losses 1e-6 relative, grad norms 1e-5 relative.
"""
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from moe.model import MoEGPTConfig, build_model
from tests.distributed.pipeline_worker import CASES, RESUMED, SAVE_AT, STEPS
from tests.helpers import REPO, child_env, explain, read_metrics, run_distributed

pytestmark = pytest.mark.distributed
RTOL = 1e-6  # losses and weights: float reduction order only (measured differences: see the module docstring)
GRAD_RTOL = 1e-5  # grad norms: a sum of squares over ~10^5 gradients, reduced per stage then over stages


def spawn(tmp_path_factory, job: str, ranks: int):
    out = tmp_path_factory.mktemp(job)
    proc = run_distributed(REPO / "tests/distributed/pipeline_worker.py", job, str(out), ranks=ranks)
    assert proc.returncode == 0, explain(proc)
    return out


@pytest.fixture(scope="module")
def pp2(tmp_path_factory):
    return spawn(tmp_path_factory, "pp2", ranks=2)


@pytest.fixture(scope="module")
def pp2_ep2(tmp_path_factory):
    return spawn(tmp_path_factory, "pp2_ep2", ranks=4)


def steps(out, name: str) -> list[dict]:
    return [r for r in read_metrics(out / "runs" / name) if "loss" in r]


def validations(out, name: str) -> list[float]:
    return [r["val_loss"] for r in read_metrics(out / "runs" / name) if "val_loss" in r]


def final_params(out, name: str, ranks: int) -> dict[str, torch.Tensor]:
    """Every rank's parameters by global name; a name held by several ranks (replicas) must agree exactly."""
    merged = {}
    for rank in range(ranks):
        for key, value in torch.load(out / f"{name}_rank{rank}.pt").items():
            if key in merged:
                assert torch.equal(merged[key], value), f"{name}: replicas of {key} differ"
            merged[key] = value
    return merged


def assert_same_run(out, pipeline: str, reference: str, ranks: int, n_steps: int, param_atol: float = 1e-7) -> None:
    got, want = steps(out, pipeline), steps(out, reference)
    assert [r["step"] for r in got] == [r["step"] for r in want] == list(range(1, n_steps + 1))
    for key in ("loss", "lm_loss", "aux_loss", "grad_norm"):
        rel = GRAD_RTOL if key == "grad_norm" else RTOL
        assert [r[key] for r in got] == pytest.approx([r[key] for r in want], rel=rel), key
    assert validations(out, pipeline) == pytest.approx(validations(out, reference), rel=RTOL)
    p_got, p_want = final_params(out, pipeline, ranks), final_params(out, reference, ranks)
    assert set(p_got) == set(p_want)
    for key in p_want:
        torch.testing.assert_close(p_got[key], p_want[key], rtol=RTOL, atol=param_atol, msg=lambda m: f"{key}: {m}")


@pytest.mark.parametrize("model", ["dense", "moe"])
def test_pp2_matches_pp1(pp2, model):
    assert_same_run(pp2, f"{model}_pp2", f"{model}_pp1", ranks=2, n_steps=STEPS)


def test_moe_aux_loss_reaches_the_last_stage_loss(pp2):
    """Tiny recipe: the MoE layer is block 1, on stage 1; block 0 is dense on stage 0. The aux loss the pipeline
    reports and adds into its loss is the non-pipeline one (a missing carry would give aux_loss 0, loss = lm_loss)."""
    for record in steps(pp2, "moe_pp2"):
        assert record["aux_loss"] > 0.5
        assert record["loss"] == pytest.approx(record["lm_loss"] + 0.01 * record["aux_loss"], rel=1e-6)


def test_pp2_under_zero0_matches_pp1(pp2):
    """ZeRO-0's clipping is our cross-stage norm (moe/train/pipeline_step.py); ZeRO-1's is DeepSpeed's per stage."""
    assert_same_run(pp2, "moe_pp2_zero0", "moe_pp1", ranks=2, n_steps=STEPS)


def test_pipeline_checkpoint_resumes_bit_for_bit(pp2):
    """moe_pp2 copied as if killed after its step-SAVE_AT checkpoint (saved through moe/train/checkpoint.py), then
    resumed: the remaining steps and the final weights equal the uninterrupted run's exactly."""
    source, resumed = RESUMED
    keys = ("step", "loss", "lm_loss", "aux_loss", "grad_norm", "lr")
    assert [[r[k] for k in keys] for r in steps(pp2, resumed)[SAVE_AT:]] == \
        [[r[k] for k in keys] for r in steps(pp2, source)[SAVE_AT:]]
    assert len(steps(pp2, resumed)) == STEPS
    want, got = final_params(pp2, source, 2), final_params(pp2, resumed, 2)
    assert all(torch.equal(got[key], value) for key, value in want.items())


def test_resuming_a_pipeline_checkpoint_at_another_layout_is_one_line_refusal(pp2):
    from moe.config import ConfigError, load_ds_config, load_recipe, to_dict
    from moe.train.checkpoint import check_resume, run_layout
    run_dir = pp2 / "runs" / "moe_pp2"
    recipe = to_dict(load_recipe(run_dir / "recipe.yaml"))
    layout = run_layout(recipe, load_ds_config(REPO / "ds_configs/zero1.json"), 2)
    with pytest.raises(ConfigError, match=r"pipeline.stages=2.*pipeline.stages=1.*resumes only at its own layout"):
        check_resume(run_dir, True, recipe, layout)
    layout = run_layout(recipe, load_ds_config(REPO / "ds_configs/pipeline2.json"), 2)
    check_resume(run_dir, True, recipe, layout)  # its own layout: accepted


def test_export_of_a_pipeline_checkpoint_gives_the_trained_model(pp2, tmp_path):
    """`python -m moe.export` merges both stages' files; the stock HF model computes the trained weights' logits."""
    run_dir, out = pp2 / "runs" / "moe_pp2", tmp_path / "hf"
    proc = subprocess.run([sys.executable, "-m", "moe.export", str(run_dir), str(out)], cwd=REPO, env=child_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = MoEGPTConfig.from_pretrained(run_dir / "model_config")
    config.ep_size, config.drop_tokens = 1, False  # one rank, dropless like the export
    reference = build_model(config, seed=1).eval()
    reference.load_state_dict(final_params(pp2, "moe_pp2", 2), strict=True)  # the engine's weights at the end
    ids = torch.randint(0, config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))  # (B, T)
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, reference(ids).logits, rtol=1e-4, atol=1e-4)
    proc = subprocess.run([sys.executable, "-m", "moe.reshard", str(run_dir)], cwd=REPO, env=child_env(),
                          capture_output=True, text=True, timeout=120)
    last_line = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and last_line.startswith("error: ") and "pipeline-parallel checkpoint" in last_line


def test_pp2_x_ep2_matches_pp1_x_ep4_data_parallel(pp2_ep2):
    """4 ranks: 2 stages x 2 data-parallel ranks, experts split over the 2 ranks of each stage (a MoE layer on both
    stages), against 4 data-parallel ranks at the same EP=2."""
    # Gradients are summed over 2 data-parallel ranks here and 4 there: another float order, which Adam turns into
    # weight differences up to ~lr x 1e-3 where a gradient is tiny (rare embedding rows; measured 5.2e-6 absolute).
    assert_same_run(pp2_ep2, "ep2_pp2", "ep2_pp1", ranks=4, n_steps=2, param_atol=2e-5)
    assert any(".experts.deepspeed_experts.3." in key for key in final_params(pp2_ep2, "ep2_pp2", 4))


def test_router_telemetry_matches_pp1(pp2):
    """Each stage reports its own MoE layers; one all-reduce adds them up as without a pipeline."""
    got, want = steps(pp2, "moe_pp2"), steps(pp2, "moe_pp1")
    keys = [k for k in want[-1] if k.startswith("router/") and not k.endswith("tokens_per_expert")]
    assert "router/layer1/aux_loss" in keys
    for g, w in zip(got, want):
        assert g["router/layer1/tokens_per_expert"] == w["router/layer1/tokens_per_expert"]
        assert [g[k] for k in keys] == pytest.approx([w[k] for k in keys], rel=RTOL)
