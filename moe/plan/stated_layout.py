"""The layout a shipped recipe is meant for, from its header line (recipes/published/, recipes/gpu/):

# plan: gpus=128 ds_config=ds_configs/zero2_bf16.json ds.train_micro_batch_size_per_gpu=2 (any comment)
"""

from __future__ import annotations

import re
from pathlib import Path


def stated_layout(recipe: str | Path) -> tuple[int, str, list[str]]:
    """(GPUs, ds_config, ds overrides) from the recipe's `# plan: gpus=N ds_config=J ds.k=v ...` line."""
    words = re.search(r"^# plan: (.*)$", Path(recipe).read_text(), re.M).group(1).split("(")[0].split()
    fields = dict(w.split("=", 1) for w in words if not w.startswith("ds."))
    return int(fields["gpus"]), fields["ds_config"], [w for w in words if w.startswith("ds.")]
