"""The real launcher, both ways, on real ranks: `bash launch/pretrain_moe.sh` and `deepspeed launch/pretrain_moe.sh`."""

import itertools
import json
import math
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.faults import summarize, train_curve
from moe.checkpoint.manifest import MANIFEST, first_bad_file
from moe.model import MoEGPTConfig
from moe.model.cost import model_cost
from tests.helpers import BASH_RUN_STEPS as STEPS
from tests.helpers import LAUNCHER, REPO, TINY, child_env, explain, launch_bash, read_metrics, snapshot

pytestmark = pytest.mark.e2e


def job_end_line(proc) -> str:
    """The launcher's one line on why the job ended (moe/launch/job_end.py); exactly one."""
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, explain(proc)
    return lines[0]


def train_records(metrics: list[dict]) -> list[dict]:
    return [m for m in metrics if "loss" in m]


def val_records(metrics: list[dict]) -> list[dict]:
    return [m for m in metrics if "val_loss" in m]


def test_bash_launcher_trains_tiny_recipe_on_two_ranks(bash_run):
    proc, run_dir = bash_run
    assert "launch: 2 rank(s)" in proc.stdout
    # each rank pinned to its own share of the cores (moe/launch/threads.py)
    cores = {line.split(": ")[0]: line.split("core(s) ")[1] for line in proc.stdout.splitlines() if " core(s) " in line}
    assert set(cores) == {"rank 0", "rank 1"}, proc.stdout[-2000:]
    if len(os.sched_getaffinity(0)) >= 2:
        assert not set(cores["rank 0"].split(",")) & set(cores["rank 1"].split(","))
    train = train_records(read_metrics(run_dir))
    assert [m["step"] for m in train] == list(range(1, STEPS + 1))
    base = {
        "step",
        "loss",
        "lm_loss",
        "aux_loss",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "step_time_s",
        "time",
        "tokens",
        "tokens/stdlib",  # the tokens seen per data source
        "tflops_per_device",
        "mfu",
        "rss_gb",
        "rss_peak_gb",
    }  # throughput telemetry (moe/train/throughput.py)
    router = {
        f"router/layer1/{k}"
        for k in (
            "tokens_per_expert",
            "max_mean_load",
            "dropped_frac",
            "router_entropy",
            "router_entropy_norm",
            "top_prob",
            "aux_loss",
            "z_loss",
            "seq_aux_loss",
        )
    }  # tiny: layer 1 is the MoE one
    assert set(train[0]) == base | router
    for m in train:  # 8 sequences x 64 tokens x 2 ranks, top-2: 2048 routes a step, some dropped by capacity
        kept = sum(m["router/layer1/tokens_per_expert"])
        assert kept == round((1 - m["router/layer1/dropped_frac"]) * 2048) and 1024 <= kept <= 2048
        assert 0 < m["router/layer1/router_entropy_norm"] <= 1 and m["router/layer1/max_mean_load"] >= 1
    assert all(m["grad_norm"] is not None and m["tokens_per_s"] > 0 for m in train)
    config = MoEGPTConfig.from_pretrained(run_dir / "model_config")
    flops_per_token = model_cost(config, 64).train_flops_per_token()  # tiny: seq_len 64
    for m in train:  # achieved TFLOP/s per device from the same tokens/s and the hand-checked FLOPs (test_cost.py)
        assert m["tflops_per_device"] == pytest.approx(m["tokens_per_s"] * flops_per_token / 2 / 1e12, rel=1e-9)
        assert 0 < m["mfu"] < 1.5 and 0 < m["rss_gb"] <= m["rss_peak_gb"] * 1.01
    peaks = json.loads((run_dir / "device_peaks.json").read_text())  # MFU is against the run's matmul dtype's peak
    ds = json.loads((run_dir / "ds_config.json").read_text())
    precision = "bf16" if ds.get("bf16", {}).get("enabled") else "fp32"
    assert set(peaks["measured_tflops"]) == {"fp32", "bf16"} and all(v > 0 for v in peaks["measured_tflops"].values())
    assert peaks["mfu_peak_tflops"] == peaks["measured_tflops"][precision] and precision in peaks["source"]
    for m in train:
        assert m["mfu"] == pytest.approx(m["tflops_per_device"] / peaks["mfu_peak_tflops"], rel=1e-9)
    assert all(b["time"] > a["time"] for a, b in itertools.pairwise(train))
    first, last5 = train[0]["loss"], sum(m["loss"] for m in train[-5:]) / 5
    assert last5 < 0.92 * first, f"loss did not fall: {first:.3f} -> {last5:.3f}"
    val = val_records(read_metrics(run_dir))
    assert [m["step"] for m in val] == [0, 10, 20] and val[-1]["val_loss"] < 0.92 * val[0]["val_loss"]
    data = json.loads((run_dir / "data.json").read_text())["sources"][0]
    val_blocks = data["val_tokens"] // 64  # recipes/tiny.yaml: eval_blocks 64 is more than the split holds
    assert all(m["val_blocks"] == val_blocks and 0 < m["val_loss_se"] < 0.05 * m["val_loss"] for m in val)
    for m in val:  # every block's loss, gathered from both ranks in the set's order: its mean and spread are the pass's
        losses = np.load(run_dir / "eval" / f"val_step{m['step']}.npy").astype(np.float64)
        assert len(losses) == val_blocks and losses.min() > 0
        assert losses.mean() == pytest.approx(m["val_loss"], rel=1e-6)
        assert losses.std(ddof=1) / np.sqrt(len(losses)) == pytest.approx(m["val_loss_se"], rel=1e-4)
    assert all("train_sample_loss" in m for m in val) and data["corpus"]["fingerprint"]["files"] > 0
    assert train[-1]["tokens"] == train[-1]["tokens/stdlib"] == STEPS * 2 * 8 * 64  # zero1.json: 8 blocks a rank
    done = json.loads((run_dir / "done.json").read_text())
    assert done == {"step": STEPS, "tokens": train[-1]["tokens"], "val_loss": val[-1]["val_loss"]}


