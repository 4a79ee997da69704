"""Checkpoints across layouts on real gloo ranks (tests/distributed/reshard_worker.py drives the real Trainer):

- resume at another expert-parallel size / ZeRO stage / precision path (2 ranks both sides) and at another rank
  count (1 rank with 2 micro-batches -> 2 ranks) continues exactly like the uninterrupted run: Adam moments and
  step, fp32 masters, LR schedule and data position all carried by the layout-free state;
- `python -m moe.reshard` and the preflight refusal that names it;
- fp32 consolidation of a bf16 ZeRO-2 EP=2 checkpoint equals DeepSpeed's fp32 masters, and the HF export carries it;
- an HF export imported with model.init_from (EP=2) gives the original model's logits;
- per-expert checkpoint files hold just their expert.
Three jobs in all: the 1-rank training (a plain process), the converter (1 rank), the 2-rank job for the rest.
"""
import json
import sys
from types import SimpleNamespace

import pytest
import torch

from moe.reshard import consolidated_fp32, is_converted
from tests.distributed.reshard_worker import DP_RESUMED, DP_SOURCE, RESHARDED, SAVE_AT, STEPS
from tests.helpers import REPO, explain, read_metrics, run, run_distributed

pytestmark = pytest.mark.distributed
WORKER = REPO / "tests/distributed/reshard_worker.py"
DP_NAME = DP_RESUMED[0]
DP_ARGS = ("--recipe", "recipes/tiny.yaml", "--ds_config", "ds_configs/zero1.json", "--resume", "moe.ep_size=2",
           "moe.top2_2nd_expert_sampling=false", "moe.use_rts=false", f"train.max_steps={STEPS}",
           f"logging.run_name={DP_NAME}")


def preflight(out, world_size: int, *args: str) -> str | None:
    """What the launcher checks before it spawns any rank: None, or the one-line error it would print."""
    from moe.cli import parse_trainer_args
    from moe.config import ConfigError
    from moe.preflight import preflight as check
    try:
        check(parse_trainer_args([*args, f"logging.runs_dir={out / 'runs'}"]), world_size, cuda=False)
    except ConfigError as e:
        return str(e)
    return None


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    out = tmp_path_factory.mktemp("reshard")
    proc = run([sys.executable, str(WORKER), "train_1rank", str(out)], timeout=300)  # a world of one, no launcher
    assert proc.returncode == 0, explain(proc)
    refused = preflight(out, 2, *DP_ARGS)  # the 1-rank checkpoint, resumed on 2 ranks before conversion
    convert = run([sys.executable, "-m", "moe.reshard", str(out / "runs" / DP_NAME)], timeout=300)
    assert convert.returncode == 0, explain(convert)
    accepted = preflight(out, 2, *DP_ARGS)
    proc = run_distributed(WORKER, "train", str(out), ranks=2)
    assert proc.returncode == 0, explain(proc)
    saved = [torch.load(out / f"train_rank{r}.pt", weights_only=False) for r in range(2)]
    return SimpleNamespace(out=out, saved=saved, refused=refused, convert=convert, accepted=accepted)


def train_records(run_dir) -> dict[int, dict]:
    return {m["step"]: m for m in read_metrics(run_dir) if "loss" in m}


def assert_continues_like(run_dir, reference_dir, rel: float) -> None:
    got, want = train_records(run_dir), train_records(reference_dir)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(SAVE_AT + 1, STEPS + 1):
        assert got[step]["lr"] == want[step]["lr"], step  # the schedule's position
        assert got[step]["loss"] == pytest.approx(want[step]["loss"], rel=rel), step


@pytest.mark.parametrize("name", list(RESHARDED))
def test_resume_at_another_ep_size_and_zero_stage_continues_the_run(jobs, name):
    # The step after the save checks the weights; the two after it the Adam moments and step count. fp32: only the
    # reduction order differs between layouts (measured: equal); bf16: its rounding at another layout (measured 4e-7).
    assert_continues_like(jobs.out / "runs" / name, jobs.out / "runs" / RESHARDED[name][0],
                          rel=1e-5 if "bf16" in name else 1e-6)


def test_resume_on_another_rank_count_continues_the_run(jobs):
    assert_continues_like(jobs.out / "runs" / DP_NAME, jobs.out / "runs" / DP_SOURCE[0], rel=1e-6)
    tag_dir = jobs.out / "runs" / DP_NAME / "checkpoints" / f"global_step{STEPS}"
    saved = torch.load(tag_dir / "mp_rank_00_model_states.pt", weights_only=False)
    assert saved["samples_consumed"] == STEPS * 16  # 2 x 8 sequences on 1 rank, then 8 on each of 2 ranks


