"""Reading one file so that its bytes provably belong to one version of it.

A file is read bounded by the size seen at ``fstat`` (an appended-to file would never reach EOF) and stat'ed
again afterwards; one that changed meanwhile is retried, then reported busy (:func:`capture`). A file whose
ctime is within one coarse kernel clock tick of now may still change without its timestamps moving (the *racy
timestamp* guard): we wait that out before reading. A SQLite database is copied through SQLite's backup API
(see :mod:`.sqlite`), which gives a consistent copy however busy it is.

A file that is written more often than the guard can wait out (a log appended every few ms, a progress file
rewritten in place) is never settled. :func:`capture_stable` gives it a second, bounded chance at the end of
the pass: it reads the whole file again and again and accepts a version that two consecutive reads agree on,
either byte for byte or, for a file that only grew, on the first read's bytes (its stable prefix). Such a
capture is never remembered as read (no stat facts), so the next checkpoint looks at the file again.

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

from ..errors import CheckpointAborted
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
#: The checkpoint's cutoff came while the file was being read: it is left out, its previous version kept.
OUT_OF_TIME = "out of time"
#: How a capture was proven consistent (Captured.how): a settled read, two identical reads of a file that
#: kept changing, or the stable prefix of a file that only grew between two reads.
SETTLED, IDENTICAL, PREFIX = "settled", "identical", "prefix"
#: Whole reads of a busy file compared by capture_stable before it is left busy for this checkpoint.
STABLE_READS = 6


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
    how: str = SETTLED


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

    def __init__(self, tmpdir: Path, large: int, deadline: float | None, content_hash: bool,
                 cancelled: Callable[[], bool] = lambda: False):
        self.tmpdir = tmpdir
        self.large = large
        #: the cutoff (time.monotonic()) by which reading must stop; None = no limit
        self.deadline = deadline
        self.content_hash = content_hash
        #: True once the checkpoint was aborted (the final pass took over): stop reading at once
        self.cancelled = cancelled
        self.sqlite_unreadable_logged: set[str] = set()

    def time_left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()

    def stop(self) -> bool:
        """True when reading must stop now: out of time (returns), or aborted (raises CheckpointAborted)."""
        if self.cancelled():
            raise CheckpointAborted("checkpoint aborted: fractfs is stopping")
        return self.deadline is not None and time.monotonic() >= self.deadline


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
                if ctx.stop():
                    return OUT_OF_TIME
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


@dataclass
class _Read:
    """One whole read of a busy file (see :func:`capture_stable`)."""

    st0: os.stat_result
    st1: os.stat_result
    size: int  # bytes read: the size at st0, or less if the file shrank meanwhile
    sha: str
    #: sha256 of the first ``mark`` bytes (the previous read's size), when this read got that far
    mark_sha: str | None
    data: bytes | None  # small files
    temp: str | None  # large files: a copy in the state dir's tmp/

    @property
    def complete(self) -> bool:
        """The read got every byte the file had at its fstat (it did not shrink meanwhile)."""
        return self.size == self.st0.st_size

    @property
    def settled(self) -> bool:
        return self.complete and same(self.st0, self.st1) and not racy_ns(self.st0.st_ctime_ns)

    def discard(self) -> None:
        if self.temp:
            unlink_if_present(self.temp)
            self.temp = None


def _read_whole(path: str, ctx: CaptureContext, mark: int | None) -> _Read | str:
    """Read ``path`` up to its size at fstat, hashing it (and its first ``mark`` bytes); a large file is copied
    into tmp/ as it is read, since the file itself will have moved on by the time it is uploaded."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        return GONE
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return BUSY
        raise
    out_fd, temp = -1, None
    try:
        st0 = os.fstat(fd)
        if st0.st_mode & 0o170000 != S_IFREG:
            return BUSY
        size = st0.st_size
        small = size < ctx.large
        if not small:
            temp = os.fspath(ctx.tmpdir / f"busy-{uuid.uuid4().hex}")
            out_fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        h = hashlib.sha256()
        mark_sha = h.hexdigest() if mark == 0 else None
        parts: list[bytes] = []
        n = 0
        while n < size:
            if ctx.stop():
                raise _Stop
            want = min(CHUNK, size - n)
            if mark is not None and n < mark:
                want = min(want, mark - n)  # stop exactly at the mark to take the prefix's hash there
            b = os.read(fd, want)
            if not b:
                break
            h.update(b)
            n += len(b)
            if mark is not None and n == mark:
                mark_sha = h.hexdigest()
            if small:
                parts.append(b)
            else:
                view = memoryview(b)
                while view:
                    view = view[os.write(out_fd, view):]
        if _after_read_hook is not None:
            _after_read_hook(path)
        st1 = os.fstat(fd)
        got = _Read(st0=st0, st1=st1, size=n, sha=h.hexdigest(), mark_sha=mark_sha,
                    data=b"".join(parts) if small else None, temp=temp)
        temp = None
        return got
    except _Stop:
        return OUT_OF_TIME
    finally:
        os.close(fd)
        if out_fd >= 0:
            os.close(out_fd)
        if temp is not None:
            unlink_if_present(temp)


