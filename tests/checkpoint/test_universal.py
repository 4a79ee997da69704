"""AutoEP (moe.impl=autoep, HF Mixtral) checkpoints resumed at another layout on real gloo ranks, through DeepSpeed's
universal checkpoint (moe/checkpoint/universal.py):

- EP 2 -> 1 with ZeRO-1 -> 2 and EP 1 -> 2 with ZeRO-3 -> 1 (2 ranks both sides), and 2 ranks (EP 2, ZeRO-1) ->
  1 rank (ZeRO-3, 2 micro-batches): the losses after the save equal the uninterrupted EP-2 run's;
- the preflight refuses an unconverted layout change in one line naming `python -m moe.reshard`, which converts.
Three jobs: training (2 ranks: each SOURCES run for STEPS steps with checkpoints at SAVE_AT and STEPS, then a copy
per RESHARDED case as if its job had died after SAVE_AT), the resumes (2 ranks), the 1-rank resume (a plain
process, the same global batch of 16 in 2 micro-batches); plus one `python -m moe.reshard` per source run.
"""

import shutil
import sys
from types import SimpleNamespace

import pytest

from moe.checkpoint.universal import is_converted, universal_dir
from moe.config import ConfigError
from moe.config.args import parse_trainer_args
from tests.harness import interrupted_copy, resolved_for, resume, run_on_ranks
from tests.helpers import explain, read_metrics, run

pytestmark = pytest.mark.distributed
STEPS, SAVE_AT = 4, 2
AUTOEP = [
    "moe.impl=autoep",
    "model.family=mixtral",
    "model.n_kv_heads=2",
    "moe.interval=1",
    "moe.capacity_factor=1.0",
    "moe.eval_capacity_factor=1.0",
]  # as tests/train/test_autoep.py
SOURCES = {"ep2_zero1": (2, "zero1.json"), "ep1_zero3": (1, "zero3.json")}  # name: (moe.ep_size, ds_config), 2 ranks
# Together: EP 2 -> 1 and 1 -> 2, data-parallel 2 -> 1, and the three cross-stage paths DeepSpeed's universal
# checkpoint needs our shims for (ZeRO-1 -> 2 is DeepSpeed's alone; 3 -> 1 and 1 -> 3: moe/checkpoint/universal.py).
RESHARDED = {  # name: (source, moe.ep_size, ds_config, overrides), resumed on 2 ranks
    "ep2_zero1_to_ep1_zero2": ("ep2_zero1", 1, "zero2.json", []),
    "ep1_zero3_to_ep2_zero1": ("ep1_zero3", 2, "zero1.json", []),
}
# name: (source, ...) as above, resumed on 1 rank; the test copies it from the converted case named last
ONE_RANK = {
    "ep2_zero1_to_1rank_zero3": (
        "ep2_zero1",
        1,
        "zero3.json",
        ["ds.gradient_accumulation_steps=2"],
        "ep2_zero1_to_ep1_zero2",
    )
}
REFUSED = "ep2_zero1_to_ep1_zero2"
CASES = {**RESHARDED, **ONE_RANK}


def overrides(ep_size: int) -> list[str]:
    return [
        *AUTOEP,
        f"moe.ep_size={ep_size}",
        f"train.max_steps={STEPS}",
        f"train.save_interval={SAVE_AT}",
        "train.eval_interval=0",
    ]


def train_sources(rank: int, world_size: int, out: str) -> None:
    from moe.parallel import barrier
    from moe.train.trainer import Trainer

    for name, (ep_size, ds_config) in SOURCES.items():
        trainer = Trainer(resolved_for(out, name, ds_config, overrides(ep_size), world_size), rank)
        trainer.fit()
        trainer.engine.destroy()
    if rank == 0:
        for name, (source, *_) in RESHARDED.items():
            interrupted_copy(f"{out}/runs", source, name, STEPS, SAVE_AT)
    barrier()


def resume_cases(rank: int, world_size: int, out: str, which: str) -> None:
    for name, (_, ep_size, ds_config, extra, *_) in (RESHARDED if which == "resharded" else ONE_RANK).items():
        resume(resolved_for(out, name, ds_config, [*overrides(ep_size), *extra], world_size), rank).engine.destroy()


