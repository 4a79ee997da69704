"""One real run of the tiny scaling grid, started through the sweep CLI (about a minute), shared by the sweep, plot
and scaling tests."""

import pytest

from tests.helpers import REPO, explain, run

SWEEP = "recipes/scaling/tiny_grid.yaml"
RUN = "tiny-scaling-s-moe-k2"
SHORT = ("train.max_steps=4", "train.eval_interval=2", "train.warmup_steps=1")


@pytest.fixture(scope="session")
def sweep_run(tmp_path_factory):
    """(process, run folder) of one grid point, 4 steps with validation at steps 0, 2 and 4."""
    runs = tmp_path_factory.mktemp("sweep_runs")
    proc = run(
        ["python", str(REPO / "launch" / "sweep.py"), SWEEP, "--only", RUN, *SHORT, f"logging.runs_dir={runs}"],
        timeout=600,
    )
    assert proc.returncode == 0, explain(proc)
    return proc, runs / RUN
