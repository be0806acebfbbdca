"""A store wrapper that counts the bytes read through it, so a long read can show its progress."""
from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .base import Store


class CountingStore:
    """Delegates to ``inner``; counts the bytes fetched (``read_bytes``), from any thread.

    The library reports no progress itself: the ``fractfs`` command polls ``read_bytes`` while ``verify`` or
    ``restore`` run against this wrapper.
    """

    def __init__(self, inner: Store):
        self.inner = inner
        self.url = inner.url
        self.read_bytes = 0
        self._lock = threading.Lock()

    def _count(self, n: int) -> None:
        with self._lock:
            self.read_bytes += n

    def put(self, key: str, data: bytes, *, exclusive: bool = False) -> None:
        self.inner.put(key, data, exclusive=exclusive)

    def put_file(self, key: str, path: Path) -> None:
        self.inner.put_file(key, path)

    def get(self, key: str) -> bytes:
        data = self.inner.get(key)
        self._count(len(data))
        return data

    def get_range(self, key: str, start: int, length: int) -> bytes:
        data = self.inner.get_range(key, start, length)
        self._count(len(data))
        return data

    def get_file(self, key: str, path: Path) -> None:
        self.inner.get_file(key, path)
        with contextlib.suppress(OSError):
            self._count(os.path.getsize(path))

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        return self.inner.list(prefix)

    def size(self, key: str) -> int | None:
        return self.inner.size(key)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def __getattr__(self, name: str) -> Any:
        # Batch fast paths exist only when the wrapped store has them (the engine tests for them by name).
        if name == "get_many":
            inner_many = getattr(self.inner, "get_many")  # noqa: B009 - not on the Store protocol

            def get_many(keys: Sequence[str], *, workers: int = 32) -> list[bytes]:
                out: list[bytes] = list(inner_many(keys, workers=workers))
                self._count(sum(len(b) for b in out))
                return out

            return get_many
        if name == "put_many":
            return getattr(self.inner, "put_many")  # noqa: B009 - not on the Store protocol
        raise AttributeError(name)
