"""Whether an HF Hub name (a dataset for `data.name`, a tokenizer for `data.tokenizer`) can be loaded here: a local
folder, a copy in the local caches, or a Hub that answers. Checked before any rank, so that a name that is none of
these is one line within seconds, not a traceback from `datasets.load_dataset` after its retries (about 30 s with
no network) on the launching host or, worse, on every rank.

The caches are huggingface_hub's (HF_HUB_CACHE: `datasets--org--name`, `models--org--name`) and, for datasets,
the `datasets` library's own (HF_DATASETS_CACHE: `org___name`). The Hub is probed with one TCP connection to its
endpoint, bounded in time (name resolution included), unless HF_HUB_OFFLINE or HF_DATASETS_OFFLINE says not to.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from moe.config import ConfigError

PROBE_TIMEOUT_S = 4.0
TRUE = ("1", "true", "yes", "on")


def check_hub_name(name: str, kind: str, where: str) -> None:
    """`kind` is "dataset" or "model"; `where` the recipe key, for the message."""
    if Path(name).expanduser().exists() or hub_cached(name, kind):
        return
    offline = [v for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if os.environ.get(v, "").lower() in TRUE]
    if offline:
        raise ConfigError(
            f"{where}={name} is not a local folder and not in the HF cache, and {offline[0]} is set; "
            f"download it first, or point {where} at a local folder"
        )
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if not reachable(endpoint):
        raise ConfigError(
            f"{where}={name} is not a local folder and not in the HF cache, and {endpoint} cannot be reached "
            f"(no network?); download it on a machine that has one, or point {where} at a local folder"
        )


def hub_cached(name: str, kind: str) -> bool:
    hub = Path(os.environ.get("HF_HUB_CACHE") or Path(hf_home()) / "hub")
    if (hub / f"{kind}s--{name.replace('/', '--')}").is_dir():
        return True
    if kind == "dataset":
        own = Path(os.environ.get("HF_DATASETS_CACHE") or Path(hf_home()) / "datasets")
        return (own / name.replace("/", "___")).is_dir()
    return False


def hf_home() -> str:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return os.environ.get("HF_HOME") or str(Path(cache) / "huggingface")


def reachable(endpoint: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the endpoint's host opens within `timeout` seconds. The probe runs in a daemon
    thread, since socket timeouts do not bound the name lookup (getaddrinfo)."""
    url = urlparse(endpoint)
    host, port = url.hostname or "", url.port or (80 if url.scheme == "http" else 443)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])
