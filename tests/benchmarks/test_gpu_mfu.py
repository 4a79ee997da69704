"""benchmarks/gpu_mfu.py and the recipes/gpu/ recipes it trains.

The recipe tests are fast (no process spawned): each recipe resolves for one GPU with ds_configs/zero1_bf16.json,
fits 80 GB by the planner at the layout of its `# plan:` line, and states the parameter counts and planned memory
that moe/model/cost.py and the planner give. The smoke tests run `benchmarks/gpu_mfu.py --smoke` once, for real (the
real launcher, DeepSpeed and files on CPU), and check its arithmetic against moe/model/cost.py; no speed is asserted.
"""

import json
import re
import statistics
import sys

import pytest

from moe.config import load_recipe, load_resolved
from moe.model.cost import hf_model_cost, model_cost
from moe.plan import make_plan, parse_bytes
from moe.plan.__main__ import main as plan_main
from moe.plan.stated_layout import stated_layout
from tests.helpers import REPO, run

RECIPES = sorted((REPO / "recipes" / "gpu").glob("*.yaml"))
NAMES = [r.stem for r in RECIPES]
BF16 = "ds_configs/zero1_bf16.json"


def planned(recipe_path):
    gpus, ds_config, overrides = stated_layout(recipe_path)
    return make_plan(load_resolved(recipe_path, REPO / ds_config, overrides, gpus, cuda=True), parse_bytes("80GB"))


def test_there_are_a_dense_a_native_moe_and_an_autoep_recipe():
    assert NAMES == ["dense_1b", "moe_1b_8x_top2", "moe_1b_8x_top2_autoep"]


@pytest.mark.parametrize("recipe", RECIPES, ids=NAMES)
def test_gpu_recipe_resolves_for_one_gpu_in_bf16(recipe):
    resolved = load_resolved(recipe, REPO / BF16, world_size=1, cuda=True)
    assert resolved.world_size == 1 and resolved.precision == "bf16"
    r = resolved.recipe
    assert r.data.seq_len == r.model.max_seq_len == 2048 and r.data.vocab_size == 32000
    assert stated_layout(recipe)[:2] == (1, BF16)
    if r.moe.enabled:
        assert (r.moe.num_experts, r.moe.top_k, r.moe.interval, r.moe.ep_size) == (8, 2, 1, 1)