def test_resume_at_another_layout_is_refused_before_spawn_until_converted(jobs):
    refused = jobs.refused
    assert refused is not None and "\n" not in refused
    assert "saved with 1 rank, moe.ep_size=1, ZeRO-0, fp32, this run has 2 ranks, moe.ep_size=2, ZeRO-1" in refused, \
        refused
    assert f"`python -m moe.reshard {jobs.out / 'runs' / DP_NAME} --tag global_step{SAVE_AT}`" in refused, refused
    assert "wrote " in jobs.convert.stdout
    assert is_converted(jobs.out / "runs" / DP_NAME / "checkpoints" / f"global_step{SAVE_AT}")
    assert jobs.accepted is None


def test_resume_with_another_model_shape_is_still_refused(jobs):
    error = preflight(jobs.out, 2, *DP_ARGS, "moe.num_experts=8")
    assert error == (f"--resume: checkpoint global_step{STEPS} was trained with moe.num_experts=4, this recipe has 8; "
                     f"the model shapes do not match")


def test_same_layout_resume_needs_no_conversion(jobs):
    assert preflight(jobs.out, 2, "--recipe", "recipes/tiny.yaml", "--ds_config", "ds_configs/zero1.json", "--resume",
                     f"train.max_steps={STEPS + 2}", "logging.run_name=ep2_zero1") is None


def merged(states: list[dict], key: str) -> dict:
    out = {}
    for state in states:
        for name, tensor in state[key].items():
            assert name not in out or torch.equal(out[name], tensor), name
            out[name] = tensor
    return out


def test_fp32_consolidation_of_bf16_zero2_ep2_equals_deepspeed_masters(jobs, tmp_path):
    out, saved = jobs.out, jobs.saved
    masters = merged(saved, "masters")  # safe_get_full_fp32_param at the step-STEPS save, both EP ranks
    run_dir = out / "runs" / "bf16_ep2_zero2"
    state = consolidated_fp32(run_dir / "checkpoints" / f"global_step{STEPS}")
    assert set(state) == set(masters) and sum(".deepspeed_experts." in n for n in state) == 3 * 4  # all experts
    for name, master in masters.items():
        assert state[name].dtype == torch.float32 and torch.equal(state[name], master), name
    # more than the bf16 copies the model files hold
    assert any(not torch.equal(m, m.bfloat16().float()) for m in masters.values())

    from transformers import AutoModelForCausalLM

    from moe.export import export
    from moe.model.hf_names import to_hf
    export(run_dir, tmp_path / "hf")  # a bf16 run: fp32 masters by default
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").state_dict()
    for name, tensor in to_hf(masters, num_experts=4).items():
        assert torch.equal(exported[name], tensor), name


def test_fp32_consolidation_of_bf16_zero0_equals_its_fp32_copies(jobs):
    name = "bf16_ep2_zero2_to_ep1_zero0"
    masters = merged(jobs.saved, "zero0_bf16_masters")  # EP=1: both ranks hold every parameter
    state = consolidated_fp32(jobs.out / "runs" / name / "checkpoints" / f"global_step{STEPS}")
    assert set(state) == set(masters)
    for param, master in masters.items():
        assert torch.equal(state[param], master), param


def test_import_of_an_export_gives_the_original_logits_at_ep2(jobs):
    for rank in jobs.saved:  # exported (Qwen2-MoE), then model.init_from into a 2-rank EP=2 run
        torch.testing.assert_close(rank["imported"]["logits"], rank["original"]["logits"], rtol=1e-6, atol=1e-6)
        assert rank["imported"]["lm_loss"] == pytest.approx(rank["original"]["lm_loss"], rel=1e-6)


def test_expert_files_hold_only_their_expert(jobs):
    out = jobs.out
    tag_dir = out / "runs" / "ep2_zero1" / "checkpoints" / f"global_step{SAVE_AT}"
    config = json.loads((out / "runs" / "ep2_zero1" / "model_config" / "config.json").read_text())
    expert_bytes = 3 * config["d_model"] * config["expert_d_ff"] * 4  # gate, up, down projections, fp32
    files = sorted(tag_dir.glob("layer_*_expert_*_mp_rank_00_model_states.pt"))
    assert len(files) == 4
    for f in files:  # no bloat (DeepSpeed issue 2389): measured 150,154 bytes for 147,456 bytes of weights
        assert expert_bytes < f.stat().st_size < expert_bytes * 1.05, (f.name, f.stat().st_size, expert_bytes)
    module = torch.load(tag_dir / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    assert not any(".deepspeed_experts." in name for name in module)
