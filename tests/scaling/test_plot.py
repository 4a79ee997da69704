"""python -m moe.plot draws PNGs from a real run's metrics.jsonl (moe/scaling/plots.py)."""

import numpy as np

from moe.scaling.plots import expert_loads, read_metrics
from tests.helpers import run

PNG = b"\x89PNG\r\n\x1a\n"


def test_expert_load_is_each_experts_tokens_over_the_mean(sweep_run):
    _, run_dir = sweep_run
    train, _ = read_metrics(run_dir)
    loads = expert_loads(train)
    assert list(loads) == [1]  # the tiny recipe's one MoE layer
    steps, load = loads[1]
    assert steps == [1, 2, 3, 4] and load.shape == (4, 4)  # (experts, steps)
    counts = np.array([r["router/layer1/tokens_per_expert"] for r in train], dtype=float).T
    np.testing.assert_allclose(load, counts / counts.mean(axis=0))


def test_plot_cli_writes_loss_throughput_and_expert_load_pngs(sweep_run, tmp_path):
    _, run_dir = sweep_run
    proc = run(["python", "-m", "moe.plot", str(run_dir), "--out", str(tmp_path)], timeout=120)
    assert proc.returncode == 0, proc.stderr
    names = ["loss.png", "throughput.png", "expert_load.png", "router.png"]
    assert proc.stdout.split() == [str(tmp_path / n) for n in names]
    from PIL import Image  # matplotlib's own dependency

    for name in names:
        data = (tmp_path / name).read_bytes()
        assert data[:8] == PNG
        with Image.open(tmp_path / name) as image:
            pixels = np.asarray(image.convert("L"))
        assert pixels.shape[0] > 300 and pixels.std() > 10  # a drawn figure, not a blank canvas
