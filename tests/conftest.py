import os
from pathlib import Path

import pytest

from moe.parallel import free_port
from tests.helpers import TINY, explain, launch_bash, launch_deepspeed


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


class LauncherRun(tuple):
    """(process, run folder) of a run through the real launcher, and the rendezvous port it ran on."""

    port: int


def launched(launch, runs, *args: str, **env: str) -> LauncherRun:
    port = free_port()
    proc = launch(*TINY, f"logging.runs_dir={runs}", *args, MASTER_PORT=str(port), **env)
    assert proc.returncode == 0, explain(proc)
    run = LauncherRun((proc, runs / "tiny"))
    run.port = port
    return run


@pytest.fixture(scope="session")
def bash_run(tmp_path_factory):
    """One tiny-recipe run through `bash launch/pretrain_moe.sh`, shared by the launcher, resume, multi-node and
    export tests: 2 ranks, EP=2, ZeRO-1, BASH_RUN_STEPS steps, checkpoints at steps 10 and 20."""
    return launched(launch_bash, tmp_path_factory.mktemp("bash_runs"))


@pytest.fixture(scope="session")
def deepspeed_run(tmp_path_factory):
    """The same run through `deepspeed launch/pretrain_moe.sh`, with W&B (offline) and DeepSpeed's wall-clock
    breakdown on: the launcher test compares it with `bash_run`, the telemetry test reads its time split."""
    return launched(
        launch_deepspeed,
        tmp_path_factory.mktemp("deepspeed_runs"),
        "logging.wandb=true",
        "ds.wall_clock_breakdown=true",
        WANDB_MODE="offline",
    )


@pytest.fixture(scope="session", autouse=True)
def deepspeed_cpu_comm_op_built():
    """Clear the JIT build locks that killed processes of an earlier session left (torch would wait on them forever:
    moe/launch/build_locks.py; here a lock a minute old that no process of this host builds under is one). Then
    build DeepSpeed's CPU shared-memory comm op (~50 s JIT, cached in TORCH_EXTENSIONS_DIR) once, before any test
    spawns ranks, so ranks never race through a first build together."""
    from deepspeed.comm.torch import build_shm_op

    from moe.launch.build_locks import clear_stale_build_locks

    clear_stale_build_locks(older_than_s=60)
    build_shm_op()  # None on accelerators that do not use it


@pytest.fixture(scope="session")
def deepspeed_cpu_adam_built():
    """Build DeepSpeedCPUAdam (ZeRO-Offload's optimizer; ~2 min JIT on 2 cores, cached in TORCH_EXTENSIONS_DIR) once,
    before a test spawns ranks that need it."""
    from deepspeed.ops.op_builder import CPUAdamBuilder

    CPUAdamBuilder().load(verbose=False)


LIBAIO_CACHE = Path.home() / ".cache" / "moe-recipes" / "libaio"


@pytest.fixture(scope="session")
def deepspeed_async_io_env() -> dict[str, str]:
    """DeepSpeed's async_io op (ZeRO-Infinity NVMe offload), built once before ranks spawn; returns the environment
    the ranks that use it need. It needs libaio; where the system has none (no libaio-dev, and no root to install
    it), its Debian packages are fetched from the package registry with `apt-get download` (no root needed) and
    unpacked into LIBAIO_CACHE, and the returned compiler and loader paths point there. They are given to the
    NVMe test's processes only: the session's environment stays as it was, so no other test sees libaio that the
    system lacks, whatever the order the tests run in."""
    import subprocess
    import sys

    from moe.launch.environment import async_io_available

    env: dict[str, str] = {}
    if not async_io_available():
        usr = _unpacked_libaio(LIBAIO_CACHE) / "usr"
        include, lib = usr / "include", next(usr.glob("lib/*-linux-gnu"), usr / "lib")
        env = {
            "CFLAGS": _prepended("CFLAGS", f"-I{include}", " "),
            "LDFLAGS": _prepended("LDFLAGS", f"-L{lib}", " "),
            "CPATH": _prepended("CPATH", str(include), os.pathsep),
            "LIBRARY_PATH": _prepended("LIBRARY_PATH", str(lib), os.pathsep),
            "LD_LIBRARY_PATH": _prepended("LD_LIBRARY_PATH", str(lib), os.pathsep),
        }
        with pytest.MonkeyPatch.context() as patch:  # DeepSpeed's probe reads CFLAGS / LDFLAGS of this process
            for name, value in env.items():
                patch.setenv(name, value)
            assert async_io_available(), f"libaio unpacked into {LIBAIO_CACHE} is not usable by AsyncIOBuilder"
    # Built in a child: the loader reads LD_LIBRARY_PATH only when a process starts. Minutes the first time, then
    # cached in TORCH_EXTENSIONS_DIR.
    subprocess.run(
        [sys.executable, "-c", "from deepspeed.ops.op_builder import AsyncIOBuilder as B; B().load()"],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
    )
    return env


def _prepended(name: str, value: str, separator: str) -> str:
    return separator.join(filter(None, [value, os.environ.get(name)]))


def _unpacked_libaio(root: Path) -> Path:
    import subprocess

    if (root / "usr" / "include" / "libaio.h").is_file():
        return root
    debs = root.with_name("libaio-debs")
    debs.mkdir(parents=True, exist_ok=True)
    for names in (("libaio-dev",), ("libaio1t64", "libaio1")):  # the runtime library was renamed in Ubuntu 24.04
        if not any(
            subprocess.run(["apt-get", "download", name], cwd=debs, capture_output=True).returncode == 0
            for name in names
        ):
            pytest.fail(f"libaio is missing and `apt-get download {' / '.join(names)}` failed: install libaio-dev")
    for deb in debs.glob("*.deb"):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root
