"""What rank 0 writes into runs/<run_name>/ before training (moe/train/run_folder.py): the resolved config, which loads
back through the strict loader unchanged."""

import json

from moe.config import load_recipe, load_resolved
from moe.train.run_folder import write_resolved_config
from tests.helpers import REPO


def test_run_folder_holds_the_resolved_recipe_and_ds_config(tmp_path):
    r = load_resolved(
        REPO / "recipes/default.yaml", REPO / "ds_configs/zero1.json", [f"logging.runs_dir={tmp_path}"], 2
    )
    run_dir = write_resolved_config(r)
    assert run_dir == tmp_path / "stdlib-moe"
    assert json.loads((run_dir / "ds_config.json").read_text()) == r.ds_config
    again = load_recipe(run_dir / "recipe.yaml")
    assert again == r.recipe  # the written recipe loads back through the strict loader, unchanged