def test_run_folder_holds_resolved_config_and_checkpoints(bash_run):
    _, run_dir = bash_run
    ds = json.loads((run_dir / "ds_config.json").read_text())
    assert ds["train_micro_batch_size_per_gpu"] * 2 == ds["train_batch_size"]  # resolved for 2 ranks
    assert "moe:" in (run_dir / "recipe.yaml").read_text()
    ckpt = run_dir / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == f"global_step{STEPS}"
    for step in (10, STEPS):
        files = {p.name for p in (ckpt / f"global_step{step}").iterdir()}
        assert {"rng_rank0.pt", "rng_rank1.pt", "recipe.yaml", "ds_config.json", "version.json", "COMPLETE"} <= files
        assert any(name.startswith("layer_") and "expert_" in name for name in files), files  # per-expert files
    version = json.loads((ckpt / "global_step10" / "version.json").read_text())
    assert version["deepspeed"] == "0.19.8" and "git_commit" in version
    assert (run_dir / "tokenizer" / "tokenizer.json").is_file() and (run_dir / "model_config" / "config.json").is_file()


def test_sigkill_mid_save_and_a_corrupted_checkpoint_resume_from_the_last_good_one(bash_run, tmp_path):
    _, full_run = bash_run
    run_dir = tmp_path / "tiny"
    every5_keep2 = (*TINY, f"logging.runs_dir={tmp_path}", "train.save_interval=5", "train.keep_checkpoints=2")
    # Rank 0 SIGKILLs itself at step 15 after every rank wrote its files, before the checkpoint is committed.
    proc = launch_bash(*every5_keep2, MOE_FAULT_SIGKILL_DURING_SAVE="15")
    assert proc.returncode != 0, explain(proc)
    line = job_end_line(proc)  # the rank that died, how, and where the others were
    assert line.startswith("error: rank 0 (pid ") and "was killed by SIGKILL" in line, line
    assert re.search(r"(after step 15;|at step 15 \(rank 1 was in checkpoint\))", line), line  # terminated or failed
    ckpt = run_dir / "checkpoints"
    assert (ckpt / "global_step15").is_dir() and not (ckpt / "global_step15" / "COMPLETE").exists()
    assert {p.name for p in ckpt.glob("global_step*")} == {"global_step5", "global_step10", "global_step15"}
    assert (ckpt / "latest").read_text() == "global_step10"
    # ... and then a bit of the last complete checkpoint flips on disk (same size: only its sha256 tells)
    shard = ckpt / "global_step10" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x10
    shard.write_bytes(data)

    proc = launch_bash(*every5_keep2, "--resume")
    assert proc.returncode == 0, explain(proc)
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("warning: checkpoint")]
    assert len(warnings) == 1 and "global_step10" in warnings[0] and shard.name in warnings[0], proc.stdout[-3000:]
    assert "resumed from global_step5" in proc.stdout + proc.stderr
    resumed, reference = train_records(read_metrics(run_dir)), train_records(read_metrics(full_run))
    assert [m["step"] for m in resumed] == list(range(1, STEPS + 1))  # steps 1-5 kept once, 6-20 re-run
    # --resume restores model, optimizer, LR schedule, data position and every rank's RNG: bit-exact
    assert [(m["step"], m["loss"], m["lr"]) for m in resumed] == [(m["step"], m["loss"], m["lr"]) for m in reference]
    assert {p.name for p in ckpt.glob("global_step*")} == {"global_step15", "global_step20"}  # keep 2
    assert (ckpt / "latest").read_text() == "global_step20"
    assert all(first_bad_file(ckpt / t) is None and (ckpt / t / MANIFEST).is_file() for t in ("global_step20",))


