"""Threads of a CPU rank (moe/launch/threads.py): each rank's slice of its affinity mask, pinned, one thread a core."""

import json
import os
import subprocess
import sys

from moe.launch.threads import rank_cpus


def test_ranks_get_disjoint_equal_slices_of_the_mask():
    assert [rank_cpus([0, 1], r, 2) for r in range(2)] == [[0], [1]]
    assert [rank_cpus(list(range(8)), r, 2) for r in range(2)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [rank_cpus([6, 2, 4], r, 1) for r in range(1)] == [[2, 4, 6]]  # a taskset mask, sorted
    assert [rank_cpus(list(range(5)), r, 2) for r in range(2)] == [[0, 1, 2], [3, 4]]  # remainder to the first


def test_more_ranks_than_cores_share_round_robin():
    assert [rank_cpus([0, 1], r, 4) for r in range(4)] == [[0], [1], [0], [1]]


PROBE = "import os, json, torch; from moe.launch.threads import pin_rank_threads; n = pin_rank_threads(); " \
        "print(json.dumps([n, torch.get_num_threads(), sorted(os.sched_getaffinity(0))]))"  # fmt: skip


def probe(env: dict) -> list:
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "LOCAL_RANK", "LOCAL_SIZE")}
    cmd = [sys.executable, "-c", PROBE]
    out = subprocess.run(cmd, env={**base, **env}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_rank_pins_itself_to_its_share_and_sizes_torch_to_it():
    cores = sorted(os.sched_getaffinity(0))
    last = rank_cpus(cores, 1, 2)
    assert probe({"LOCAL_RANK": "1", "LOCAL_SIZE": "2"}) == [len(last), len(last), last]
    assert probe({}) == [len(cores), len(cores), cores]  # a lone process keeps every core of its mask
    # OMP_NUM_THREADS sets the count, not the pinning
    assert probe({"LOCAL_RANK": "0", "LOCAL_SIZE": "2", "OMP_NUM_THREADS": "3"})[:2] == [3, 3]


def test_a_run_started_under_a_mask_stays_inside_it():
    """A sweep starts runs side by side under disjoint masks (taskset): the rank takes its share of that mask."""
    core = min(os.sched_getaffinity(0))
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "LOCAL_RANK", "LOCAL_SIZE")}
    out = subprocess.run(["taskset", "-c", str(core), sys.executable, "-c", PROBE], env=base, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [1, 1, [core]]
