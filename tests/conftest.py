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
    """Skip `gpu` tests only where no CUDA GPU is present."""
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


@pytest.fixture(scope="session")
def deepspeed_cpu_adam_built():
    """Build DeepSpeedCPUAdam (ZeRO-Offload's optimizer; ~2 min JIT on 2 cores, cached in TORCH_EXTENSIONS_DIR) once,
    before a test spawns ranks that need it."""
    from deepspeed.ops.op_builder import CPUAdamBuilder
    CPUAdamBuilder().load(verbose=False)



LIBAIO_CACHE = Path.home() / ".cache" / "moe-recipes" / "libaio"


@pytest.fixture(scope="session")
def deepspeed_async_io_built():
    """DeepSpeed's async_io op (ZeRO-Infinity NVMe offload), built once before ranks spawn. It needs libaio; where the
    system has none (no libaio-dev, and no root to install it), its Debian packages are fetched from the package
    registry with `apt-get download` (no root needed) and unpacked into LIBAIO_CACHE, and the compiler and loader
    paths of every process started from here on point there."""
    import subprocess
    import sys

    from moe.config.memory_saving import async_io_available
    if not async_io_available():
        usr = _unpacked_libaio(LIBAIO_CACHE) / "usr"
        include, lib = usr / "include", next(usr.glob("lib/*-linux-gnu"), usr / "lib")
        _prepend("CFLAGS", f"-I{include}", " ")
        _prepend("LDFLAGS", f"-L{lib}", " ")
        for name, path in (("CPATH", include), ("LIBRARY_PATH", lib), ("LD_LIBRARY_PATH", lib)):
            _prepend(name, str(path), os.pathsep)
        assert async_io_available(), f"libaio unpacked into {LIBAIO_CACHE} is not usable by DeepSpeed's AsyncIOBuilder"
    # Built in a child: the loader reads LD_LIBRARY_PATH only when a process starts. Minutes the first time, then
    # cached in TORCH_EXTENSIONS_DIR.
    subprocess.run([sys.executable, "-c", "from deepspeed.ops.op_builder import AsyncIOBuilder as B; B().load()"],
                   check=True, capture_output=True)


def _prepend(name: str, value: str, separator: str) -> None:
    os.environ[name] = separator.join(filter(None, [value, os.environ.get(name)]))


def _unpacked_libaio(root: Path) -> Path:
    import subprocess
    if (root / "usr" / "include" / "libaio.h").is_file():
        return root
    debs = root.with_name("libaio-debs")
    debs.mkdir(parents=True, exist_ok=True)
    for names in (("libaio-dev",), ("libaio1t64", "libaio1")):  # the runtime library was renamed in Ubuntu 24.04
        if not any(subprocess.run(["apt-get", "download", name], cwd=debs, capture_output=True).returncode == 0
                   for name in names):
            pytest.fail(f"libaio is missing and `apt-get download {' / '.join(names)}` failed: install libaio-dev")
    for deb in debs.glob("*.deb"):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root