def test_a_save_that_cannot_write_ends_the_job_in_one_line_and_keeps_latest(tmp_path):
    """From the step-4 save on, no file of either rank may grow past 1 MB (RLIMIT_FSIZE, a real kernel refusal;
    each rank's ZeRO shard is about 2 MB), as on a disk that filled up."""
    run_dir = tmp_path / "tiny"
    args = (*TINY, f"logging.runs_dir={tmp_path}", "train.max_steps=4", "train.warmup_steps=1", "train.save_interval=2")
    proc = launch_bash(*args, "logging.wandb=false", MOE_FAULT_FILE_SIZE_LIMIT_AT_SAVE=f"4:{1 << 20}")
    assert proc.returncode != 0, explain(proc)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors and all(
        line.startswith("error: saving checkpoint global_step4 failed on rank ")
        and "`latest` stays at global_step2" in line
        for line in errors
    ), explain(proc)
    assert "Traceback" not in proc.stderr, explain(proc)
    ckpt = run_dir / "checkpoints"
    assert (ckpt / "latest").read_text() == "global_step2" and first_bad_file(ckpt / "global_step2") is None
    assert not (ckpt / "global_step4" / "COMPLETE").exists()


def test_a_rank_killed_inside_a_collective_is_named_and_the_restart_resumes_bit_exact(bash_run, tmp_path):
    """Rank 1 enters step 7's first collective (the MoE all-to-all) and is SIGKILLed there, while rank 0 is still
    on its way to it (moe/train/faults.py). The launcher names it, restarts the job once from global_step5
    (`--resume`), and the run ends as the uninterrupted one did."""
    _, full_run = bash_run
    run_dir = tmp_path / "tiny"
    args = (*TINY, f"logging.runs_dir={tmp_path}", "train.save_interval=5", "--max_restarts", "1")
    proc = launch_bash(*args, "--restart_backoff_s", "0", MOE_FAULT_SIGKILL_IN_COLLECTIVE="1:7")
    assert proc.returncode == 0, explain(proc)
    line = job_end_line(proc)
    assert line.startswith("error: rank 1 (pid ") and "was killed by SIGKILL" in line, line
    assert re.search(r"(after step 6;|at step 7 \(rank 0 was in forward\))", line), line  # terminated or failed
    assert "restart 1/1 in 0 s, from global_step5" in proc.stdout, explain(proc)
    first = run_dir / "ranks" / "attempt0"
    died = json.loads((first / "rank1.exit").read_text())
    assert (
        died["signal"] == "SIGKILL"
        and json.loads((first / "job_end.json").read_text())["ended"] - died["exited_at"] < 60
    )

    row = summarize("killed in a collective", tmp_path, proc, 0.0, train_curve(full_run))  # benchmarks/faults.py
    assert (row["restarts"], row["resumed_from"], row["steps_lost"], row["bit_exact"]) == (1, "global_step5", 1, True)
    assert 0 < row["detect_s"] < 60 and row["lines"] == [line]

    metrics = read_metrics(run_dir)
    assert [(m["step"], m["restart"]) for m in metrics if "restart" in m] == [(5, 1)]
    assert "rank 1" in next(m for m in metrics if "restart" in m)["restart_reason"]
    resumed, reference = train_records(metrics), train_records(read_metrics(full_run))
    assert [(m["step"], m["loss"], m["lr"]) for m in resumed] == [(m["step"], m["loss"], m["lr"]) for m in reference]


