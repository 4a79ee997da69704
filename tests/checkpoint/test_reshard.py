"""Native (moe.impl=deepspeed) checkpoints across layouts on real gloo ranks, driving the real Trainer:

- resume at another expert-parallel size / ZeRO stage / precision path (2 ranks both sides) and at another rank
  count (1 rank with 2 micro-batches -> 2 ranks) continues exactly like the uninterrupted run: Adam moments and
  step, fp32 masters, LR schedule and data position all carried by the layout-free state;
- `python -m moe.reshard` and the preflight refusal that names it;
- fp32 consolidation of a bf16 ZeRO-2 EP=2 checkpoint equals DeepSpeed's fp32 masters, and the HF export carries it;
- an HF export imported with model.init_from (EP=2) gives the original model's logits;
- per-expert checkpoint files hold just their expert.
Three jobs in all: the 1-rank training (a plain process), the converter (1 rank), the 2-rank job for the rest:
1. trains each SOURCES run for STEPS steps with checkpoints at SAVE_AT and STEPS (the uninterrupted references);
2. copies each RESHARDED case's source as if it had died after step SAVE_AT, writes the layout-free state there
   (what `python -m moe.reshard` runs on each rank) and resumes it at its new layout; resumes the converted DP copy;
3. records the fp32 masters at the last save of the bf16 ZeRO-2 run and of the resumed bf16 ZeRO-0 run, and writes
   those saves' layout-free state;
4. exports one run to HF and starts a run from it with model.init_from: records both models' eval logits.
"""

import json
import sys
from types import SimpleNamespace

import pytest
import torch

from moe.checkpoint.layout_free import consolidated_fp32, global_names, is_converted
from moe.config import ConfigError
from moe.config.args import parse_trainer_args
from tests.harness import interrupted_copy, merged, resolved_for, resume, run_on_ranks
from tests.helpers import read_metrics, run

pytestmark = pytest.mark.distributed
STEPS, SAVE_AT = 6, 3
# Gate sampling draws from each rank's RNG stream, which a different rank count cannot continue: the DP case routes
# deterministically so its resumed losses can equal the uninterrupted run's.
NO_SAMPLING = ["moe.top2_2nd_expert_sampling=false", "moe.use_rts=false"]
SOURCES = {  # name: (moe.ep_size, ds_config, overrides), all on 2 ranks
    "ep2_zero1": (2, "zero1.json", []),
    "ep1_zero2": (1, "zero2.json", []),
    "bf16_ep2_zero2": (2, "zero2_bf16.json", []),
}
RESHARDED = {  # name: (source, moe.ep_size, ds_config, overrides), resumed on 2 ranks
    "ep2_zero1_to_ep1_zero2": ("ep2_zero1", 1, "zero2.json", []),
    "ep1_zero2_to_ep2_zero0": ("ep1_zero2", 2, "zero0.json", []),
    "bf16_ep2_zero2_to_ep1_zero0": ("bf16_ep2_zero2", 1, "zero0_bf16.json", []),
}
# 1 rank (ZeRO-0) with 2 micro-batches per step -> 2 ranks (ZeRO-1) with 1: the same global batch of 16
DP_SOURCE = ("dp1_accum2", 1, "zero0.json", NO_SAMPLING + ["ds.gradient_accumulation_steps=2"])
DP_RESUMED = ("dp1_accum2_to_2ranks_ep2", 2, "zero1.json", NO_SAMPLING)
DP_NAME = DP_RESUMED[0]
DP_ARGS = (
    "--recipe",
    "recipes/tiny.yaml",
    "--ds_config",
    "ds_configs/zero1.json",
    "--resume",
    "moe.ep_size=2",
    *NO_SAMPLING,
    f"train.max_steps={STEPS}",
    f"logging.run_name={DP_NAME}",
)
IMPORT_SOURCE = "ep2_zero1"


def case(out: str, name: str, ep_size: int, ds_config: str, extra: list[str], world_size: int):
    return resolved_for(
        out,
        name,
        ds_config,
        [
            f"moe.ep_size={ep_size}",
            f"train.max_steps={STEPS}",
            f"train.save_interval={SAVE_AT}",
            "train.eval_interval=0",
            *extra,
        ],
        world_size,
    )


