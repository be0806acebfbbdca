"""Store wrappers: the same Store protocol with one rule added around every call.

:class:`AbortableStore` is the store as one checkpoint run sees it: after :meth:`~AbortableStore.abort`, every
call raises :class:`~fractfs.errors.CheckpointAborted`, so a checkpoint abandoned by the bounded final pass
stops at its next request and never commits. It does not look at keys: whether a checkpoint may commit is
decided by the fence passed to ``engine.commit`` (see :mod:`fractfs.checkpointer`).
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Iterator, Sequence, cast

from ..errors import CheckpointAborted
from .base import BatchStore, Parts, Store, put_parts, writes_like


class AbortableStore:
    """Delegates to ``inner`` until :meth:`abort`; refuses every call after it."""

    def __init__(self, inner: Store):
        self._inner = inner
        self._aborted = threading.Event()
        self.url: str = getattr(inner, "url", "")

    @property
    def aborted(self) -> bool:
        return self._aborted.is_set()

    def abort(self) -> None:
        self._aborted.set()

    def check(self) -> None:
        """Raise CheckpointAborted once aborted (also usable as, or in, a commit fence)."""
        if self._aborted.is_set():
            raise CheckpointAborted("checkpoint aborted: fractfs is stopping")

    def put(self, key: str, data: bytes, *, exclusive: bool = False) -> None:
        self.check()
        self._inner.put(key, data, exclusive=exclusive)

    @writes_like(put)
    def put_parts(self, key: str, parts: Parts, *, exclusive: bool = False) -> None:
        self.check()
        put_parts(self._inner, key, parts, exclusive=exclusive)

    def put_file(self, key: str, path: Path) -> None:
        self.check()
        self._inner.put_file(key, path)

    def get(self, key: str) -> bytes:
        self.check()
        return self._inner.get(key)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        self.check()
        return self._inner.get_range(key, start, length)

    def get_file(self, key: str, path: Path) -> None:
        self.check()
        self._inner.get_file(key, path)

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        self.check()
        return iter(self._inner.list(prefix))

    def size(self, key: str) -> int | None:
        self.check()
        return self._inner.size(key)

    def delete(self, key: str) -> None:
        self.check()
        self._inner.delete(key)

    def __getattr__(self, name: str) -> Any:
        # Batch calls are only offered when the inner store has them (see AbortableBatchStore): callers probe
        # for them with getattr, and a delegated put_many would bypass the check above.
        if name in ("put_many", "get_many") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._inner, name)


class AbortableBatchStore(AbortableStore):
    def __init__(self, inner: BatchStore):
        super().__init__(inner)
        self._batch = inner

    def put_many(self, items: Sequence[tuple[str, bytes]], *, workers: int = 32) -> None:
        self.check()
        self._batch.put_many(items, workers=workers)

    def get_many(self, keys: Sequence[str], *, workers: int = 32) -> list[bytes]:
        self.check()
        return self._batch.get_many(keys, workers=workers)


def abortable(store: Store) -> AbortableStore:
    """``store`` wrapped in the AbortableStore that offers the same batch calls it does."""
    if callable(getattr(store, "put_many", None)) and callable(getattr(store, "get_many", None)):
        return AbortableBatchStore(cast(BatchStore, store))
    return AbortableStore(store)
