"""The one resolve step (moe/config/resolve.py): mirrored settings merged from either side, derived values, every
shipped recipe x ds_config, and the refusals of values that cannot work. Pure: it reads nothing but its inputs."""

import json
import re
import subprocess
import sys

import pytest

from moe.config import ConfigError, load_ds_config, load_recipe, load_resolved, resolve, split_overrides
from tests.helpers import REPO

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
DS_CONFIGS = sorted((REPO / "ds_configs").glob("*.json"))


def _resolve(recipe_overrides=(), ds=None, world_size=2, cuda=False):
    recipe = load_recipe(REPO / "recipes/default.yaml", list(recipe_overrides))
    ds = ds if ds is not None else load_ds_config(REPO / "ds_configs/zero1.json")
    return resolve(recipe, ds, world_size, "zero1.json", cuda=cuda)


def documented_refusal(recipe, ds_config) -> str | None:
    """The README's layout matrix: native MoE runs under ZeRO 0/1/2, AutoEP under ZeRO 1/2/3."""
    stage = json.loads(ds_config.read_text())["zero_optimization"]["stage"]
    if ds_config.name == "pipeline2.json":  # tests/config/test_pipeline_parallel.py: every pipeline refusal
        if recipe.moe.enabled and recipe.moe.impl != "deepspeed":
            return "needs moe.impl=deepspeed: AutoEP trains an HF model that PipelineModule cannot split into layers"
        if recipe.moe.enabled and recipe.moe.ep_size > 1:  # 2 ranks = 2 stages x 1 data-parallel rank
            return f"moe.ep_size={recipe.moe.ep_size} must divide the 1 data-parallel ranks of each pipeline stage"
    if recipe.moe.enabled and recipe.moe.impl == "deepspeed" and stage == 3:
        return "DeepSpeed refuses native MoE (deepspeed.moe.layer.MoE) under ZeRO-3"
    if recipe.moe.impl == "autoep" and stage == 0:
        return "AutoEP is supported (and tested) under ZeRO 1, 2 and 3"
    ds = json.loads(ds_config.read_text())
    if (ds.get("fp16") or {}).get("enabled"):  # this test resolves for a CPU machine; the GPU test runs it
        return "fp16 needs a CUDA GPU"
    if "activation_checkpointing" in ds and recipe.moe.impl == "autoep":
        return "activation_checkpointing is wired for moe.impl=deepspeed"
    return None


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
@pytest.mark.parametrize("ds_config", DS_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_recipe_and_ds_config_resolves_or_is_refused_as_documented(recipe, ds_config):
    refusal = documented_refusal(load_recipe(recipe), ds_config)
    if refusal:
        with pytest.raises(ConfigError, match=re.escape(refusal)):
            load_resolved(recipe, ds_config, world_size=2)
        return
    r = load_resolved(recipe, ds_config, world_size=2)
    ds = r.ds_config
    data_parallel = 2 // ds.get("pipeline", {}).get("stages", 1)
    assert (
        ds["train_batch_size"]
        == ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * data_parallel
    )
    assert ds["optimizer"]["params"]["lr"] == r.recipe.optim.lr
    assert r.recipe.train.precision == ("bf16" if ds["bf16"]["enabled"] else "fp32")


def test_mirrored_values_fill_from_either_side():
    r = _resolve(["optim.lr=1e-3"])
    assert r.ds_config["optimizer"]["params"]["lr"] == 1e-3  # recipe -> ds_config
    assert r.recipe.train.micro_batch_size == 8  # ds_config -> recipe
    assert r.ds_config["gradient_clipping"] == r.recipe.train.grad_clip == 1.0


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "train.micro_batch_size=4",
            "train.micro_batch_size=4 in the recipe disagrees with train_micro_batch_size_per_gpu=8",
        ),
        ("train.grad_accum=2", "train.grad_accum=2 in the recipe disagrees with gradient_accumulation_steps=1"),
        ("train.grad_clip=0.5", "train.grad_clip=0.5 in the recipe disagrees with gradient_clipping=1.0"),
        ("train.precision=bf16", "train.precision=bf16 in the recipe disagrees"),
    ],
)
def test_disagreement_between_recipe_and_ds_config_is_an_error(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        _resolve([override])


def test_optimizer_disagreement_is_an_error():
    ds = load_ds_config(REPO / "ds_configs/zero1.json", ["optimizer.type=AdamW", "optimizer.params.lr=0.1"])
    with pytest.raises(ConfigError, match="optim.lr=0.002 in the recipe disagrees with optimizer.params.lr=0.1"):
        _resolve(ds=ds)


def test_ds_overrides_are_split_from_recipe_overrides():
    recipe_ov, ds_ov = split_overrides(["moe.top_k=1", "ds.gradient_clipping=0.5"])
    assert recipe_ov == ["moe.top_k=1"] and ds_ov == ["gradient_clipping=0.5"]


@pytest.mark.parametrize(
    "overrides, world_size, message",
    [
        (["moe.num_experts=6", "moe.ep_size=4"], 4, "moe.num_experts=6 is not divisible by moe.ep_size=4"),
        ([], 3, "world size 3 is not divisible by moe.ep_size=2"),
        (["moe.top_k=5"], 2, "moe.top_k=5 must be between 1 and moe.num_experts=4"),
        (["model.n_heads=5"], 2, "not divisible by model.n_heads=5"),
        (["data.seq_len=1024"], 2, "data.seq_len=1024 exceeds model.max_seq_len=128"),
        (["moe.noisy_gate_policy=Gaussian"], 2, "noisy_gate_policy must be"),
        (["data.source=files"], 2, "data.source=files needs data.files"),
        (["data.source=hf"], 2, "data.source=hf needs data.name"),
        (["data.packages=[tqdm]"], 2, "data.packages selects the distributions of source=site_packages, not of stdlib"),
        (["data.source=site_packages", "data.packages=[]"], 2, "data.packages must be a non-empty list"),
        (["model.n_heads=0"], 2, "model.n_heads must be positive, got 0"),
        (["train.warmup_steps=500"], 2, "train.warmup_steps=500 must be below train.max_steps=300"),
    ],
)
def test_impossible_combinations_fail_at_resolve(overrides, world_size, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("[", r"\[")):
        _resolve(overrides, world_size=world_size)


def test_native_moe_under_zero3_is_refused_with_the_working_alternative():
    ds = load_ds_config(REPO / "ds_configs/zero1.json", ["zero_optimization.stage=3"])
    with pytest.raises(ConfigError, match="refuses native MoE.*ZeRO-3.*zero2.json"):
        _resolve(ds=ds)
    assert _resolve(["moe.enabled=false"], ds=ds).ds_config["zero_optimization"]["stage"] == 3


def test_fp16_needs_a_gpu_and_both_precisions_conflict():
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        _resolve(["train.precision=fp16"], ds={})
    assert _resolve(["train.precision=fp16"], ds={}, cuda=True).ds_config["fp16"]["enabled"]
    with pytest.raises(ConfigError, match="both bf16 and fp16"):
        _resolve(ds={"bf16": {"enabled": True}, "fp16": {"enabled": True}})


def test_derived_train_batch_size_and_scheduler_are_checked():
    with pytest.raises(ConfigError, match="train_batch_size=7 but micro-batch 8 x accumulation 1 x 2 ranks = 16"):
        _resolve(ds={"train_batch_size": 7, "train_micro_batch_size_per_gpu": 8})
    with pytest.raises(ConfigError, match="LR schedule belongs to the recipe"):
        _resolve(ds={"scheduler": {"type": "WarmupLR"}})


def test_ds_config_that_is_not_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"train_micro_batch_size_per_gpu": 8,}')
    with pytest.raises(ConfigError, match="bad.json is not valid JSON: .* line 1"):
        load_ds_config(bad)