def test_a_nan_loss_skips_the_step_without_an_update(tmp_path):
    """Rank 1's loss is NaN at step 5, so every rank's gradients are after the reduce: on ZeRO-0 fp32 (the path
    whose optimizer check is ours, moe/train/grad_norm.py) the step is skipped, the LR schedule does not move,
    the weights stay: the validation loss after step 5 is the one after step 4, bit for bit."""
    run_dir = tmp_path / "tiny"
    zero0 = ("--recipe", "recipes/tiny.yaml", "--ds_config", "ds_configs/zero0.json", "logging.progress_bar=false")
    args = (*zero0, f"logging.runs_dir={tmp_path}", "train.max_steps=7")
    proc = launch_bash(*args, "train.eval_interval=1", "logging.wandb=false", MOE_FAULT_NAN_LOSS="1:5")
    assert proc.returncode == 0, explain(proc)
    assert "warning: step 5 skipped: loss nan, grad norm inf (no optimizer or LR step; 1 in a row" in proc.stdout
    metrics = read_metrics(run_dir)
    train, val = {m["step"]: m for m in train_records(metrics)}, {m["step"]: m for m in val_records(metrics)}
    assert [s for s, m in train.items() if m.get("skipped")] == [5] and train[5]["nonfinite_skips"] == 1
    assert math.isnan(train[5]["loss"]) and train[5]["grad_norm"] == math.inf
    assert "router/layer1/tokens_per_expert" in train[5]  # the skipped step's routing, kept for diagnosis
    assert val[5]["val_loss"] == val[4]["val_loss"] and val[6]["val_loss"] != val[5]["val_loss"]
    assert train[6]["lr"] == train[5]["lr"] != train[4]["lr"]  # the scheduler skipped step 5 too
    assert all(math.isfinite(train[s]["loss"]) for s in (6, 7))


def test_nan_steps_in_a_row_stop_the_run_and_a_restart_does_not_repeat_it(tmp_path):
    """From step 3 on rank 1's loss is always NaN (bad data: every attempt). ZeRO-1 (DeepSpeed's own check)
    skips steps 3 and 4, train.max_skipped_steps=2 stops the run; the one restart from global_step2 meets the same
    stop at the same step, and the launcher does not try again."""
    run_dir = tmp_path / "tiny"
    args = (*TINY, f"logging.runs_dir={tmp_path}", "train.max_steps=6", "train.save_interval=2")
    proc = launch_bash(
        *args, "train.max_skipped_steps=2", "logging.wandb=false", "--max_restarts", "3", "--restart_backoff_s", "0",
        MOE_FAULT_NAN_LOSS="1:3-99",
    )  # fmt: skip
    assert proc.returncode == 4, explain(proc)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    stop = (
        "error: 2 steps in a row skipped for a non-finite loss or gradient norm (steps 3-4; train.max_skipped_steps=2)"
    )
    assert [line.startswith(stop) for line in errors] == [True, True, False], explain(proc)
    assert errors[-1].startswith("error: not restarting: the same failure at the same step twice"), errors
    assert proc.stdout.count("restart 1/3 in 0 s, from global_step2") == 1 and "restart 2/3" not in proc.stdout
    ckpt = run_dir / "checkpoints"
    assert (ckpt / "latest").read_text() == "global_step2" and not (ckpt / "global_step4").exists()


