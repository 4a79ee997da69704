import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def hermetic_cache(tmp_path_factory):
    """Tokenizers and packed blocks go to one session cache, shared by every test and spawned rank."""
    cache = os.environ.get("MOE_TEST_CACHE") or str(tmp_path_factory.mktemp("moe-cache"))
    os.environ["MOE_CACHE"] = cache
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    return Path(cache)


def pytest_collection_modifyitems(config, items):
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
