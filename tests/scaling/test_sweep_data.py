"""A sweep tokenizes each distinct data set once before its runs (moe/scaling/sweep_data.py)."""

import sys

from moe.scaling.sweep import expand, load_sweep
from moe.scaling.sweep_data import prepare_commands


def test_one_prepare_command_per_recipe_and_data_overrides(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "sweep: d\nrecipe: recipes/tiny.yaml\nds_config: ds_configs/zero1.json\n"
        "grid: {moe.top_k: [1, 2], data.vocab_size: [512, 1024]}\n"
    )
    runs = expand(load_sweep(grid), ["data.cache_dir=/tmp/c"])
    commands = prepare_commands(runs)
    assert len(runs) == 4 and len(commands) == 2  # top_k does not change the data; the vocabulary does
    (first, names), _ = commands
    prepare = [sys.executable, "-m", "moe.data.prepare", "--recipe", "recipes/tiny.yaml", "--ds_config"]
    assert first == [*prepare, "ds_configs/zero1.json", "data.vocab_size=512", "data.cache_dir=/tmp/c"]
    assert names == ["d-k1-vocab_size512", "d-k2-vocab_size512"]
