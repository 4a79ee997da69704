"""Whether the running forward is activation checkpointing's recompute of a block.

Under activation checkpointing (the ds_config `activation_checkpointing` section) a block's forward runs twice:
once in the forward pass (without saving activations) and once more in the backward pass to rebuild them. The
recompute must compute the same thing (DeepSpeed's checkpoint restores the RNG state, so gate sampling repeats
its choices) but must not repeat the forward's side effects: router telemetry sums (router_stats.py) and the
loads that aux-loss-free balancing accumulates (gate.py) would otherwise be counted twice.
"""

from __future__ import annotations

from contextlib import contextmanager

_recomputing = False


def is_recomputing() -> bool:
    return _recomputing


@contextmanager
def recomputing(on: bool):
    global _recomputing
    previous, _recomputing = _recomputing, on
    try:
        yield
    finally:
        _recomputing = previous


def checkpointed_call(checkpoint_fn, module, *args):
    """module(*args) through `checkpoint_fn` (deepspeed.checkpointing.checkpoint): its first run is the forward, any
    later run of the same closure is the backward's recompute and runs with is_recomputing() True."""
    calls = 0

    def run(*inputs):
        nonlocal calls
        calls += 1
        with recomputing(calls > 1):
            return module(*inputs)

    return checkpoint_fn(run, *args)
