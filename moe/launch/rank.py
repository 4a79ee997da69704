"""One rank of a training job: run the preflight again (every rank sees the same files), join the process group,
then train, keeping this rank's end record (moe/launch/rank_record.py) and its hang watchdog
(moe/train/watchdog.py). recipes/pretrain_moe.py calls `main`; start it through launch/pretrain_moe.sh."""

from __future__ import annotations

import os
import sys
import traceback

import torch

from moe.checkpoint.store import CheckpointError
from moe.config import ConfigError
from moe.config.args import parse_trainer_args
from moe.launch.build_locks import clear_and_report
from moe.launch.preflight import preflight
from moe.launch.rank_record import SUPERVISED_ENV, RankRecord
from moe.launch.threads import pin_rank_threads
from moe.parallel import init_distributed, shutdown_distributed
from moe.train.step_health import EXIT_NONFINITE, StepHealthError
from moe.train.trainer import Trainer
from moe.train.watchdog import Progress, Watchdog


def collective_timeout_s(train) -> float:
    """torch's collective timeout: a minute above the watchdog's limits, so the watchdog (which says where every
    rank was) fires first; DeepSpeed's 30 minutes when the watchdog is off."""
    limits = [s for s in (train.hang_timeout_s, train.startup_timeout_s) if s]
    return max(limits) + 60.0 if len(limits) == 2 else 1800.0


def main(argv: list[str] | None = None) -> None:
    """Run the rank, then end the process at once with its exit code. Everything the rank writes is closed by
    then (checkpoints, metrics, W&B, its end record, the process group); what interpreter finalization would add is
    library teardown (gloo's and NCCL's threads, CUDA contexts), which has aborted (SIGABRT) or hung ranks that had
    finished their work."""
    code = 1
    try:
        run(argv)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run(argv: list[str] | None = None) -> None:
    args = parse_trainer_args(sys.argv[1:] if argv is None else argv)
    threads = pin_rank_threads()  # CPU: this rank's share of the cores, one thread each, before anything runs
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if not torch.cuda.is_available():
        cores = ",".join(map(str, sorted(os.sched_getaffinity(0))))
        # one write with its newline: the ranks share the launcher's stdout, and print() writes the end apart
        sys.stdout.write(f"rank {rank}: {threads} thread(s) on core(s) {cores}\n")
        sys.stdout.flush()
    if os.environ.get("LOCAL_RANK", "0") == "0":  # ranks started by another launcher (deepspeed on GPUs, SLURM)
        clear_and_report("rank")  # before the process group: joining it loads DeepSpeed's comm op
    try:  # before the process group, whose timeout the recipe sets
        resolved = preflight(args, world_size, cuda=torch.cuda.is_available())
    except ConfigError as e:
        if rank == 0:
            print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    progress, t = Progress(), resolved.recipe.train
    record = RankRecord(resolved.run_dir, rank, progress)
    record.start()
    watchdog = Watchdog(progress, resolved.run_dir, rank, t.hang_timeout_s, t.startup_timeout_s, _on_hang(record))
    watchdog.start()
    try:
        init_distributed(timeout_s=collective_timeout_s(t))
        Trainer(resolved, rank, resume=args.resume, progress=progress).fit()
        record.end("finished", 0)
    except ConfigError as e:
        record.end("failed", 2, str(e), reported=rank == 0)
        if rank == 0:
            print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except CheckpointError as e:
        record.end("failed", 1, str(e), reported=True)
        if rank == 0 or e.every_rank:
            print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    except StepHealthError as e:  # the same on every rank: the verdicts are all-reduced
        record.end("failed", EXIT_NONFINITE, str(e), reported=rank == 0)
        if rank == 0:
            print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(EXIT_NONFINITE)
    except BaseException as e:  # the traceback follows; the launcher's line names the rank and step
        record.end("failed", 1, _first_line(e))
        raise
    finally:
        watchdog.stop()
        shutdown_distributed()
        record.close()


def _on_hang(record: RankRecord):
    def on_hang(line: str) -> None:
        record.end("hung", 3, line)
        if not os.environ.get(SUPERVISED_ENV):
            print(f"error: {line}", file=sys.stderr, flush=True)

    return on_hang


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__
