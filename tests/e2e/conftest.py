"""One tiny 2-rank training run through the bash launcher, shared by the end-to-end tests (it takes ~20 s)."""
import pytest

from tests.helpers import explain, launch_bash

STEPS = 20
# the tiny recipe's corpus and tokenizer (cached once per session), for the tests that run the bigger recipes
SMALL_DATA = ("data.max_documents=600", "data.val_fraction=0.1", "data.vocab_size=1024")
TINY = ("--recipe", "recipes/tiny.yaml", f"train.max_steps={STEPS}", "logging.progress_bar=false")


@pytest.fixture(scope="session")
def bash_run(tmp_path_factory):
    """(process, run folder) of the tiny recipe: EP=2, ZeRO-1, checkpoints at steps 10 and 20."""
    runs = tmp_path_factory.mktemp("bash_runs")
    proc = launch_bash(*TINY, f"logging.runs_dir={runs}")
    assert proc.returncode == 0, explain(proc)
    return proc, runs / "tiny"
