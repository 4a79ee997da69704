"""One rank of a training job: join the process group, run the preflight again (every rank sees the same files),
then train. recipes/pretrain_moe.py calls `main`; start it through launch/pretrain_moe.sh."""

from __future__ import annotations

import os
import sys

import torch

from moe.checkpoint.store import CheckpointError
from moe.config import ConfigError
from moe.config.args import parse_trainer_args
from moe.launch.build_locks import clear_and_report
from moe.launch.preflight import preflight
from moe.launch.threads import pin_rank_threads
from moe.parallel import init_distributed, shutdown_distributed
from moe.train.trainer import Trainer


def main(argv: list[str] | None = None) -> None:
    args = parse_trainer_args(sys.argv[1:] if argv is None else argv)
    threads = pin_rank_threads()  # CPU: this rank's share of the cores, one thread each, before anything runs
    if not torch.cuda.is_available():
        cores = ",".join(map(str, sorted(os.sched_getaffinity(0))))
        print(f"rank {os.environ.get('RANK', 0)}: {threads} thread(s) on core(s) {cores}", flush=True)
    if os.environ.get("LOCAL_RANK", "0") == "0":  # ranks started by another launcher (deepspeed on GPUs, SLURM)
        clear_and_report("rank")  # before the process group: joining it loads DeepSpeed's comm op
    rank, world_size = init_distributed()
    try:
        resolved = preflight(args, world_size, cuda=torch.cuda.is_available())
        Trainer(resolved, rank, resume=args.resume).fit()
    except ConfigError as e:
        if rank == 0:
            print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except CheckpointError as e:
        if rank == 0 or e.every_rank:
            print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    finally:
        shutdown_distributed()
