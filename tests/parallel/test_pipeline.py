"""Pipeline parallelism (deepspeed.pipe, ds_configs/pipeline2.json) against the non-pipeline run, through the real
Trainer on real gloo ranks: one 2-rank spawn (PP=2 dense and MoE, their PP=1 references, ZeRO-0, a resume) and one
4-rank spawn (PP=2 x EP=2). All fp32 with the same weights (moe/model/build.py by global name), data and routing:
only float summation order may differ. Losses within 1e-6 relative, grad norms within 1e-5 relative, final weights
within the Adam bound of tests/tolerances.py (the measured differences are in benchmarks/RESULTS.md).

`pp2` (2 ranks): the tiny recipe, dense and MoE, for STEPS steps with validation and checkpoints every SAVE_AT:
- *_pp1: ds_configs/zero1.json, 2 data-parallel ranks x 1 micro-batch of 8;
- *_pp2: ds_configs/pipeline2.json, 2 stages x 1 data-parallel rank x 2 micro-batches of 8: the same 16 samples a
  step, in the same order (BlockBatches addresses them by data-parallel rank and size);
- moe_pp2_zero0: the same under ZeRO-0 (our pipeline-aware clipping, moe/train/pipeline_step.py);
then resumes a copy of moe_pp2 as if it had died after step SAVE_AT.
`pp2_ep2` (4 ranks): a 4-layer MoE (MoE layers on both stages) at EP=2, 2 steps: PP=1 x DP=4 against PP=2 x DP=2.
Gate sampling (RTS, the 2nd expert) draws from per-rank RNG streams that differ between the layouts, so routing
is deterministic here.
"""

import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from moe.config import ConfigError
from moe.model import MoEGPTConfig, build_model
from moe.train.schedule import warmup_cosine
from tests.harness import (
    global_params,
    interrupted_copy,
    merged,
    resolved_for,
    resume,
    run_on_ranks,
    snapshot_step1_gradients,
)
from tests.helpers import read_metrics, run
from tests.tolerances import ADAM_EPS, assert_adam_params_match

pytestmark = pytest.mark.distributed
RTOL = 1e-6  # losses: float reduction order only
GRAD_RTOL = 1e-5  # grad norms: a sum of squares over ~10^5 gradients, reduced per stage then over stages
STEPS, SAVE_AT = 4, 2
NO_SAMPLING = ["moe.top2_2nd_expert_sampling=false", "moe.use_rts=false", f"optim.eps={ADAM_EPS}"]
# the same seeded 32 validation blocks in every layout: whole global micro-batches, which a pipeline needs
EVAL = ["train.eval_blocks=32", "train.train_eval_blocks=32"]
SHORT = ["train.max_steps=2", "train.warmup_steps=1", "train.eval_interval=0", "train.save_interval=0"]
CASES = {  # job: {name: (ds_config, overrides)}; zero1.json: 1 micro-batch a step, pipeline2.json: 2
    "pp2": {
        "dense_pp1": ("zero1.json", ["moe.enabled=false", f"optim.eps={ADAM_EPS}"]),
        "dense_pp2": ("pipeline2.json", ["moe.enabled=false", f"optim.eps={ADAM_EPS}"]),
        "moe_pp1": ("zero1.json", ["moe.ep_size=1", *NO_SAMPLING]),
        "moe_pp2": ("pipeline2.json", ["moe.ep_size=1", *NO_SAMPLING]),
        "moe_pp2_zero0": ("pipeline2.json", ["moe.ep_size=1", "ds.zero_optimization.stage=0", *NO_SAMPLING]),
    },
    "pp2_ep2": {  # 4 ranks on a 2-core CI box: 2 steps, validation only at the end
        "ep2_pp1": ("zero1.json", ["moe.ep_size=2", "model.n_layers=4", *NO_SAMPLING, *SHORT]),
        "ep2_pp2": ("pipeline2.json", ["moe.ep_size=2", "model.n_layers=4", *NO_SAMPLING, *SHORT]),
    },
}
RESUMED = ("moe_pp2", "moe_pp2_resumed")  # (source, copy resumed after step SAVE_AT), in the pp2 job


def case(out: str, job: str, name: str, world_size: int):
    ds_config, extra = CASES[job][RESUMED[0] if name == RESUMED[1] else name]
    return resolved_for(
        out,
        name,
        ds_config,
        [f"train.max_steps={STEPS}", f"train.save_interval={SAVE_AT}", f"train.eval_interval={SAVE_AT}", *EVAL, *extra],
        world_size,
    )


def train_pipelines(rank: int, world_size: int, job: str, out: str) -> None:
    from moe.parallel import barrier, reset_expert_groups
    from moe.train.trainer import Trainer

    for name in [*CASES[job], *([RESUMED[1]] if job == "pp2" else [])]:
        if name == RESUMED[1]:
            if rank == 0:
                interrupted_copy(f"{out}/runs", *RESUMED, STEPS, SAVE_AT)
            barrier()
            trainer = resume(case(out, job, name, world_size), rank)
        else:
            trainer = Trainer(case(out, job, name, world_size), rank)
            grads = {}
            if trainer.resolved.pipeline_stages == 1:  # a reference: its gradients set the parameter tolerance
                snapshot_step1_gradients(trainer, grads)
            trainer.fit()
            torch.save(grads, f"{out}/{name}_grads_rank{rank}.pt")
        torch.save(global_params(trainer), f"{out}/{name}_rank{rank}.pt")
        trainer.engine.destroy()
        # DeepSpeed's expert groups are process-global and keyed by the EP size alone; a pipeline's sit inside a stage
        reset_expert_groups()