def preflight(out, world_size: int, ds_config: str, *args: str) -> str | None:
    """What the launcher checks before it spawns any rank: None, or the one-line error it would print."""
    from moe.launch.preflight import preflight as check

    try:
        check(
            parse_trainer_args(
                [
                    "--recipe",
                    "recipes/tiny.yaml",
                    "--ds_config",
                    f"ds_configs/{ds_config}",
                    "--resume",
                    *args,
                    f"logging.runs_dir={out / 'runs'}",
                ]
            ),
            world_size,
            cuda=False,
        )
    except ConfigError as e:
        return str(e)
    return None


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    out = tmp_path_factory.mktemp("autoep_reshard")
    runs = out / "runs"
    run_on_ranks(train_sources, out, ranks=2)
    refused_args = [*overrides(RESHARDED[REFUSED][1]), f"logging.run_name={REFUSED}"]
    refused = preflight(out, 2, RESHARDED[REFUSED][2], *refused_args)
    converts = {name: run([sys.executable, "-m", "moe.reshard", str(runs / name)], timeout=300) for name in RESHARDED}
    for proc in converts.values():
        assert proc.returncode == 0, explain(proc)
    for name, (*_, converted_case) in ONE_RANK.items():  # one conversion serves every later resume
        shutil.copytree(runs / converted_case, runs / name)
    accepted = preflight(out, 2, RESHARDED[REFUSED][2], *refused_args)
    run_on_ranks(resume_cases, out, "resharded", ranks=2)
    run_on_ranks(resume_cases, out, "one_rank", ranks=1)
    return SimpleNamespace(out=out, refused=refused, converts=converts, accepted=accepted)


def train_records(run_dir) -> dict[int, dict]:
    return {m["step"]: m for m in read_metrics(run_dir) if "loss" in m}


@pytest.mark.parametrize("name", CASES)
def test_resume_at_another_layout_continues_the_uninterrupted_run(jobs, name):
    got, want = train_records(jobs.out / "runs" / name), train_records(jobs.out / "runs" / CASES[name][0])
    assert sorted(got) == list(range(1, STEPS + 1))
    # Step SAVE_AT + 1 checks the weights (experts re-sliced for the new EP size); the next one the Adam moments,
    # step count and group hyperparameters. fp32, so only the reduction order differs between layouts: measured
    # equal at SAVE_AT + 1 and at most 4.8e-7 apart (7e-8 relative) at SAVE_AT + 2. What a broken optimizer state
    # does to SAVE_AT + 2 (measured): zeroed moments 9.6e-3, a restarted step count 4.6e-2, ZeRO-3's shared step
    # counter 2.1e-3, ZeRO-3's group-0 weight decay on every group 6e-5; 1e-6 relative lies between.
    for step in range(SAVE_AT + 1, STEPS + 1):
        assert got[step]["lr"] == want[step]["lr"], step  # the LR schedule's position
        assert got[step]["loss"] == pytest.approx(want[step]["loss"], rel=1e-6, abs=0), (step, got[step], want[step])


def test_resume_at_another_layout_is_refused_before_spawn_until_converted(jobs):
    refused, run_dir = jobs.refused, jobs.out / "runs" / REFUSED
    assert refused is not None and "\n" not in refused
    assert (
        "saved with 2 ranks, moe.ep_size=2, ZeRO-1, fp32, this run has 2 ranks, moe.ep_size=1, ZeRO-2, fp32" in refused
    ), refused
    assert f"`python -m moe.reshard {run_dir} --tag global_step{SAVE_AT}`" in refused, refused
    tag_dir = run_dir / "checkpoints" / f"global_step{SAVE_AT}"
    assert f"wrote {universal_dir(tag_dir)}" in jobs.converts[REFUSED].stdout
    assert is_converted(tag_dir) and (universal_dir(tag_dir) / "zero" / "optimizer_state.pt").is_file()
    assert jobs.accepted is None


def test_same_layout_resume_needs_no_conversion(jobs):
    out = jobs.out
    assert not is_converted(out / "runs" / "ep2_zero1" / "checkpoints" / f"global_step{STEPS}")
    assert preflight(out, 2, "zero1.json", *overrides(2), "logging.run_name=ep2_zero1") is None
