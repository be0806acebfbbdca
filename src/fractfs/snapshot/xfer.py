"""Parallel transfers to and from a store, using its optional batch calls when it has them.

A store may offer ``put_many(items)`` / ``get_many(keys)`` (one round of requests for many objects); otherwise
we run single calls on a pool of ``transfers`` threads. Store calls are I/O and release the GIL.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any, Callable, cast

from ..errors import AlreadyExists, ObjectRejected, StoreError
from ..stores.base import BatchStore, Parts, Store, put_parts
from ..stores.transfer import parallel_map

#: Upper bound of pack bytes held in memory waiting for upload, so a big first checkpoint on a 2-vCPU / 8 GB
#: node cannot balloon; reading waits for uploads instead.
MAX_INFLIGHT_BYTES = 256 << 20


def has_batch_put(store: Store) -> bool:
    return callable(getattr(store, "put_many", None))


def has_batch_get(store: Store) -> bool:
    return callable(getattr(store, "get_many", None))


def get_blobs(store: Store, keys: list[str], workers: int) -> list[bytes]:
    """Whole objects for ``keys``, in order; one batch call when the store has one."""
    if len(keys) > 1 and has_batch_get(store):
        return list(cast(BatchStore, store).get_many(keys, workers=workers))
    return [store.get(k) for k in keys]


def check_stored(store: Store, key: str, expected: int) -> None:
    """Raise StoreError unless ``key`` now holds ``expected`` bytes.

    A write that reported success but kept only part of the bytes (a mount that drops the tail of a file, a
    proxy that cuts a body short) would otherwise be referenced by the next manifest and stay broken for as
    long as the file does not change, since later checkpoints reuse it instead of uploading again. One size
    query per pack or object turns that into a failed, retried checkpoint.
    """
    got = store.size(key)
    if got != expected:
        have = "nothing" if got is None else f"{got} bytes"
        raise StoreError(f"{getattr(store, 'url', 'store')}: {key} holds {have} right after {expected} bytes "
                         "were written to it; the store lost part of the write (it will be written again)")


def store_blob(store: Store, key: str, data: bytes) -> None:
    """Write a content-addressed blob, never replacing a complete copy that is already there.

    Snapshots this checkpoint does not know about (older ones, or a newer one a stale listing hid) may
    reference the same key. Rewriting it is harmless only if the write is atomic; on a mount without rename
    an interrupted or truncated rewrite would damage their copy. So: create it exclusively, and only replace
    what is there when it has the wrong size (the leftover of an interrupted write, which nothing
    references because a manifest is written only after its blobs checked out).
    """
    try:
        store.put(key, data, exclusive=True)
    except AlreadyExists:
        if store.size(key) == len(data):
            return
        store.put(key, data)
    check_stored(store, key, len(data))


def store_parts(store: Store, key: str, parts: Parts) -> None:
    """:func:`store_blob` of the blob whose bytes are ``parts`` one after the other (not joined in memory
    where the store writes parts itself, see :func:`~fractfs.stores.base.put_parts`)."""
    size = sum(len(p) for p in parts)
    try:
        put_parts(store, key, parts, exclusive=True)
    except AlreadyExists:
        if store.size(key) == size:
            return
        put_parts(store, key, parts)
    check_stored(store, key, size)


class Uploader:
    """Background uploads with bounded memory; ``wait()`` raises the first failure that concerns the store.

    A failure that concerns one object (:class:`~fractfs.errors.ObjectRejected`: the store is full, or the
    object is larger than it takes) stays on that object's future and does not stop the other uploads: the
    checkpoint leaves the files behind it out and commits the rest.

    ``until`` (a ``time.monotonic()`` value, the cutoff of a bounded checkpoint) stops every wait at that
    moment; ``large_lanes`` bounds how many streamed objects (``submit(..., large=True)``) run at once, in the
    order they were submitted, so under a deadline one large file is finished before the next one starts
    instead of several being half-uploaded when time runs out.
    """

    def __init__(self, store: Store, transfers: int, *, until: float | None = None,
                 large_lanes: int | None = None, max_inflight: int = MAX_INFLIGHT_BYTES):
        self.store = store
        #: bytes queued or uploading before submitting more waits (the caller's memory bound)
        self.max_inflight = max_inflight
        self.transfers = max(1, transfers)
        self.until = until
        self.pool = ThreadPoolExecutor(max_workers=self.transfers, thread_name_prefix="fractfs-put")
        self.large_pool = self.pool if large_lanes is None else ThreadPoolExecutor(
            max_workers=max(1, large_lanes), thread_name_prefix="fractfs-put-large")
        self.futures: list[Future[Any]] = []
        self.batch: list[tuple[str, bytes]] = []
        self.batch_bytes = 0
        self.batched = has_batch_put(store)
        self._cv = threading.Condition()
        self._inflight = 0
        self.bytes_done = 0
        self.started: float | None = None
        self.failed: BaseException | None = None

    # bytes per second achieved so far (None until there is something to go by)
    def rate(self) -> float | None:
        if self.started is None or self.bytes_done < (1 << 20):
            return None
        return self.bytes_done / max(time.monotonic() - self.started, 1e-3)

    @property
    def pending_bytes(self) -> int:
        return self._inflight

    def _reserve(self, n: int) -> None:
        with self._cv:
            while self._inflight > 0 and self._inflight + n > self.max_inflight and self.failed is None:
                if self.until is not None:
                    left = self.until - time.monotonic()
                    if left <= 0:
                        break  # at the cutoff the caller stops queueing anyway; never block past it
                    self._cv.wait(min(0.5, left))
                else:
                    self._cv.wait(0.5)
            self._inflight += n
        if self.started is None:
            self.started = time.monotonic()

    def _release(self, n: int, ok: bool) -> None:
        with self._cv:
            self._inflight -= n
            if ok:
                self.bytes_done += n
            self._cv.notify_all()

    def _run(self, fn: Callable[[], Any], n: int) -> Any:
        ok = False
        try:
            out = fn()
            ok = True
            return out
        except ObjectRejected:
            raise  # this object only: the others go on (see the class docstring)
        except BaseException as exc:
            self.failed = exc
            raise
        finally:
            self._release(n, ok)

    def put(self, key: str, data: bytes) -> None:
        if self.failed is not None:
            raise self.failed
        self._reserve(len(data))
        if self.batched:
            self.batch.append((key, data))
            self.batch_bytes += len(data)
            if len(self.batch) >= self.transfers or self.batch_bytes >= self.max_inflight // 2:
                self._flush()
            return
        self.futures.append(self.pool.submit(self._run, lambda: store_blob(self.store, key, data), len(data)))

    def _flush(self) -> None:
        if not self.batch:
            return
        items, n = self.batch, self.batch_bytes
        self.batch, self.batch_bytes = [], 0
        batch_store = cast(BatchStore, self.store)
        workers = self.transfers

        def put_batch() -> None:
            # a batch write cannot be exclusive: leave out what is already stored whole (see store_blob)
            whole = parallel_map(lambda kv: batch_store.size(kv[0]) == len(kv[1]), items, workers)
            todo = [kv for kv, there in zip(items, whole) if not there]
            if todo:
                batch_store.put_many(todo, workers=workers)
                parallel_map(lambda kv: check_stored(batch_store, kv[0], len(kv[1])), todo, workers)

        self.futures.append(self.pool.submit(self._run, put_batch, n))

    def submit(self, fn: Callable[[], Any], nbytes: int, *, large: bool = False) -> Future[Any]:
        """Run ``fn`` (e.g. a streamed put_file plus its checks) on the pool; its result is the future's."""
        if self.failed is not None:
            raise self.failed
        self._reserve(nbytes)
        fut = (self.large_pool if large else self.pool).submit(self._run, fn, nbytes)
        self.futures.append(fut)
        return fut

    def wait(self) -> None:
        """Wait for every upload (or until ``until``); raise the first failure that is not one object's.

        Futures still running at the cutoff are left as they are: the caller looks at each one."""
        self._flush()
        timeout = None if self.until is None else max(0.0, self.until - time.monotonic())
        wait_futures(self.futures, timeout=timeout)
        first: BaseException | None = None
        for fut in self.futures:
            if not fut.done() or fut.cancelled():
                continue
            exc = fut.exception()
            if exc is not None and not isinstance(exc, ObjectRejected) and first is None:
                first = exc
        self.futures = []
        if first is not None:
            if isinstance(first, StoreError):
                raise first
            raise StoreError(f"{getattr(self.store, 'url', 'store')}: upload failed: {first}") from first

    def close(self, *, wait: bool = True) -> None:
        """Stop the pools. ``wait=False`` (after a cutoff): drop what has not started and do not wait for
        uploads still running; their store is aborted by the caller, so they stop at their next request."""
        for pool in {self.pool, self.large_pool}:
            pool.shutdown(wait=wait, cancel_futures=not wait)
