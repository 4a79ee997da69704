"""Bad input through the real launcher: one clear line, exit 2, in under 10 s, before any rank, nothing touched."""

import time

import pytest

from moe.parallel import free_port
from tests.helpers import explain, launch_bash, launch_deepspeed, snapshot

pytestmark = pytest.mark.e2e


@pytest.fixture
def existing_run(tmp_path):
    """A run folder from an earlier job, which a bad launch must leave byte-for-byte alone."""
    run_dir = tmp_path / "runs" / "tiny"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 7.0}\n')
    (run_dir / "recipe.yaml").write_text("model: {}\n")
    return run_dir


def bad_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"train_micro_batch_size_per_gpu": 8,\n "gradient_clipping": 1.0,}\n')
    return str(path)


CASES = {
    "unknown recipe key": (["moe.num_expert=8"], {}, ["num_expert", "num_experts"]),
    "experts not divisible by ep_size": (["moe.num_experts=3"], {}, ["num_experts", "ep_size"]),
    "world size not divisible by ep_size": ([], {"NUM_GPUS": "3"}, ["3", "ep_size"]),
    "missing dataset path": (
        ["data.source=files", "data.files=[/nonexistent/corpus.jsonl]"],
        {},
        ["/nonexistent/corpus.jsonl"],
    ),
    "ds_config is not JSON": (["--ds_config", "{bad_json}"], {}, ["broken.json", "line 2"]),
    "micro-batch conflict": (["train.micro_batch_size=4"], {}, ["micro", "4", "8"]),
    "negative learning rate": (["optim.lr=-1"], {}, ["optim.lr", "positive", "-1"]),
    "negative clipping in the ds_config": (["ds.gradient_clipping=-1"], {}, ["gradient_clipping", "0 or more"]),
    "JSON lines without the text field": (
        ["data.source=files", "data.files=[{tmp}/notext.jsonl]"],
        {},
        ["notext.jsonl", "'text'", "body"],
    ),
    "empty data file": (["data.source=files", "data.files=[{tmp}/empty.txt]"], {}, ["empty", "empty.txt"]),
    "HF dataset not local and no network": (
        ["data.source=hf", "data.name=someone/not_here"],
        {"HF_HOME": "{tmp}/hf", "HF_ENDPOINT": "http://127.0.0.1:{closed_port}"},
        ["someone/not_here", "not in the HF cache", "cannot be reached"],
    ),
    "HF tokenizer not local, offline": (
        ["data.tokenizer=someone/tok"],
        {"HF_HOME": "{tmp}/hf", "HF_HUB_OFFLINE": "1"},
        ["data.tokenizer=someone/tok", "HF_HUB_OFFLINE"],
    ),
    "NUM_GPUS not a number": ([], {"NUM_GPUS": "abc"}, ["NUM_GPUS", "'abc'", "whole number"]),
    "MASTER_PORT out of range": ([], {"MASTER_PORT": "70000"}, ["MASTER_PORT", "65535"]),
    "unknown WANDB_MODE": ([], {"WANDB_MODE": "sometimes"}, ["WANDB_MODE", "offline"]),
    "runs folder cannot be written": (["logging.runs_dir=/proc/moe-runs"], {}, ["logging.runs_dir", "/proc"]),
    "cache folder cannot be written": ([], {"MOE_CACHE": "/proc/moe-cache"}, ["MOE_CACHE", "/proc"]),
    "negative restart count": (["--max_restarts", "-1"], {}, ["--max_restarts=-1", "at least 0"]),
    "MAX_RESTARTS not a number": ([], {"MAX_RESTARTS": "many"}, ["MAX_RESTARTS", "'many'", "whole number"]),
    "negative hang timeout": (["train.hang_timeout_s=-5"], {}, ["train.hang_timeout_s", "0 or more"]),
}


def filled(text: str, tmp_path) -> str:
    """A case's placeholders: {bad_json}, {tmp} (with the data files the cases name) and {closed_port}."""
    (tmp_path / "notext.jsonl").write_text('{"body": "def f(): pass"}\n')
    (tmp_path / "empty.txt").write_text("")
    text = text.replace("{bad_json}", bad_json(tmp_path)).replace("{tmp}", str(tmp_path))
    return text.replace("{closed_port}", str(free_port()))  # nothing listens on a port just found free


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_fast_with_one_line(case, existing_run, tmp_path):
    args, env, must_mention = CASES[case]
    args = [filled(a, tmp_path) for a in args]
    env = {k: filled(v, tmp_path) for k, v in env.items()}
    before = snapshot(existing_run)
    start = time.monotonic()
    proc = launch_bash(
        "--recipe", "recipes/tiny.yaml", f"logging.runs_dir={existing_run.parent}", *args, timeout=60, **env
    )
    elapsed = time.monotonic() - start
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), explain(proc)
    for word in must_mention:
        assert word in lines[0], f"{word!r} not in: {lines[0]}"
    assert "launch:" not in proc.stdout  # no rank was started
    assert elapsed < 10, f"took {elapsed:.1f}s"
    assert snapshot(existing_run) == before


def test_bad_input_under_deepspeed_launcher_stops_before_ranks_spawn(existing_run):
    before = snapshot(existing_run)
    proc = launch_deepspeed(
        "--recipe", "recipes/tiny.yaml", f"logging.runs_dir={existing_run.parent}", "moe.num_experts=3", timeout=60
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode != 0 and len(errors) == 1 and "num_experts" in errors[0], explain(proc)
    assert "launch:" not in proc.stdout
    assert snapshot(existing_run) == before
