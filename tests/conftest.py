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


@pytest.fixture(scope="session", autouse=True)
def deepspeed_cpu_comm_op_built():
    """Build DeepSpeed's CPU shared-memory comm op (~50 s JIT, cached in TORCH_EXTENSIONS_DIR) once, here, before
    any test spawns ranks, so ranks never race through a first build together."""
    from deepspeed.comm.torch import build_shm_op
    build_shm_op()  # None on accelerators that do not use it
