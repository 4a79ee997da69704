"""Each published recipe trains 2 steps at reduced width on CPU through the real Trainer (one 2-rank spawn)."""
import json
import math

import pytest

from tests.helpers import REPO, explain, run_distributed
from tests.plan.test_planner import PUBLISHED

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("published")
    proc = run_distributed(REPO / "tests/plan/published_worker.py", str(out), ranks=2)
    assert proc.returncode == 0, explain(proc)
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("recipe", [p.stem for p in PUBLISHED])
def test_published_recipe_trains_two_steps(results, recipe):
    losses = results[recipe]["loss"]
    print(f"{recipe}: losses {losses}, {results[recipe]['seconds']:.1f} s")
    assert len(losses) == 2 and all(math.isfinite(x) and 0 < x < 20 for x in losses)