def spawn(tmp_path_factory, job: str, ranks: int):
    out = tmp_path_factory.mktemp(job)
    run_on_ranks(train_pipelines, job, out, ranks=ranks)
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
    return merged([torch.load(out / f"{name}_rank{rank}.pt") for rank in range(ranks)])


def assert_same_run(out, pipeline: str, reference: str, ranks: int, n_steps: int) -> None:
    got, want = steps(out, pipeline), steps(out, reference)
    assert [r["step"] for r in got] == [r["step"] for r in want] == list(range(1, n_steps + 1))
    for key in ("loss", "lm_loss", "aux_loss", "grad_norm"):
        rel = GRAD_RTOL if key == "grad_norm" else RTOL
        assert [r[key] for r in got] == pytest.approx([r[key] for r in want], rel=rel), key
    assert validations(out, pipeline) == pytest.approx(validations(out, reference), rel=RTOL)
    grads = merged([torch.load(out / f"{reference}_grads_rank{rank}.pt") for rank in range(ranks)])
    assert_adam_params_match(
        final_params(out, pipeline, ranks),
        final_params(out, reference, ranks),
        grads,
        [r["lr"] for r in want],
        f"{pipeline} against {reference}",
    )


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
    """moe_pp2 copied as if killed after its step-SAVE_AT checkpoint, then resumed: the remaining steps and the final
    weights equal the uninterrupted run's exactly (the same layout, the same float order)."""
    source, resumed = RESUMED
    keys = ("step", "loss", "lm_loss", "aux_loss", "grad_norm", "lr")
    assert [[r[k] for k in keys] for r in steps(pp2, resumed)[SAVE_AT:]] == [
        [r[k] for k in keys] for r in steps(pp2, source)[SAVE_AT:]
    ]
    assert len(steps(pp2, resumed)) == STEPS
    want, got = final_params(pp2, source, 2), final_params(pp2, resumed, 2)
    assert all(torch.equal(got[key], value) for key, value in want.items())


def test_resuming_a_pipeline_checkpoint_at_another_layout_is_one_line_refusal(pp2):
    from moe.checkpoint import check_resume

    args = ["moe.ep_size=1", *NO_SAMPLING, f"train.max_steps={STEPS}"]
    with pytest.raises(ConfigError, match=r"pipeline.stages=2.*pipeline.stages=1.*resumes only at its own layout"):
        check_resume(resolved_for(pp2, "moe_pp2", "zero1.json", args), True)
    check_resume(resolved_for(pp2, "moe_pp2", "pipeline2.json", args), True)  # its own layout: accepted


def test_export_of_a_pipeline_checkpoint_gives_the_trained_model(pp2, tmp_path):
    """`python -m moe.export` merges both stages' files; the stock HF model computes the trained weights' logits."""
    run_dir, out = pp2 / "runs" / "moe_pp2", tmp_path / "hf"
    proc = run(
        [sys.executable, "-m", "moe.export", str(run_dir), str(out)],
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = MoEGPTConfig.from_pretrained(run_dir / "model_config")
    config.ep_size, config.drop_tokens = 1, False  # one rank, dropless like the export
    reference = build_model(config, seed=1).eval()
    reference.load_state_dict(final_params(pp2, "moe_pp2", 2), strict=True)  # the engine's weights at the end
    ids = torch.randint(0, config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))  # (B, T)
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, reference(ids).logits, rtol=1e-4, atol=1e-4)
    proc = run(
        [sys.executable, "-m", "moe.reshard", str(run_dir)],
        timeout=120,
    )
    last_line = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and last_line.startswith("error: ") and "pipeline-parallel checkpoint" in last_line


def test_pp2_x_ep2_matches_pp1_x_ep4_data_parallel(pp2_ep2):
    """4 ranks: 2 stages x 2 data-parallel ranks, experts split over the 2 ranks of each stage (a MoE layer on both
    stages), against 4 data-parallel ranks at the same EP=2."""
    assert_same_run(pp2_ep2, "ep2_pp2", "ep2_pp1", ranks=4, n_steps=2)
    assert any(".experts.deepspeed_experts.3." in key for key in final_params(pp2_ep2, "ep2_pp2", 4))


def test_router_telemetry_matches_pp1(pp2):
    """Each stage reports its own MoE layers; one all-reduce adds them up as without a pipeline."""
    got, want = steps(pp2, "moe_pp2"), steps(pp2, "moe_pp1")
    keys = [k for k in want[-1] if k.startswith("router/") and not k.endswith("tokens_per_expert")]
    assert "router/layer1/aux_loss" in keys
    for g, w in zip(got, want):
        assert g["router/layer1/tokens_per_expert"] == w["router/layer1/tokens_per_expert"]
        assert [g[k] for k in keys] == pytest.approx([w[k] for k in keys], rel=RTOL)


def test_the_schedule_is_the_recipes(pp2):
    lrs = [r["lr"] for r in steps(pp2, "moe_pp2")]
    assert lrs == pytest.approx([3e-3 * warmup_cosine(s, 2, STEPS, 0.1) for s in range(STEPS)], rel=1e-12)
