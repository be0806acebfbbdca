"""Reading one file so that its bytes provably belong to one version of it.

A file is read bounded by the size seen at ``fstat`` (an appended-to file would never reach EOF) and stat'ed
again afterwards; one that changed meanwhile is retried, then reported busy and left for the next checkpoint.
A file whose ctime is within one coarse kernel clock tick of now may still change without its timestamps
moving (the *racy timestamp* guard): we wait that out before reading. A SQLite database is copied through
SQLite's backup API (see :mod:`.sqlite`), which gives a consistent copy however busy it is.

:class:`Readers` runs these reads a little ahead of the checkpoint loop on a few threads.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..localfile import hash_file, unlink_if_present
from . import scan
from . import sqlite as _sqlite
from .format import SQLITE_MAGIC
from .scan import S_IFREG
from .statcache import Facts, stat_facts

log = logging.getLogger("fractfs")

MiB = 1 << 20
#: A file whose ctime is this close to "now" may still be written within the same coarse kernel clock tick
#: without its timestamps changing, so a read of it cannot be proven untorn yet. We wait it out.
RACY_NS = 30_000_000
READ_ATTEMPTS = 3
SQLITE_TIMEOUT = 5.0
CHUNK = MiB
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(
    os, "O_CLOEXEC", 0)

#: Tests set this to change a file between our read and our re-stat (called with the path).
_after_read_hook: Callable[[str], None] | None = None

BUSY = "busy"
GONE = "gone"


@dataclass
class Captured:
    sha: str
    size: int
    mode: int
    mtime_ns: int
    facts: Facts | None  # what the stat cache will remember; None = re-read next time
    data: bytes | None = None  # small files: the bytes
    upload_path: str | None = None  # large files: what to stream to the store
    temp: bool = False  # upload_path is our own copy, delete it afterwards
    sqlite: bool = False
    side: tuple[Any, ...] | None = None


def same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_size == b.st_size and a.st_mtime_ns == b.st_mtime_ns and a.st_ctime_ns == b.st_ctime_ns
            and a.st_ino == b.st_ino)


def racy_ns(ctime_ns: int) -> int:
    """How long to wait until a file last changed at ``ctime_ns`` is safely in the past (0 = it already is)."""
    age = time.time_ns() - ctime_ns
    if age >= RACY_NS or age < -RACY_NS:  # old, or far in the future (clock skew: waiting won't help)
        return 0
    return RACY_NS - max(age, 0)


def _read_exact(fd: int, n: int) -> bytes:
    parts = []
    while n > 0:
        b = os.read(fd, min(n, 64 * MiB))
        if not b:
            break
        parts.append(b)
        n -= len(b)
    return b"".join(parts) if len(parts) != 1 else parts[0]


class CaptureContext:
    """Per-checkpoint settings the readers need."""

    def __init__(self, tmpdir: Path, large: int, deadline: float | None, content_hash: bool):
        self.tmpdir = tmpdir
        self.large = large
        self.deadline = deadline
        self.content_hash = content_hash
        self.sqlite_unreadable_logged: set[str] = set()

    def time_left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()


def capture(path: str, ctx: CaptureContext) -> Captured | str:
    """Read ``path`` so that the bytes provably belong to one version of the file.

    Bounded by the size seen at stat (an appended-to file would never reach EOF), re-stat'ed afterwards; a file
    that changed while being read is retried, then reported busy and left for the next round.
    """
    for attempt in range(READ_ATTEMPTS):
        if attempt:
            time.sleep(0.02 * attempt)
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except FileNotFoundError:
            return GONE
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # became a symlink since the walk: next round sees it as one
                return BUSY
            raise
        try:
            st0 = os.fstat(fd)
            if st0.st_mode & 0o170000 != S_IFREG:
                return BUSY
            size = st0.st_size
            first = _read_exact(fd, min(size, CHUNK))
            if first[:16] == SQLITE_MAGIC and path not in ctx.sqlite_unreadable_logged:
                # the backup API gives a consistent copy however busy the database is
                os.close(fd)
                fd = -1
                got = _capture_sqlite(path, st0, ctx)
                if got is not None:
                    return got
                continue  # not readable as a database: copy its bytes like any file
            wait = racy_ns(st0.st_ctime_ns)
            if wait:
                time.sleep(wait / 1e9)
                continue
            h = hashlib.sha256(first)
            n = len(first)
            small = size < ctx.large
            parts = [first]
            while n < size:
                b = os.read(fd, min(CHUNK, size - n))
                if not b:
                    break
                h.update(b)
                n += len(b)
                if small:
                    parts.append(b)
            if _after_read_hook is not None:
                _after_read_hook(path)
            st1 = os.fstat(fd)
        finally:
            if fd >= 0:
                os.close(fd)
        if n != size or not same(st0, st1):
            log.debug("%s changed while being read (attempt %d)", path, attempt + 1)
            continue
        cap = Captured(sha=h.hexdigest(), size=size, mode=st0.st_mode & 0o7777, mtime_ns=st0.st_mtime_ns,
                        facts=stat_facts(st0))
        if small:
            cap.data = b"".join(parts)
        else:
            cap.upload_path = path
        return cap
    return BUSY


def _capture_sqlite(path: str, st0: os.stat_result, ctx: CaptureContext) -> Captured | str | None:
    # Facts are taken *before* the backup: a commit that lands during it changes them, so the next round
    # copies the database again instead of believing this copy is current.
    side = scan.sidecar_facts(path)
    tmp = ctx.tmpdir / f"sqlite-{uuid.uuid4().hex}.db"
    timeout = min(SQLITE_TIMEOUT, max(ctx.time_left() - 1.0, 0.2))
    try:
        _sqlite.backup(path, os.fspath(tmp), timeout)
    except _sqlite.SqliteBusy as exc:
        log.info("fractfs: %s", exc)
        unlink_if_present(tmp)
        return BUSY
    except _sqlite.SqliteUnreadable as exc:
        unlink_if_present(tmp)
        log.warning("fractfs: %s looks like SQLite but cannot be opened as one (%s); copying it as plain bytes",
                    path, exc)
        ctx.sqlite_unreadable_logged.add(path)
        return None
    try:
        sha, size = hash_file(tmp)
        racy = racy_ns(st0.st_ctime_ns) or any(racy_ns(s[3]) for s in side if s[2])
        cap = Captured(sha=sha, size=size, mode=st0.st_mode & 0o7777, mtime_ns=st0.st_mtime_ns,
                        facts=None if racy else stat_facts(st0), sqlite=True, side=side)
        if size < ctx.large:
            with open(tmp, "rb") as f:
                cap.data = f.read()
            unlink_if_present(tmp)
        else:
            cap.upload_path = os.fspath(tmp)
            cap.temp = True
        return cap
    except BaseException:
        unlink_if_present(tmp)
        raise


class Readers:
    """Captures the changed files a little ahead of the checkpoint loop, on a few threads.

    Reading and hashing release the GIL, so on a 2-vCPU node a couple of readers take in new data about
    twice as fast as one. Results are still handed out in the loop's order, so packing stays deterministic.
    The lookahead is bounded in files and in bytes held (large files are streamed later, not held).
    """

    def __init__(self, jobs: list[tuple[str, int]], ctx: CaptureContext, workers: int, max_files: int = 64,
                 max_bytes: int = 64 * MiB) -> None:
        self.jobs = jobs  # (path, size at the walk)
        self.ctx = ctx
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fractfs-read")
        self.futures: dict[int, Future[Captured | str]] = {}
        self.next = 0
        self.held = 0

    def _held(self, i: int) -> int:
        size = self.jobs[i][1]
        return size if size < self.ctx.large else 0

    def _fill(self, first: int) -> None:
        while self.next < len(self.jobs) and self.next - first < self.max_files and (
                self.next == first or self.held + self._held(self.next) <= self.max_bytes):
            self.futures[self.next] = self.pool.submit(capture, self.jobs[self.next][0], self.ctx)
            self.held += self._held(self.next)
            self.next += 1

    def get(self, i: int) -> Captured | str:
        """What :func:`capture` returns (or raises) for job ``i``; jobs are taken in increasing order."""
        self._fill(i)
        fut = self.futures.pop(i)
        try:
            return fut.result()
        finally:
            self.held -= self._held(i)
            self._fill(i + 1)

    def close(self) -> None:
        for fut in self.futures.values():
            fut.cancel()
        self.pool.shutdown(wait=True)  # nothing may still write into the temp dir once we clean it
        for fut in self.futures.values():
            if not fut.cancelled() and fut.exception() is None:
                got = fut.result()
                if isinstance(got, Captured) and got.temp and got.upload_path:
                    unlink_if_present(got.upload_path)
        self.futures.clear()


#: Threads reading and hashing changed files (see Readers). More than the cores would only add GIL traffic.
READERS = 2
