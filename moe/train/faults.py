"""Fault injection for the fault-tolerance tests: each fault is one environment variable naming a rank and a step,
read at the start of that step (Trainer.train_step). Checkpoint faults live with the checkpoint code
(moe/checkpoint/store.py).

A hang or a kill is transient, as on a real cluster: it fires in the first attempt of a job only, not after an
automatic restart (moe/config/args.py, RESTART_ENV). A NaN loss is deterministic, as bad data is: it fires in
every attempt.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from moe.config.args import restart_attempt

HANG_ENV = "MOE_FAULT_HANG_AT_STEP"  # "<rank>:<step>": that rank blocks in its data read (a filesystem gone quiet)
SIGKILL_IN_COLLECTIVE_ENV = "MOE_FAULT_SIGKILL_IN_COLLECTIVE"  # "<rank>:<step>": SIGKILLed inside a collective
NAN_LOSS_ENV = "MOE_FAULT_NAN_LOSS"  # "<rank>:<first>[-<last>]": that rank's loss is NaN at those steps


def inject_step_faults(rank: int, step: int) -> None:
    if restart_attempt():
        return
    if _at(HANG_ENV, step) == rank:
        print(f"fault: rank {rank} blocks at step {step}", file=sys.stderr, flush=True)
        threading.Event().wait()
    victim = _at(SIGKILL_IN_COLLECTIVE_ENV, step)
    if victim is None:
        return
    if victim == rank:  # it enters the step's first collective at once and waits there for the others ...
        print(f"fault: rank {rank} is killed inside a collective at step {step}", file=sys.stderr, flush=True)
        threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGKILL)).start()  # ... until this fires
    else:
        time.sleep(3.0)  # the others come later: the victim dies while blocked in the collective


def nan_loss(rank: int, step: int) -> bool:
    spec = os.environ.get(NAN_LOSS_ENV)
    if not spec:
        return False
    who, _, steps = spec.partition(":")
    first, _, last = steps.partition("-")
    return int(who) == rank and int(first) <= step <= int(last or first)


def _at(env: str, step: int) -> int | None:
    """The rank that `env` names for `step`, or None."""
    rank, _, at = os.environ.get(env, "").partition(":")
    return int(rank) if at and int(at) == step else None
