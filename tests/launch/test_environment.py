"""Preflight's checks of a resolved run against this machine (moe/launch/environment.py): data files (present, not
empty, with the text field) and folders, site_packages' named packages, HF names (moe/launch/hub.py), the runs
folder, the tokenizer, a model.init_from checkpoint, an AutoEP family's hf_config keys, NVMe folders and DeepSpeed's
async_io op. Each is one ConfigError line; the resolve step accepts the same values (tests/config/test_resolve.py)."""

import json

import pytest

from moe.config import ConfigError, load_resolved
from moe.launch.environment import async_io_available, check_environment
from moe.parallel import free_port
from tests.helpers import REPO


def checked(*overrides: str, recipe="recipes/tiny.yaml", ds_config="zero1.json", world_size=2):
    resolved = load_resolved(REPO / recipe, REPO / "ds_configs" / ds_config, list(overrides), world_size)
    check_environment(resolved, cuda=False)
    return resolved


def refusal(*overrides: str, **kwargs) -> str:
    with pytest.raises(ConfigError) as err:
        checked(*overrides, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.source=files", "data.files=[/no/such/file.jsonl]"], "dataset file not found: /no/such/file.jsonl"),
        (["data.source=hf", "data.name=./no/such/dataset"], "dataset path not found: ./no/such/dataset (data.name)"),
        (
            ["data.source=site_packages", "data.packages=[tqdm, no-such-distribution]"],
            "data.packages: not installed here: no-such-distribution (pip install them)",
        ),
        (["data.tokenizer=/no/such/tokenizer"], "tokenizer path not found: /no/such/tokenizer (data.tokenizer)"),
        (
            ["model.init_from=/nonexistent/model", "data.tokenizer=/nonexistent/model"],
            "model.init_from: no HF model folder (config.json) at /nonexistent/model",
        ),
    ],
)
def test_missing_files_and_folders_are_refused(overrides, message):
    assert message in refusal(*overrides)


def test_autoep_init_from_folder_and_hf_config_keys_are_checked(tmp_path):
    autoep = {"recipe": "recipes/autoep.yaml"}
    assert "no HF model folder (config.json) at /nonexistent" in refusal(
        "model.init_from=/nonexistent/model", f"data.tokenizer={tmp_path}", **autoep
    )
    assert "MixtralConfig has no field 'router_jitter'" in refusal("model.hf_config={router_jitter: 0.1}", **autoep)


def test_autoep_init_from_must_match_the_recipe_shape(tmp_path):
    from transformers import MixtralConfig

    MixtralConfig(
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=352,
        num_local_experts=4,
    ).save_pretrained(tmp_path)
    message = refusal(f"model.init_from={tmp_path}", f"data.tokenizer={tmp_path}", recipe="recipes/autoep.yaml")
    assert "does not match the recipe: hidden_size: checkpoint 64 != recipe 128" in message
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "mixtral"


def nvme_at(folder):
    return [f"ds.zero_optimization.{section}.nvme_path={folder}" for section in ("offload_param", "offload_optimizer")]


def test_nvme_offload_needs_a_writable_folder():
    assert "nvme_path=/local_nvme is not a writable directory" in refusal(
        "moe.enabled=false", ds_config="zero3_offload_nvme.json"
    )


def test_nvme_offload_needs_libaio_where_it_is_missing(tmp_path):
    if async_io_available():  # libaio present: the section passes, optimizer on DeepSpeedCPUAdam
        r = checked("moe.enabled=false", *nvme_at(tmp_path), ds_config="zero3_offload_nvme.json")
        assert r.ds_config["optimizer"]["params"]["torch_adam"] is False
    else:
        assert "needs DeepSpeed's async_io op, which needs libaio" in refusal(
            "moe.enabled=false", *nvme_at(tmp_path), ds_config="zero3_offload_nvme.json"
        )


def test_a_run_the_machine_can_start_passes():
    checked()
    checked(recipe="recipes/autoep.yaml")


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"body": 1}\n', "has no field 'text' (data.text_field); its first record has: body"),
        ("\n\n", "dataset file is empty"),
        ("{not json\n", "is not valid JSON"),
    ],
)
def test_a_json_lines_file_needs_records_with_the_text_field(tmp_path, content, message):
    path = tmp_path / "docs.jsonl"
    path.write_text(content)
    assert message in refusal("data.source=files", f"data.files=[{path}]")


def test_a_json_array_parquet_and_mixture_entries_are_checked_too(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    array, table = tmp_path / "docs.json", tmp_path / "docs.parquet"
    array.write_text('[{"content": "x"},\n {"content": "y"}]')
    pq.write_table(pa.table({"content": ["x"]}), table)
    for path in (array, table):
        assert "has no field 'text'" in refusal("data.source=files", f"data.files=[{path}]")
    checked("data.source=files", f"data.files=[{table}]", "data.text_field=content")
    (tmp_path / "empty.txt").write_text("")
    mixture = f"data.mixture=[{{source: stdlib}}, {{source: files, files: [{tmp_path / 'empty.txt'}]}}]"
    assert "(data.mixture[1].files)" in refusal(mixture)


def test_hub_names_are_found_in_either_cache_and_refused_offline(tmp_path, monkeypatch):
    from moe.launch.hub import hub_cached, reachable

    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "HF_HUB_OFFLINE is set" in refusal("data.source=hf", "data.name=org/corpus")
    (tmp_path / "hub" / "datasets--org--corpus").mkdir(parents=True)
    (tmp_path / "datasets" / "org___other").mkdir(parents=True)
    (tmp_path / "hub" / "models--org--tok").mkdir(parents=True)
    assert hub_cached("org/corpus", "dataset") and hub_cached("org/other", "dataset")
    assert hub_cached("org/tok", "model") and not hub_cached("org/tok", "dataset")
    checked("data.source=hf", "data.name=org/corpus", "data.tokenizer=org/tok")
    assert not reachable(f"http://127.0.0.1:{free_port()}")  # nothing listens there


def test_a_runs_folder_that_cannot_be_written_is_refused(tmp_path):
    (tmp_path / "file").write_text("")
    assert "is not a folder" in refusal(f"logging.runs_dir={tmp_path / 'file' / 'runs'}")
    assert "/proc is not writable" in refusal("logging.runs_dir=/proc/runs")
    checked(f"logging.runs_dir={tmp_path / 'new' / 'runs'}")
    assert not (tmp_path / "new").exists()  # judged, not created
