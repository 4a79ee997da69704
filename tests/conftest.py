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
    """Skip `gpu` tests only where no CUDA GPU is present, `nvme` tests only where libaio is absent."""
    import torch
    missing = {}
    if not torch.cuda.is_available():
        missing["gpu"] = "needs a CUDA GPU"
    if any("nvme" in item.keywords for item in items):
        from moe.config.memory_saving import async_io_available
        if not async_io_available():
            missing["nvme"] = "needs libaio for DeepSpeed's async_io op (apt install libaio-dev, or CFLAGS/LDFLAGS)"
    for item in items:
        for marker, reason in missing.items():
            if marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session", autouse=True)
def deepspeed_cpu_comm_op_built():
    """Build DeepSpeed's CPU shared-memory comm op (~50 s JIT, cached in TORCH_EXTENSIONS_DIR) once, here, before
    any test spawns ranks, so ranks never race through a first build together."""
    from deepspeed.comm.torch import build_shm_op
    build_shm_op()  # None on accelerators that do not use it


@pytest.fixture(scope="session")
def deepspeed_cpu_adam_built():
    """Build DeepSpeedCPUAdam (ZeRO-Offload's optimizer; ~2 min JIT on 2 cores, cached in TORCH_EXTENSIONS_DIR) once,
    before a test spawns ranks that need it."""
    from deepspeed.ops.op_builder import CPUAdamBuilder
    CPUAdamBuilder().load(verbose=False)


def pytest_configure(config):
    config.addinivalue_line("markers", "nvme: ZeRO-Infinity NVMe offload; needs libaio (DeepSpeed's async_io op), "
                                       "skipped only when libaio is absent")
