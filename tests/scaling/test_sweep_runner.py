"""How a parallel sweep shares the machine (moe/scaling/sweep_runner.py): slot widths, the device pool, pinning,
and ports, without starting a run."""

import pytest

from moe.config import ConfigError
from moe.scaling.sweep_runner import AUTO, DevicePool, free_port, parse_parallel, pinning, slot_width


def test_parallel_is_a_positive_count_or_auto():
    assert parse_parallel("auto") is AUTO and parse_parallel("3") == 3
    for bad in ("0", "-1", "two"):
        with pytest.raises(ConfigError, match="--parallel takes a positive integer or auto"):
            parse_parallel(bad)


def test_auto_gives_a_run_one_core_per_rank_and_n_splits_the_cores_n_ways():
    assert [slot_width(1, AUTO, 2, gpu=False), slot_width(2, AUTO, 2, gpu=False)] == [1, 2]  # 2 runs, then 1
    assert slot_width(4, AUTO, 2, gpu=False) == 2  # more ranks than cores: they share the cores there are
    assert [slot_width(1, 2, 8, gpu=False), slot_width(2, 3, 8, gpu=False), slot_width(1, 4, 2, gpu=False)] == [4, 2, 1]


def test_a_gpu_run_takes_one_gpu_per_rank_and_must_fit_its_slot():
    assert [slot_width(2, AUTO, 8, gpu=True), slot_width(2, 2, 8, gpu=True)] == [2, 2]  # not the slot's 4
    with pytest.raises(ConfigError, match="a run of 4 ranks needs 4 GPUs; --parallel 4 leaves 2 per run"):
        slot_width(4, 4, 8, gpu=True)
    with pytest.raises(ConfigError, match="this machine has 2"):
        slot_width(4, AUTO, 2, gpu=True)


def test_the_pool_hands_out_disjoint_devices_lowest_first_and_takes_them_back():
    pool = DevicePool(["0", "1", "2", "3"])
    first, second = pool.take(1), pool.take(2)
    assert (first, second) == (("0",), ("1", "2")) and pool.take(2) is None  # one core left
    pool.give(first)
    assert pool.take(2) == ("0", "3")
    pool.give(second)
    assert pool.free == ["1", "2"]


def test_a_cpu_run_is_pinned_with_taskset_and_a_gpu_run_by_its_visible_devices():
    assert pinning(("0", "1"), gpu=False) == (["taskset", "-c", "0,1"], {})
    assert pinning(("2", "3"), gpu=True) == ([], {"CUDA_VISIBLE_DEVICES": "2,3"})
    assert pinning((), gpu=False) == ([], {})  # --parallel 1: as the sweep always ran


def test_runs_at_once_get_distinct_ports():
    taken: set[int] = set()
    for _ in range(20):
        taken.add(free_port(taken))
    assert len(taken) == 20
