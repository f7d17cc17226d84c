"""Whether the model hub can be reached, decided once and quickly, so an offline pretrained tag fails in a second
instead of after a minute of download retries.

Offline when ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` says so, or when a TCP connection to the hub's host
(``HF_ENDPOINT``, else huggingface.co) does not open within ``PROBE_SECONDS``. The probe runs in a daemon thread,
so a name lookup that hangs cannot hold the caller longer than that; its answer is kept for the process.
Inside ``hub_offline_mode()`` huggingface_hub (and through it open_clip, timm and transformers) reads only its
local cache: a cached checkpoint still loads, a missing one fails at once.
"""

from __future__ import annotations

import functools
import os
import socket
import threading
from contextlib import contextmanager
from typing import Iterator
from urllib.parse import urlparse

from huggingface_hub import constants as hub_constants

PROBE_SECONDS = 1.5
_TRUE = {"1", "on", "yes", "true"}


def _env_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_host() -> str:
    """The host huggingface_hub downloads from."""
    return urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"


def _probe(host: str, port: int, timeout: float) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds (name lookup included)."""
    opened: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            opened.append(True)
        except Exception:  # noqa: BLE001  any failure of the probe (a refused, reset or patched socket) is "no hub"
            opened.append(False)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(opened and opened[0])


@functools.lru_cache(maxsize=None)
def _hub_unreachable(host: str) -> bool:
    return not _probe(host, 443, PROBE_SECONDS)


def hub_offline() -> bool:
    """True when the hub cannot be used: offline by environment, or its host did not answer the (one) probe."""
    return _env_offline() or _hub_unreachable(hub_host())


@contextmanager
def hub_offline_mode() -> Iterator[None]:
    """huggingface_hub reads only its local cache inside (its documented offline mode, switched for the call)."""
    before = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = before
