"""Every fault the failure tests inject, through the real launcher, measured: the time to detect it, the exit line,
the steps lost and whether the recovery ended bit for bit as an uninterrupted run.

    python benchmarks/faults.py                         # recipes/tiny.yaml on 2 CPU ranks, 20 steps, 2 restarts
    python benchmarks/faults.py --steps 10 --only NaN --json /tmp/faults.json   # the faults whose name has "NaN"

Each fault runs `bash launch/pretrain_moe.sh --max_restarts 2 --restart_backoff_s 1` with checkpoints every 5 steps
and the fault's environment variable (docs/failures.md, "Fault injection"); a corrupted checkpoint is a bit flipped
on disk between a killed job and its `--resume`. The reference is the same job without a fault.

- detect_s: from the fault to the attempt's end as the launcher saw it (ranks/attempt0/job_end.json): a killed
  rank's parent records when it died; a hung rank's record says when it last made progress (so it includes
  train.hang_timeout_s); a disk that refused a write, a NaN stop: the failing rank's end record.
- steps_lost: the failed attempt's last logged step minus the step the next attempt resumed from.
- bit_exact: the final losses and learning rates equal the reference's, step for step (null when nothing was
  resumed: a skipped NaN step changes the run on purpose).
Writes --json (default benchmarks/results/faults.json).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULT = REPO / "benchmarks" / "results" / "faults.json"
SAVE_EVERY = 5
BASE = ["--recipe", "recipes/tiny.yaml", "--ds_config", "ds_configs/zero1.json", f"train.save_interval={SAVE_EVERY}",
        "logging.progress_bar=false", "logging.wandb=false"]  # fmt: skip
RESTARTS = ["--max_restarts", "2", "--restart_backoff_s", "1"]
CORRUPTED = "a checkpoint file is corrupted on disk (then --resume)"

# name -> (environment, extra trainer args); step 8 falls between the checkpoints at 5 and 10
FAULTS = {
    "a rank hangs in its data read": ({"MOE_FAULT_HANG_AT_STEP": "1:8"}, ["train.hang_timeout_s=10"]),
    "a rank is SIGKILLed inside a collective": ({"MOE_FAULT_SIGKILL_IN_COLLECTIVE": "1:8"}, []),
    "rank 0 is SIGKILLed while writing a checkpoint": ({"MOE_FAULT_SIGKILL_DURING_SAVE": "10"}, []),
    "the disk fills up during a save": ({"MOE_FAULT_FILE_SIZE_LIMIT_AT_SAVE": f"10:{1 << 20}"}, []),
    "one step's loss is NaN": ({"MOE_FAULT_NAN_LOSS": "1:8"}, []),
    "every loss from step 8 is NaN": ({"MOE_FAULT_NAN_LOSS": "1:8-99"}, ["train.max_skipped_steps=3"]),
}


def launch(runs_dir: Path, args: list[str], env: dict) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    proc = subprocess.run(
        ["bash", "launch/pretrain_moe.sh", *args, f"logging.runs_dir={runs_dir}"],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
        capture_output=True,
        text=True,
        timeout=900,
    )
    return proc, time.perf_counter() - start


def train_curve(run_dir: Path) -> list[tuple]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"], r["lr"]) for r in map(json.loads, lines) if "loss" in r and not r.get("skipped")]


def detect_s(attempt: Path) -> float | None:
    """Seconds from the fault to the attempt's end (see the module docstring)."""
    end = json.loads((attempt / "job_end.json").read_text())["ended"]
    records = [json.loads(p.read_text()) for p in sorted(attempt.glob("rank*.json"))]
    exits = [json.loads(p.read_text()) for p in sorted(attempt.glob("rank*.exit"))]
    if hung := [r for r in records if r.get("status") == "hung"]:
        return end - min(r["progress_at"] for r in hung)
    if killed := [e for e in exits if e.get("signal") == "SIGKILL"]:
        return end - min(e["exited_at"] for e in killed)
    if failed := [r for r in records if r.get("status") == "failed"]:
        return end - min(r["ended"] for r in failed)
    return None


def measure(name: str, env: dict, extra: list[str], folder: Path, reference: list[tuple]) -> dict:
    runs_dir = folder / re.sub(r"\W+", "_", name)
    proc, wall_s = launch(runs_dir, [*BASE, *extra, *RESTARTS], env)
    return summarize(name, runs_dir, proc, wall_s, reference)


def corrupted_checkpoint(folder: Path, reference: list[tuple]) -> dict:
    """A job killed mid-save at step 15, then a bit of global_step10's rank-1 optimizer shard flips on disk; the
    `--resume` verifies the manifest and falls back to global_step5."""
    runs_dir = folder / "corrupted_checkpoint"
    launch(runs_dir, BASE, {"MOE_FAULT_SIGKILL_DURING_SAVE": "15"})
    shard = runs_dir / "tiny" / "checkpoints" / "global_step10" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x10
    shard.write_bytes(data)
    proc, wall_s = launch(runs_dir, [*BASE, "--resume"], {})
    row = summarize(CORRUPTED, runs_dir, proc, wall_s, reference)
    row["steps_lost"] = 15 - resumed_from(proc.stdout + proc.stderr)
    return row


def resumed_from(text: str) -> int:
    steps = [int(m) for m in re.findall(r"resumed from global_step(\d+)", text)]
    return steps[0] if steps else 0


def summarize(name: str, runs_dir: Path, proc, wall_s: float, reference: list[tuple]) -> dict:
    run_dir = runs_dir / "tiny"
    output = proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("warning: ")]
    first = run_dir / "ranks" / "attempt0"
    restarts = re.findall(r"restart (\d+)/\d+ in [\d.]+ s, from (\S+)", proc.stdout)
    ended = json.loads((first / "job_end.json").read_text()) if (first / "job_end.json").is_file() else {}
    logged = [step for step, _, _ in train_curve(run_dir)]
    return {
        "fault": name,
        "exit_code": proc.returncode,
        "detect_s": round(seconds, 2) if ended and (seconds := detect_s(first)) is not None else None,
        "lines": errors or warnings[:2],
        "restarts": len(restarts),
        "resumed_from": restarts[0][1] if restarts else None,
        "steps_lost": ended.get("last_logged_step", 0) - resumed_from(output) if restarts else 0,
        "final_step": logged[-1] if logged else 0,
        "bit_exact": train_curve(run_dir) == reference if restarts or "resumed from" in output else None,
        "wall_s": round(wall_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="steps per job (the faults are at steps 8 to 15)")
    parser.add_argument("--only", default="", help="the faults whose name contains this")
    parser.add_argument("--json", type=Path, default=RESULT)
    args = parser.parse_args()
    BASE.append(f"train.max_steps={args.steps}")
    with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
        folder = Path(tmp)
        proc, wall_s = launch(folder / "reference", BASE, {})
        assert proc.returncode == 0, proc.stderr[-3000:]
        reference = train_curve(folder / "reference" / "tiny")
        faults = {name: fault for name, fault in FAULTS.items() if args.only in name}
        rows = [measure(name, env, extra, folder, reference) for name, (env, extra) in faults.items()]
        if args.only in CORRUPTED:
            rows.append(corrupted_checkpoint(folder, reference))
    result = {"steps": args.steps, "save_interval": SAVE_EVERY, "reference_wall_s": round(wall_s, 1), "faults": rows}
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