class _Stop(Exception):
    pass


def capture_stable(path: str, ctx: CaptureContext) -> Captured | str:
    """A second, bounded chance for a file :func:`capture` found busy (called at the end of the pass).

    Reads the whole file up to :data:`STABLE_READS` times, each bounded by the size at its ``fstat``, and
    compares each read with the one before:

    - a read that nothing moved under (and that is past the racy window) is taken as :func:`capture` would;
    - two reads with the same bytes (equal sha256): that content is taken (``how = IDENTICAL``);
    - a second read that is longer and whose first bytes hash like the whole first read: the first read is
      taken, the stable prefix of a file being appended to (``how = PREFIX``).

    A version taken from two reads is recorded without stat facts, so the next checkpoint reads the file again.
    Returns BUSY when no two reads agreed, OUT_OF_TIME at the cutoff, GONE when the file went away.
    """
    prev: _Read | None = None
    try:
        for i in range(STABLE_READS):
            if i:
                time.sleep(0.001 * i)  # a little more room each time for a writer between two writes
            if ctx.stop():
                return OUT_OF_TIME
            if prev is None and i == 0 and _looks_sqlite(path) and path not in ctx.sqlite_unreadable_logged:
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    return GONE
                if st.st_mode & 0o170000 != S_IFREG:
                    return BUSY  # became something else since the walk: the next round sees what
                got_db = _capture_sqlite(path, st, ctx)
                if got_db is not None:
                    return got_db  # the backup API's copy (or BUSY: still locked)
            r = _read_whole(path, ctx, prev.size if prev is not None else None)
            if isinstance(r, str):
                return r
            if r.settled:
                return _taken(r, r.st0, SETTLED, stat_facts(r.st0))
            if prev is not None and r.complete:
                if r.size == prev.size and r.sha == prev.sha:
                    return _taken(r, r.st1, IDENTICAL, None)
                if r.size > prev.size and prev.complete and r.mark_sha == prev.sha:
                    r.discard()
                    return _taken(prev, prev.st1, PREFIX, None)
                prev.discard()
            prev = r
        return BUSY
    finally:
        if prev is not None:
            prev.discard()


def _looks_sqlite(path: str) -> bool:
    try:
        with open(path, "rb", buffering=0) as f:
            return f.read(16) == SQLITE_MAGIC
    except OSError:
        return False


def _taken(r: _Read, st: os.stat_result, how: str, facts: Facts | None) -> Captured:
    """``r`` as a capture; its temp copy (if any) now belongs to the capture."""
    cap = Captured(sha=r.sha, size=r.size, mode=st.st_mode & 0o7777, mtime_ns=st.st_mtime_ns, facts=facts,
                   how=how)
    if r.data is not None:
        cap.data = r.data
    else:
        cap.upload_path, cap.temp = r.temp, True
        r.temp = None  # not discarded with the rest
    return cap


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