def test_load_resolved_is_the_launchers_chain():
    """load_resolved(recipe path, ds_config path, overrides, world size) = load, split the ds. overrides, resolve."""
    overrides = ["moe.top_k=1", "ds.gradient_clipping=0.5"]
    recipe_overrides, ds_overrides = split_overrides(overrides)
    chain = resolve(
        load_recipe(REPO / "recipes/default.yaml", recipe_overrides),
        load_ds_config(REPO / "ds_configs/zero1.json", ds_overrides),
        2,
        str(REPO / "ds_configs/zero1.json"),
    )
    assert load_resolved(REPO / "recipes/default.yaml", REPO / "ds_configs/zero1.json", overrides, 2) == chain
    assert chain.recipe.moe.top_k == 1 and chain.ds_config["gradient_clipping"] == 0.5


def test_resolve_reads_no_file_and_imports_no_torch(tmp_path):
    """Files, folders and ops are preflight's (moe/launch/environment.py): resolve takes a missing dataset file,
    model.init_from folder, tokenizer and NVMe folder as given, and importing moe.config loads no torch, transformers
    or DeepSpeed."""
    r = _resolve(
        [
            "data.source=files",
            f"data.files=[{tmp_path}/missing.jsonl]",
            f"model.init_from={tmp_path}/none",
            f"data.tokenizer={tmp_path}/none",
        ]
    )
    assert r.recipe.data.files == [f"{tmp_path}/missing.jsonl"] and r.recipe.model.vocab_size is None
    nvme = load_ds_config(REPO / "ds_configs/zero3_offload_nvme.json")
    assert (
        load_resolved(
            REPO / "recipes/tiny.yaml", REPO / "ds_configs/zero3_offload_nvme.json", ["moe.enabled=false"], 2
        ).ds_config["zero_optimization"]
        == nvme["zero_optimization"]
    )
    code = "import sys, moe.config; print(sorted({'torch', 'transformers', 'deepspeed'} & set(sys.modules)))"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    )


def test_resolve_names_what_it_writes_into_the_ds_config():
    """The only ds_config keys resolve adds or changes: the mirrors, precision, batch, optimizer choice, and the
    sections' own defaults; the input is left as it was."""
    ds = load_ds_config(REPO / "ds_configs/zero1.json")
    before = json.dumps(ds, sort_keys=True)
    out = _resolve(ds=ds).ds_config
    assert json.dumps(ds, sort_keys=True) == before  # resolve copies its input
    assert set(out) - set(ds) == {"optimizer", "fp16", "train_batch_size", "steps_per_print"}
    assert out["optimizer"]["params"]["torch_adam"] is True and out["optimizer"]["params"]["fused"] is True
