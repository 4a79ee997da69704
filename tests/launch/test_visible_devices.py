"""A launch confined to some GPUs by CUDA_VISIBLE_DEVICES (a parallel sweep's run) names them to DeepSpeed's runner
with --include: given --num_gpus the runner drops the variable and numbers the GPUs from 0 (moe/launch/launcher.py)."""

from moe.launch.launcher import local_device_args


def test_visible_gpus_become_the_runners_include_list(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert local_device_args(2, cuda=True) == ["--include", "localhost:2,3"]
    assert local_device_args(1, cuda=True) == ["--include", "localhost:2"]  # the first of them
    assert local_device_args(2, cuda=False) == ["--num_gpus", "2"]  # CPU ranks: no GPU to name


def test_without_the_variable_the_launch_asks_for_a_gpu_count(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert local_device_args(4, cuda=True) == ["--num_gpus", "4"]
