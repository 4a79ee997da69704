"""What a sweep reads from run folders (moe/scaling/run_folder.py, moe/scaling/sweep_status.py): finished or not,
resumable or not, and the --status table, from folders written here the way the trainer writes them."""

import json
from pathlib import Path

import yaml

from moe.scaling.run_folder import can_resume, read_metrics, run_finished
from moe.scaling.sweep import expand, load_sweep, slurm_task_command
from moe.scaling.sweep_state import SweepState
from moe.scaling.sweep_status import format_table, run_status, seconds_per_step
from tests.helpers import REPO

TOKENS_PER_STEP = 512


def write_metrics(run_dir: Path, steps_and_times, val_losses=(), tokens=True) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        {"step": s, "loss": 7.0 - s / 10, "tokens_per_s": 1000.0, "time": t, **({"tokens": s * 512} if tokens else {})}
        for s, t in steps_and_times
    ] + [{"step": s, "val_loss": v} for s, v in val_losses]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def write_checkpoint(run_dir: Path, step: int, max_steps: int, complete: bool = True) -> None:
    tag = run_dir / "checkpoints" / f"global_step{step}"
    tag.mkdir(parents=True)
    (tag / "recipe.yaml").write_text(yaml.safe_dump({"train": {"max_steps": max_steps}}))
    if complete:
        (tag / "COMPLETE").write_text("")
        (run_dir / "checkpoints" / "latest").write_text(tag.name)


def test_done_json_finishes_a_run_unless_the_sweep_wants_more_steps(tmp_path):
    (tmp_path / "done.json").write_text(json.dumps({"step": 40, "tokens": 20480, "val_loss": 5.9}))
    assert run_finished(tmp_path) and run_finished(tmp_path, 40) and not run_finished(tmp_path, 80)


def test_without_done_json_a_checkpoint_at_max_steps_finishes_a_run(tmp_path):
    a, b, c, d = (tmp_path / n for n in "abcd")
    write_checkpoint(a, 20, max_steps=20)
    write_checkpoint(b, 10, max_steps=20)
    write_checkpoint(c, 20, max_steps=20, complete=False)  # a save that died: not a checkpoint
    d.mkdir()
    assert [run_finished(r) for r in (a, b, c, d)] == [True, False, False, False]
    assert [can_resume(r) for r in (a, b, c, d)] == [True, True, False, False]


def test_a_metrics_line_cut_by_a_kill_is_left_out(tmp_path):
    write_metrics(tmp_path, [(1, 1.0), (2, 2.0)])
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "lo')
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]


def test_seconds_per_step_is_the_recent_median_across_a_resume():
    resumed = [(s, 2.0 * s) for s in range(1, 5)] + [(s, 1000.0 + 2.0 * s) for s in range(5, 15)]
    train = [{"step": s, "time": t} for s, t in resumed]
    assert seconds_per_step(train) == 2.0  # the 4 -> 5 gap (a restart) is one span of ten
    assert seconds_per_step(train[:1]) is None


def test_status_rows_tell_done_running_stopped_failed_and_pending_runs(tmp_path):
    state = SweepState.load(tmp_path / "state.json", "s")
    for name in ("running", "stopped", "failed"):
        state.started(name, None)
    state.ended("failed", 1)
    write_metrics(tmp_path / "done", [(8, 16.0)], [(8, 5.5)])
    (tmp_path / "done" / "done.json").write_text(json.dumps({"step": 8, "tokens": 4096, "val_loss": 5.25}))
    steps = [(s, 2.0 * s) for s in range(1, 5)] + [(s, 1000.0 + 2.0 * s) for s in range(5, 15)]
    write_metrics(tmp_path / "running", steps, [(0, 6.9), (10, 6.1234)])
    write_metrics(tmp_path / "stopped", [(1, 1.0), (2, 2.0)], tokens=False)
    write_metrics(tmp_path / "failed", [(1, 1.0)])

    def row(name, alive=True, max_steps=40):
        return run_status(name, tmp_path / name, max_steps, TOKENS_PER_STEP, state.runs.get(name), alive)

    rows = [row("done", max_steps=8), row("running"), row("stopped", alive=False), row("failed"), row("pending")]
    assert [(r.state, r.step, r.tokens, r.val_loss, r.eta_s) for r in rows] == [
        ("done", 8, 4096, 5.25, None),  # done.json's numbers
        ("running", 14, 14 * 512, 6.1234, (40 - 14) * 2.0),
        ("stopped", 2, 2 * TOKENS_PER_STEP, None, None),  # no `tokens` in its records: steps x tokens per step
        ("failed", 1, 512, None, None),
        ("pending", 0, 0, None, None),
    ]
    table = format_table(rows).splitlines()
    assert table[0].split() == ["run", "state", "step", "tokens", "val_loss", "ETA"]
    assert [line.split() for line in table[1:]] == [
        ["done", "done", "8/8", "4.1k", "5.250", "-"],
        ["running", "running", "14/40", "7.2k", "6.123", "52s"],
        ["stopped", "stopped", "2/40", "1.0k", "-", "-"],
        ["failed", "failed", "1/40", "512", "-", "-"],
        ["pending", "pending", "0/40", "0", "-", "-"],
    ]


def test_a_requeued_array_task_resumes_its_run_and_a_finished_one_does_nothing(tmp_path):
    runs = expand(load_sweep(REPO / "recipes/scaling/tiny_grid.yaml"))
    folder = tmp_path / "run"
    folder.mkdir()
    fresh = slurm_task_command(runs, 2, 4, folder, 40)
    assert fresh[:2] == ["bash", "launch/slurm_pretrain_moe.sbatch"] and "--resume" not in fresh
    write_checkpoint(folder, 20, max_steps=40)
    resumed = slurm_task_command(runs, 2, 4, folder, 40)
    assert resumed == [*fresh[:6], "--resume", *fresh[6:]]  # after --recipe R --ds_config C
    (folder / "done.json").write_text(json.dumps({"step": 40, "tokens": 1, "val_loss": 1.0}))
    assert slurm_task_command(runs, 2, 4, folder, 40) is None