@pytest.mark.parametrize("recipe", RECIPES, ids=NAMES)
def test_gpu_recipe_fits_80gb_at_its_stated_layout(recipe, capsys):
    gpus, ds_config, overrides = stated_layout(recipe)
    code = plan_main(
        [
            "--recipe",
            str(recipe),
            "--ds_config",
            str(REPO / ds_config),
            "--gpus",
            str(gpus),
            "--gpu-mem",
            "80GB",
            *overrides,
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "verdict            FITS" in out, out


@pytest.mark.parametrize("recipe", RECIPES, ids=NAMES)
def test_gpu_recipe_header_states_what_cost_and_the_planner_say(recipe):
    text = recipe.read_text()
    plan = planned(recipe)
    total, active = (float(x) * 1e9 for x in re.search(r"total ([\d.]+)B, active ([\d.]+)B", text).groups())
    assert total == pytest.approx(plan.shape.cost.total_params, rel=0.01)
    assert active == pytest.approx(plan.shape.cost.active_params, rel=0.01)
    peak_gb = float(re.search(r"peak ([\d.]+) GB per GPU", text).group(1))
    assert peak_gb == pytest.approx(plan.memory.peak / 1e9, rel=0.01)
    run_line = re.search(r"^# run: +(.*)$", text, re.M).group(1)  # the command that runs it, at the stated layout
    gpus, ds_config, overrides = stated_layout(recipe)
    assert f"--num_gpus {gpus} --recipe recipes/gpu/{recipe.name} --ds_config {ds_config}" in run_line
    assert all(o in run_line.split() for o in overrides)


def test_two_active_experts_cost_what_the_dense_mlp_costs():
    dense, *moes = (planned(r).shape.cost for r in RECIPES)
    for moe, path in zip(moes, RECIPES[1:]):
        r = load_recipe(path, [])
        assert r.moe.top_k * r.moe.expert_d_ff == load_recipe(RECIPES[0], []).model.d_ff
        assert moe.active_params == pytest.approx(dense.active_params, rel=0.001)
        assert moe.train_flops_per_token() == pytest.approx(dense.train_flops_per_token(), rel=0.001)
    assert moes[0].total_params == moes[1].total_params  # the same model on both MoE paths


# --- the smoke run -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_mfu") / "gpu_mfu.json"
    proc = run(
        [sys.executable, "benchmarks/gpu_mfu.py", "--smoke", "--json", str(out)],
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return json.loads(out.read_text()), proc.stdout


def cost_of(row):
    """moe/model/cost.py's count of the model the run built (its model_config/config.json, copied into the JSON)."""
    config = dict(row["model_config"])
    if config["model_type"] == "moe_gpt":
        from moe.model import MoEGPTConfig

        return model_cost(MoEGPTConfig.from_dict(config), row["seq_len"])
    from transformers import AutoConfig

    return hf_model_cost(AutoConfig.for_model(config.pop("model_type"), **config), row["seq_len"])


@pytest.mark.e2e
def test_smoke_has_a_row_per_recipe_with_throughput(smoke):
    result, stdout = smoke
    assert result["smoke"] and result["device"]["type"] == "cpu"
    assert [r["name"] for r in result["runs"]] == NAMES
    assert [r["path"] for r in result["runs"]] == ["dense GPT", "deepspeed.moe native", "AutoEP mixtral"]
    for row in result["runs"]:
        assert row["status"] == "ok" and row["tokens_per_s"] > 0 and row["steps_timed"] == 3
        assert row["ds_config"] == "ds_configs/zero1_bf16.json" and "ds.wall_clock_breakdown=true" in row["overrides"]
        assert row["tokens_per_s"] == pytest.approx(row["global_batch"] * row["seq_len"] / row["step_time_s"])
        assert row["step_time_s"] == statistics.median(row["step_times_s"])
        assert re.search(rf"^{row['name']} +{re.escape(row['path'])} ", stdout, re.M)  # its row in the table
    moe = result["runs"][1]
    assert moe["global_batch"] == 8 and "ds.gradient_accumulation_steps=2" in moe["overrides"]  # 4 x 2, the plan
    for key in ("torch", "deepspeed", "transformers"):
        assert result["versions"][key]
    assert result["command"].startswith("python benchmarks/gpu_mfu.py --smoke")


@pytest.mark.e2e
def test_smoke_mfu_is_cost_flops_over_the_measured_peak(smoke):
    result, _ = smoke
    peak = result["peak"]["measured_tflops"]
    assert peak > 0 and result["peak"]["dtype"] == "bfloat16" and result["peak"]["datasheet_tflops"] is None
    for row in result["runs"]:
        cost = cost_of(row)
        assert (row["total_params"], row["active_params"]) == (cost.total_params, cost.active_params)
        expected = row["tokens_per_s"] * cost.train_flops_per_token() / 1e12 / (peak * row["ranks"])
        assert row["mfu"] == pytest.approx(expected, rel=1e-6)
        assert row["mfu_datasheet"] is None
        # The trainer got the same peak (logging.peak_tflops): its own per-step MFU, at the median step, agrees.
        assert f"logging.peak_tflops={peak!r}" in row["overrides"]
        assert row["trainer_mfu_median"] == pytest.approx(row["mfu"], rel=1e-6)


@pytest.mark.e2e
def test_smoke_reports_the_step_split_and_memory(smoke):
    result, _ = smoke
    for row in result["runs"]:
        split = row["split_ms"]
        assert all(split[k] > 0 for k in ("forward", "backward", "grad_allreduce", "optimizer")), split
        native = row["path"] == "deepspeed.moe native"
        assert (split["alltoall_fwd"] is not None) == native and (not native or split["alltoall_fwd"] > 0)
        assert row["memory_metric"] == "rss_peak_gb" and row["peak_memory_gb"] > 0 and row["planned_peak_gb"] > 0


@pytest.mark.e2e
def test_smoke_layer_benchmark_at_the_moe_recipe_shape(smoke):
    result, stdout = smoke
    layer = result["moe_layer"]
    assert layer["status"] == "ok" and layer["recipe"] == "moe_1b_8x_top2"
    assert layer["ratios_to_native"]["deepspeed_native"] == 1.0
    assert {"autoep_grouped", "hf_eager"} <= set(layer["ratios_to_native"])
    assert all(v > 0 for v in layer["ratios_to_native"].values())
    shape = dict(zip(layer["argv"][::2], layer["argv"][1::2]))
    # micro-batch 4 (the plan line) x 64 tokens (smoke), d_model 64, expert d_ff 64, 8 experts, top-2
    assert (shape["--tokens"], shape["--d-model"], shape["--d-ff"], shape["--experts"], shape["--top-k"]) == (
        "256",
        "64",
        "64",
        "8",
        "2",
    )
    assert "time vs deepspeed native" in stdout