def fp32_masters(engine) -> dict:
    """{global name: fp32 master} of this rank's parameters, read through DeepSpeed's own API (ZeRO 1/2), or from
    the fp32 copies of its FP16_UnfusedOptimizer (ZeRO 0 bf16), which has none."""
    from deepspeed.utils import safe_get_full_fp32_param

    names, optimizer = global_names(engine.module), engine.optimizer
    if hasattr(optimizer, "fp32_groups"):
        pairs = zip(optimizer.fp16_groups, optimizer.fp32_groups)
        return {names[id(lp)]: hp.detach().clone() for lps, hps in pairs for lp, hp in zip(lps, hps)}
    return {names[id(p)]: safe_get_full_fp32_param(p).cpu().clone() for p in engine.module.parameters()}


@torch.no_grad()
def eval_forward(trainer, ids: torch.Tensor) -> dict:
    trainer.engine.eval()
    out = trainer.engine(ids, labels=ids)
    trainer.engine.train()
    return {"logits": out.logits.float().cpu(), "lm_loss": float(out.lm_loss)}


def train_and_resume(rank: int, world_size: int, out: str) -> None:
    from moe.checkpoint import export
    from moe.parallel import barrier
    from moe.reshard import dump
    from moe.train.trainer import Trainer

    saved = {}
    for name, (ep_size, ds_config, extra) in SOURCES.items():
        trainer = Trainer(case(out, name, ep_size, ds_config, extra, world_size), rank)
        trainer.fit()
        if name == "bf16_ep2_zero2":
            saved["masters"] = fp32_masters(trainer.engine)
        if name == IMPORT_SOURCE:
            saved["ids"] = trainer.batches.at_sample(0)  # (B, T)
            saved["original"] = eval_forward(trainer, saved["ids"])
        trainer.engine.destroy()
    runs = f"{out}/runs"
    if rank == 0:
        for name, (source, *_) in RESHARDED.items():
            interrupted_copy(runs, source, name, STEPS, SAVE_AT)
        export(f"{runs}/{IMPORT_SOURCE}", f"{out}/hf_export")
    barrier()
    for name in RESHARDED:
        dump(f"{runs}/{name}", f"global_step{SAVE_AT}")
    dump(f"{runs}/bf16_ep2_zero2", f"global_step{STEPS}")  # the save whose masters were recorded
    for name, (_, ep_size, ds_config, extra) in RESHARDED.items():
        trainer = resume(case(out, name, ep_size, ds_config, extra, world_size), rank)
        if ds_config == "zero0_bf16.json":  # its last save, consolidated from the ZeRO-0 bf16 path
            saved["zero0_bf16_masters"] = fp32_masters(trainer.engine)
            dump(f"{runs}/{name}", f"global_step{STEPS}")
        trainer.engine.destroy()
    name, ep_size, ds_config, extra = DP_RESUMED
    resume(case(out, name, ep_size, ds_config, extra, world_size), rank).engine.destroy()

    hf = f"{out}/hf_export"
    imported = Trainer(
        case(out, "imported", 2, "zero1.json", [f"model.init_from={hf}", f"data.tokenizer={hf}"], world_size), rank
    )
    saved["imported"] = eval_forward(imported, saved["ids"])
    imported.engine.destroy()
    torch.save(saved, f"{out}/train_rank{rank}.pt")


def train_on_one_rank(rank: int, world_size: int, out: str) -> None:
    from moe.train.trainer import Trainer

    name, ep_size, ds_config, extra = DP_SOURCE
    trainer = Trainer(case(out, name, ep_size, ds_config, extra, world_size), rank)
    trainer.fit()
    trainer.engine.destroy()
    interrupted_copy(f"{out}/runs", name, DP_NAME, STEPS, SAVE_AT)


def preflight(out, world_size: int, *args: str) -> str | None:
    """What the launcher checks before it spawns any rank: None, or the one-line error it would print."""
    from moe.launch.preflight import preflight as check

    try:
        check(parse_trainer_args([*args, f"logging.runs_dir={out / 'runs'}"]), world_size, cuda=False)
    except ConfigError as e:
        return str(e)
    return None


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    out = tmp_path_factory.mktemp("reshard")
    run_on_ranks(train_on_one_rank, out, ranks=1)
    refused = preflight(out, 2, *DP_ARGS)  # the 1-rank checkpoint, resumed on 2 ranks before conversion
    convert = run([sys.executable, "-m", "moe.reshard", str(out / "runs" / DP_NAME)], timeout=300)
    assert convert.returncode == 0, convert.stderr[-3000:]
    accepted = preflight(out, 2, *DP_ARGS)
    run_on_ranks(train_and_resume, out, ranks=2)
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
    # reduction order differs between layouts; bf16: its rounding at another layout.
    assert_continues_like(
        jobs.out / "runs" / name, jobs.out / "runs" / RESHARDED[name][0], rel=1e-5 if "bf16" in name else 1e-6
    )


