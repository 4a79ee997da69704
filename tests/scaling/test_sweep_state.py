"""The sweep state file (moe/scaling/sweep_state.py): replaced atomically, read back as written."""

import json
import os
import subprocess
import sys

from moe.scaling.sweep_state import DONE, FAILED, PENDING, RUNNING, SweepState


def test_starts_and_ends_are_recorded_with_attempts_and_survive_a_reload(tmp_path):
    path = tmp_path / "sweeps" / "s" / "state.json"
    state = SweepState.load(path, "s")
    assert state.runs == {} and not path.exists()
    state.owned_by_this_process()
    state.started("a", tmp_path / "a.log")
    state.ended("a", 1)
    state.started("a", tmp_path / "a.log")
    state.started("b", None)
    state.ended("a", 0)
    back = SweepState.load(path, "s")
    assert (back.runs["a"].state, back.runs["a"].attempts, back.runs["a"].exit_code) == (DONE, 2, 0)
    assert (back.runs["b"].state, back.runs["b"].attempts, back.runs["b"].finished) == (RUNNING, 1, None)
    assert back.runs["a"].started <= back.runs["a"].finished and back.runs["a"].log == str(tmp_path / "a.log")
    assert (back.pid, back.writer_alive()) == (os.getpid(), True)
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]  # the temporary file was renamed over it
    raw = json.loads(path.read_text())
    assert raw["sweep"] == "s" and set(raw["runs"]["a"]) == {
        "state", "attempts", "started", "finished", "exit_code", "log"
    }  # fmt: skip


def test_a_failed_run_is_failed_and_a_stopped_sweep_is_not_alive(tmp_path):
    state = SweepState.load(tmp_path / "state.json", "s")
    state.started("a", None)
    state.ended("a", 3)
    assert state.runs["a"].state == FAILED
    state.set("a", PENDING)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    state.owned_by_this_process()
    state.pid = int(gone.stdout)  # a sweep process that has exited
    state.save()
    assert SweepState.load(tmp_path / "state.json", "s").writer_alive() is False
