"""Pieces every cloud storage backend shares: bucket URIs and the per-process client cache."""
from __future__ import annotations

import hashlib
import os
import threading
from typing import Any, Callable, Dict, Hashable, Sequence, Tuple


def split_bucket_uri(uri: Any, scheme: str, service: str) -> Tuple[str, str]:
    """Split ``<scheme>bucket/key`` into ``(bucket, key)``; the key is ``""`` for a bare bucket.

    Raises:
        ValueError: If ``uri`` is not a string of that scheme followed by a bucket name.
    """
    if not isinstance(uri, str) or not uri.startswith(scheme):
        raise ValueError(f"Not {service} URI (expected '{scheme}bucket/key'): {uri!r}")
    bucket, _, key = uri[len(scheme):].partition("/")
    if not bucket or any(ch.isspace() for ch in bucket):
        raise ValueError(f"{service} URI has no valid bucket name: {uri!r}")
    return bucket, key


def is_bucket_uri(path: Any, scheme: str) -> bool:
    """Whether ``path`` is a ``<scheme>bucket[/key]`` URI with a bucket name."""
    try:
        split_bucket_uri(path, scheme, "a cloud")
    except ValueError:
        return False
    return True


def environment_fingerprint(names: Sequence[str]) -> str:
    """A digest of the environment variables that change how a client is built."""
    return hashlib.sha256("\0".join(os.environ.get(name, "") for name in names).encode()).hexdigest()


class ClientCache:
    """Clients cached per process and per configuration key, shared between threads.

    A forked child starts with an empty cache and a fresh lock: a client (its connection pool,
    its lock) is never reused across ``fork``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: Dict[Hashable, Any] = {}
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self.clear)

    def clear(self) -> None:
        """Forget every cached client."""
        self._lock = threading.Lock()
        self._clients = {}

    def get(self, key: Hashable, create: Callable[[], Any]) -> Any:
        """The client cached under ``(pid, key)``, made by ``create()`` the first time."""
        key = (os.getpid(), key)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = self._clients[key] = create()
        return client
