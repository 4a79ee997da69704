"""The CPU speed benchmarks run end to end at tiny sizes (their numbers are in benchmarks/RESULTS.md). No speed is
asserted: what must hold is that each compares like with like."""

import json
import subprocess
import sys

import pytest

from benchmarks.moe_floor import main as moe_floor
from tests.helpers import REPO

TINY = ["--recipe", "recipes/tiny.yaml"]


def worker(kind: str, ds_config: str, steps: int) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.overhead", "--worker", kind, *TINY, "--ds_config", ds_config,
           "--steps", str(steps), "train.warmup_steps=1"]  # fmt: skip
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_bare_loop_trains_the_trainers_model_on_its_blocks():
    """benchmarks/overhead.py: the bare loop and our trainer start from the same weights on the same blocks, so
    their first losses agree to float order (fp32), and both report every phase."""
    steps, ds_config = 3, "ds_configs/zero1.json"
    bare, trainer = worker("bare", ds_config, steps), worker("trainer", ds_config, steps)
    assert bare["losses"][0] == pytest.approx(trainer["losses"][0], rel=1e-6)
    assert len(bare["times"]) == steps and len(trainer["times"]) == steps - 1  # the trainer's: between steps
    for t in bare["times"]:
        assert t["wall"] >= t["forward"] + t["backward"] + t["step"] > 0
    for t in trainer["times"]:
        assert t["wall"] == pytest.approx(sum(t[k] for k in t if k != "wall"), rel=1e-6)


def test_moe_floor_times_the_layer_against_its_own_expert_matmuls(tmp_path):
    result = moe_floor([*TINY, "--ds_config", "ds_configs/zero1.json", "--iters", "3", "--warmup", "1",
                        "--json", str(tmp_path / "floor.json")])  # fmt: skip
    # tiny: 8 x 64 tokens, top-2 of 4 experts at capacity factor 1.5 -> C = ceil(1.5 * 512 * 2 / 4) = 384
    assert result["experts_input_shape"] == [1, 4, 384, 64]
    assert result["layer_ms"] > 0 and result["floor_ms"] > 0
    assert result["ratio"] == pytest.approx(result["layer_ms"] / result["floor_ms"])
    assert json.loads((tmp_path / "floor.json").read_text())["overhead"] == pytest.approx(1 - 1 / result["ratio"])
