"""Concurrency and retry helpers shared by the stores and the snapshot engine."""
from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Callable, TypeVar

from .base import Store

log = logging.getLogger("fractfs")

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_ATTEMPTS = 5
BASE_DELAY = 0.1
MAX_DELAY = 5.0


def parallel_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> list[R]:
    """``[fn(x) for x in items]`` on up to ``workers`` threads, results in input order.

    The first exception stops the batch: queued calls are cancelled, calls already running are waited
    for (so nothing is still writing once this returns), then that exception is raised.
    """
    seq = list(items)
    if workers <= 1 or len(seq) <= 1:
        return [fn(x) for x in seq]
    pool = ThreadPoolExecutor(max_workers=min(workers, len(seq)), thread_name_prefix="fractfs-io")
    try:
        futures: list[Future[R]] = [pool.submit(fn, x) for x in seq]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for f in done:
            exc = f.exception()
            if exc is not None:
                for other in futures:
                    other.cancel()
                raise exc
        return [f.result() for f in futures]
    finally:
        pool.shutdown(wait=True)


def backoff_delay(attempt: int, base: float = BASE_DELAY, cap: float = MAX_DELAY) -> float:
    """Exponential backoff with jitter for retry number ``attempt`` (0-based).

    Half fixed, half random: many clients failing together (a throttled bucket) spread out instead of
    retrying in lockstep, yet every retry still waits at least half the nominal delay.
    """
    d = min(cap, base * 2.0 ** attempt)
    return d / 2 + random.uniform(0, d / 2)


def retry(
    fn: Callable[[], T],
    *,
    is_transient: Callable[[BaseException], bool],
    attempts: int = DEFAULT_ATTEMPTS,
    what: str = "store operation",
) -> T:
    """Call ``fn`` until it succeeds, retrying only errors ``is_transient`` accepts, at most ``attempts``
    times in all. The last error is raised unchanged."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if attempt + 1 >= attempts or not is_transient(exc):
                raise
            delay = backoff_delay(attempt)
            log.info("%s failed (%s: %s); retry %d/%d in %.2fs",
                     what, type(exc).__name__, exc, attempt + 1, attempts - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover - the loop always returns or raises


async def aretry(
    fn: Callable[[], Awaitable[T]],
    *,
    is_transient: Callable[[BaseException], bool],
    attempts: int = DEFAULT_ATTEMPTS,
    what: str = "store operation",
) -> T:
    """:func:`retry` for coroutines: waits with ``asyncio.sleep`` so other requests keep flowing."""
    for attempt in range(attempts):
        try:
            return await fn()
        except Exception as exc:
            if attempt + 1 >= attempts or not is_transient(exc):
                raise
            delay = backoff_delay(attempt)
            log.info("%s failed (%s: %s); retry %d/%d in %.2fs",
                     what, type(exc).__name__, exc, attempt + 1, attempts - 1, delay)
            import asyncio  # here, not at the top: only the S3 store is async, and asyncio costs a cold start ~20 ms

            await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def put_many(store: Store, items: Sequence[tuple[str, bytes]], *, workers: int = 32) -> None:
    """Write many small objects: the store's own fast path if it has one, else a bounded thread pool."""
    fast = getattr(store, "put_many", None)
    if fast is not None:
        fast(items, workers=workers)
        return
    parallel_map(lambda kv: store.put(kv[0], kv[1]), items, workers)


def get_many(store: Store, keys: Sequence[str], *, workers: int = 32) -> list[bytes]:
    """Read many objects, in the order of ``keys``; the store's fast path if it has one."""
    fast = getattr(store, "get_many", None)
    if fast is not None:
        result: list[bytes] = fast(keys, workers=workers)
        return result
    return parallel_map(store.get, keys, workers)