def test_resume_on_another_rank_count_continues_the_run(jobs):
    assert_continues_like(jobs.out / "runs" / DP_NAME, jobs.out / "runs" / DP_SOURCE[0], rel=1e-6)
    tag_dir = jobs.out / "runs" / DP_NAME / "checkpoints" / f"global_step{STEPS}"
    saved = torch.load(tag_dir / "mp_rank_00_model_states.pt", weights_only=False)
    assert saved["samples_consumed"] == STEPS * 16  # 2 x 8 sequences on 1 rank, then 8 on each of 2 ranks


def test_resume_at_another_layout_is_refused_before_spawn_until_converted(jobs):
    refused = jobs.refused
    assert refused is not None and "\n" not in refused
    assert "saved with 1 rank, moe.ep_size=1, ZeRO-0, fp32, this run has 2 ranks, moe.ep_size=2, ZeRO-1" in refused, (
        refused
    )
    assert f"`python -m moe.reshard {jobs.out / 'runs' / DP_NAME} --tag global_step{SAVE_AT}`" in refused, refused
    assert "wrote " in jobs.convert.stdout
    assert is_converted(jobs.out / "runs" / DP_NAME / "checkpoints" / f"global_step{SAVE_AT}")
    assert jobs.accepted is None


def test_resume_with_another_model_shape_is_still_refused(jobs):
    error = preflight(jobs.out, 2, *DP_ARGS, "moe.num_experts=8")
    assert error == (
        f"--resume: checkpoint global_step{STEPS} was trained with moe.num_experts=4, this recipe has 8; "
        f"the model shapes do not match"
    )


def test_same_layout_resume_needs_no_conversion(jobs):
    assert (
        preflight(
            jobs.out,
            2,
            "--recipe",
            "recipes/tiny.yaml",
            "--ds_config",
            "ds_configs/zero1.json",
            "--resume",
            f"train.max_steps={STEPS + 2}",
            "logging.run_name=ep2_zero1",
        )
        is None
    )


def test_fp32_consolidation_of_bf16_zero2_ep2_equals_deepspeed_masters(jobs, tmp_path):
    out = jobs.out
    masters = merged([rank["masters"] for rank in jobs.saved])  # safe_get_full_fp32_param at the last save
    run_dir = out / "runs" / "bf16_ep2_zero2"
    state = consolidated_fp32(run_dir / "checkpoints" / f"global_step{STEPS}")
    assert set(state) == set(masters) and sum(".deepspeed_experts." in n for n in state) == 3 * 4  # all experts
    for name, master in masters.items():
        assert state[name].dtype == torch.float32 and torch.equal(state[name], master), name
    # more than the bf16 copies the model files hold
    assert any(not torch.equal(m, m.bfloat16().float()) for m in masters.values())

    from transformers import AutoModelForCausalLM

    from moe.checkpoint import export
    from moe.model.hf.names import to_hf

    export(run_dir, tmp_path / "hf")  # a bf16 run: fp32 masters by default
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").state_dict()
    for name, tensor in to_hf(masters, num_experts=4).items():
        assert torch.equal(exported[name], tensor), name


def test_fp32_consolidation_of_bf16_zero0_equals_its_fp32_copies(jobs):
    name = "bf16_ep2_zero2_to_ep1_zero0"
    masters = merged([rank["zero0_bf16_masters"] for rank in jobs.saved])  # EP=1: both ranks hold every parameter
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
    for f in files:  # no bloat (DeepSpeed issue 2389): within 5% of the weights' own bytes
        assert expert_bytes < f.stat().st_size < expert_bytes * 1.05, (f.name, f.stat().st_size, expert_bytes)
    module = torch.load(tag_dir / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    assert not any(".deepspeed_experts." in name for name in module)