def test_a_hung_rank_dumps_its_stacks_and_ends_the_job_in_one_line(tmp_path):
    """Rank 1 blocks in step 3's data read; rank 0 waits for it in the step's collectives. Rank 1's watchdog fires
    after train.hang_timeout_s, writes every thread's stack and ends the job (moe/train/watchdog.py)."""
    run_dir = tmp_path / "tiny"
    args = (*TINY, f"logging.runs_dir={tmp_path}", "train.max_steps=4", "train.hang_timeout_s=5")
    start = time.time()
    proc = launch_bash(*args, "logging.wandb=false", MOE_FAULT_HANG_AT_STEP="1:3")
    elapsed = time.time() - start
    assert proc.returncode == 3, explain(proc)
    line = job_end_line(proc)
    assert re.fullmatch(
        rf"error: rank 1 made no progress for [5-9] s \(step 3 in data; train.hang_timeout_s=5\); every thread's "
        rf"stack is in {re.escape(str(run_dir / 'hang-rank1.txt'))}; the other ranks: 1 .*",
        line,
    ), explain(proc)
    stacks = (run_dir / "hang-rank1.txt").read_text()
    assert "inject_step_faults" in stacks and "train_step" in stacks
    last_step = train_records(read_metrics(run_dir))[-1]
    assert last_step["step"] == 2 and time.time() - last_step["time"] < 5 + 30, elapsed


def test_a_job_stopped_from_outside_says_so_and_is_not_restarted(tmp_path):
    """SIGTERM to the launcher (a scheduler's preemption, a kill): it reaches every rank, and --max_restarts does
    not start the job again."""
    run_dir = tmp_path / "tiny"
    args = (*TINY, f"logging.runs_dir={tmp_path}", "logging.wandb=false", "--max_restarts", "2")
    with subprocess.Popen(
        ["bash", str(LAUNCHER), *args], cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    ) as proc:  # fmt: skip
        deadline = time.time() + 120
        while not (run_dir / "metrics.jsonl").is_file() or not train_records(read_metrics(run_dir)):
            assert time.time() < deadline and proc.poll() is None, "the job did not start training"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)  # the launcher's own pid: bash exec'd it
        stdout, stderr = proc.communicate(timeout=120)
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode != 0 and len(errors) == 2, stderr[-3000:]
    assert errors[0].startswith("error: every rank was stopped by SIGTERM after step ") and "outside" in errors[0]
    assert errors[1].startswith("error: not restarting: the job was stopped by SIGTERM") and "restart 1/" not in stdout


def test_rerun_without_resume_refuses_and_keeps_the_run(bash_run):
    _, run_dir = bash_run
    before = snapshot(run_dir)
    proc = launch_bash(*TINY, f"logging.runs_dir={run_dir.parent}")
    assert proc.returncode == 2 and "--resume" in proc.stderr, explain(proc)
    assert snapshot(run_dir) == before


def test_deepspeed_launcher_matches_bash_launcher_and_logs_wandb_offline(bash_run, deepspeed_run):
    (_, bash_dir), (proc, run_dir) = bash_run, deepspeed_run
    assert "launch: 2 rank(s)" in proc.stdout  # the runner's single CPU rank widened the job to 2 ranks
    got, want = train_records(read_metrics(run_dir)), train_records(read_metrics(bash_dir))
    assert [m["loss"] for m in got] == pytest.approx([m["loss"] for m in want], rel=1e-6)
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, "expected one offline W&B run"
    records = next(offline[0].glob("run-*.wandb")).read_bytes()  # W&B's own log of config and history records
    for key in (b"train_micro_batch_size_per_gpu", b"num_experts", b"tokens_per_s", b"val_loss"):
        assert key in records, key  # the resolved config and the step metrics were sent


def test_every_rank_unlinks_its_shared_memory_buffer(bash_run):
    """DeepSpeed's CPU shared-memory all-reduce maps one /dev/shm buffer per rank (moe/parallel/comm.py)."""
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{bash_run.port}_*"))
