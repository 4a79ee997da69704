"""python -m moe.simulate: analytic step time, calibrated on DeepSpeed-MoE Table 3 and our CPU runs."""

import json
import re

import pytest
import yaml

from moe.config import ConfigError
from moe.simulate.calibrate import DSMOE_TABLE3, calibrate, cpu_runs
from moe.simulate.cluster import load_cluster
from moe.simulate.collectives import Group, all_reduce, all_to_all
from moe.simulate.gpu_counts import parse_gpu_counts
from moe.simulate.predict import simulate
from tests.helpers import REPO, run

A100 = REPO / "clusters" / "a100_80g_dgx.yaml"
CPU = REPO / "clusters" / "cpu_2core.yaml"
# the errors the README states (python -m moe.simulate.calibrate): fitted on the first, checked on the second
STATED = {
    ("6.7B dense", "1.3B+MoE-128"): -0.164,
    ("1.3B+MoE-128", "6.7B dense"): +0.220,
    ("default recipe", "tiny recipe"): +1.750,
    ("tiny recipe", "default recipe"): -0.639,
}


def test_table3_calibration_reproduces_the_stated_errors():
    dense_fit, moe_fit = calibrate(DSMOE_TABLE3, A100)
    for check in (dense_fit, moe_fit):
        assert check.error == pytest.approx(STATED[check.fitted_on, check.checked_on], abs=0.002)
    assert abs(dense_fit.error) < 0.17  # the simulator's stated accuracy on the MoE model, MFU fitted on dense
    assert load_cluster(A100).mfu == round(dense_fit.mfu, 4)  # the shipped cluster keeps the dense fit


def test_cpu_cluster_peaks_are_the_ones_its_run_measured():
    """clusters/cpu_2core.yaml's peaks per dtype are what rank 0 of its calibration run measured at start-up."""
    measured = json.loads((REPO / "benchmarks/results/throughput_default_cpu2.json").read_text())
    peaks = load_cluster(CPU).peak_tflops
    assert set(peaks) == set(measured["measured_peaks_tflops"]) == {"fp32", "bf16"}
    assert all(peaks[p] == round(v, 4) for p, v in measured["measured_peaks_tflops"].items())


def test_cpu_check_reproduces_the_stated_errors():
    default_fit, tiny_fit = calibrate(cpu_runs(), CPU)
    for check in (default_fit, tiny_fit):
        assert check.error == pytest.approx(STATED[check.fitted_on, check.checked_on], abs=0.01)
    assert load_cluster(CPU).mfu == round(default_fit.mfu, 4)
    # the fitted run is reproduced exactly: predict(fit(run)) == run
    (measured,) = [r for r in cpu_runs() if r.name == "default recipe"]
    (estimate,) = simulate(
        REPO / measured.recipe, REPO / measured.ds_config, [], load_cluster(CPU), [2], mfu=default_fit.mfu
    )
    assert estimate.samples_per_s == pytest.approx(measured.samples_per_s, rel=1e-9)


def test_collectives_follow_the_alpha_beta_formulas():
    cluster = load_cluster(A100)
    gb = 1e9
    assert all_reduce(gb, Group(1), cluster) == 0.0
    # 8 ranks on one node: 2·7/8 of 1 GB over 300 GB/s, plus 2·log2(8) latencies of 3 µs
    assert all_reduce(gb, Group(8), cluster) == pytest.approx(2 * 7 / 8 * gb / 300e9 + 6 * 3e-6)
    # 16 ranks over 2 nodes: the NIC's 25 GB/s bounds the ring
    assert all_reduce(gb, Group(16), cluster) == pytest.approx(2 * 15 / 16 * gb / 25e9 + 8 * 6e-6)
    # every 8th rank of 64 spans 8 nodes, one rank per node
    assert Group(8, stride=8).spans_nodes(8) and not Group(8).spans_nodes(8)
    # all-to-all over 16 ranks: 7/16 to node peers over NVLink, 8/16 to the other node over the NIC, in parallel
    assert all_to_all(gb, Group(16), cluster) == pytest.approx(8 / 16 * gb / 25e9 + 7 * 3e-6 + 8 * 6e-6)


def test_step_parts_follow_the_layout():
    a100 = load_cluster(A100)
    dense = simulate(
        REPO / "recipes/scaling/dsmoe_6.7b_dense.yaml", REPO / "ds_configs/zero1_bf16.json", [], a100, [8, 128]
    )
    moe = simulate(
        REPO / "recipes/scaling/dsmoe_1.3b_moe128.yaml",
        REPO / "ds_configs/zero1_bf16.json",
        ["ds.train_micro_batch_size_per_gpu=4"],
        a100,
        [8, 128],
    )
    assert all(e.all_to_all_s == 0 for e in dense) and all(e.all_to_all_s > 0 for e in moe)
    assert [e.ep_size for e in moe] == [8, 128]  # 128 experts: expert parallelism as wide as the GPUs allow
    assert [e.global_batch for e in moe] == [32, 512]  # weak scaling: 4 sequences per GPU
    assert dense[1].grad_sync_s > dense[0].grad_sync_s  # across nodes the NIC, not NVLink, carries gradients
    # a 2-stage pipeline with 2 micro-batches idles (stages - 1) / micro-batches of the compute
    (piped,) = simulate(REPO / "recipes/tiny.yaml", REPO / "ds_configs/pipeline2.json", [], load_cluster(CPU), [2])
    assert piped.stages == 2 and piped.bubble_s == pytest.approx(piped.compute_s / 2)


def test_simulate_cli_prints_tokens_per_s_and_scaling_efficiency():
    proc = run(
        [
            "python",
            "-m",
            "moe.simulate",
            "--recipe",
            "recipes/scaling/dsmoe_1.3b_moe128.yaml",
            "--cluster",
            str(A100),
            "--gpus",
            "8..4096",
            "ds.train_micro_batch_size_per_gpu=4",
        ],
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("|")[1:-1] for line in proc.stdout.splitlines() if re.match(r"\| \d", line)]
    assert [int(r[0]) for r in rows] == parse_gpu_counts("8..4096") == [8 * 2**i for i in range(10)]
    tokens = {int(r[0]): float(r[9].replace(",", "")) for r in rows}
    (moe_check,) = [c for c in calibrate(DSMOE_TABLE3, A100) if c.checked_on == "1.3B+MoE-128"]
    assert tokens[128] == pytest.approx(moe_check.predicted * 2048, rel=1e-3)  # the calibration (MFU to 4 digits)
    efficiency = [float(r[11].strip(" %")) for r in rows]
    assert efficiency[0] == 100.0 and efficiency == sorted(efficiency, reverse=True)


def test_bad_cluster_or_gpu_count_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**yaml.safe_load(A100.read_text()), "nvlink": 600}))
    proc = run(["python", "-m", "moe.simulate", "--recipe", "recipes/tiny.yaml", "--cluster", str(bad)], timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: {bad}: unknown key 'nvlink'; allowed keys: name,")
    assert len(proc.stderr.strip().splitlines()) == 1
    with pytest.raises(ConfigError, match="range of powers of two"):
        parse_gpu_counts("8..x")


@pytest.mark.parametrize("cluster", sorted(p.name for p in (REPO / "clusters").glob("*.yaml")))
def test_every_shipped_cluster_loads_and_predicts(cluster):
    (estimate,) = simulate(
        REPO / "recipes/tiny.yaml", REPO / "ds_configs/zero1.json", [], load_cluster(REPO / "clusters" / cluster), [2]
    )
    assert estimate.tokens_per_s > 0 and estimate.compute_s > 0
