"""Reading one file so that its bytes provably belong to one version of it.

A file is read bounded by the size seen at ``fstat`` (an appended-to file would never reach EOF) and stat'ed
again afterwards; one that changed meanwhile is retried, then reported busy (:func:`capture`). Its content is
cut into format v2 chunks and each chunk hashed (docs/format.md §A2), every byte once: a file below
the large-file threshold is read into memory and chunked there; a larger one is chunked while it is read
(:func:`capture_streamed`), each chunk handed to the packer at once, so it is never held in memory whole. A file whose
ctime is within one coarse kernel clock tick of now may still change without its timestamps moving (the *racy
timestamp* guard): we wait that out before reading. A SQLite database is copied through SQLite's backup API
(see :mod:`.sqlite`), which gives a consistent copy however busy it is.

A file that is written more often than the guard can wait out (a log appended every few ms, a progress file
rewritten in place) is never settled. :func:`capture_stable` gives it a second, bounded chance at the end of
the pass: it reads the whole file again and again and accepts a version that two consecutive reads agree on,
either byte for byte or, for a file that only grew, on the first read's bytes (its stable prefix). Such a
capture is never remembered as read (no stat facts), so the next checkpoint looks at the file again.

:class:`Readers` runs these reads a little ahead of the checkpoint loop on a few threads.

A file's ``sha`` here is its content id (docs/format.md §A4): the SHA-256 of its bytes when it is one
chunk (every file of at most 128 KiB), else the SHA-256 of its chunks' digests.
"""
from __future__ import annotations

import contextlib
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
from ..localfile import unlink_if_present
from . import scan
from . import sqlite as _sqlite
from .chunker import FORMAT_PARAMS, chunks_pipelined, cut_points
from .format import SQLITE_MAGIC
from .packer import Slot
from .pack2 import Bytes
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
#: :func:`capture` of a file at or above the large-file threshold: chunk it with :func:`capture_streamed`
LARGE = "large"
#: The checkpoint's cutoff came while the file was being read: it is left out, its previous version kept.
OUT_OF_TIME = "out of time"
#: How a capture was proven consistent (Captured.how): a settled read, two identical reads of a file that
#: kept changing, or the stable prefix of a file that only grew between two reads.
SETTLED, IDENTICAL, PREFIX = "settled", "identical", "prefix"
#: Whole reads of a busy file compared by capture_stable before it is left busy for this checkpoint.
STABLE_READS = 6


EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
#: One chunk of content held in memory: (offset, length, SHA-256 digest)
Piece = tuple[int, int, bytes]
#: Places one chunk (its digest, its bytes) and says where: :meth:`.packer.Packer.put_copy`
PutChunk = Callable[[bytes, memoryview], Slot]


@dataclass
class Captured:
    sha: str  # the content id (see the module docstring)
    size: int
    mode: int
    mtime_ns: int
    facts: Facts | None  # what the stat cache will remember; None = re-read next time
    data: Bytes | None = None  # files read into memory: the bytes ...
    pieces: list[Piece] | None = None  # ... and their chunks
    slots: list[Slot] | None = None  # files chunked while read: where their chunks went
    #: A stable copy in the state dir's tmp/ (a SQLite backup, or the read a busy file's reads agreed on) that is
    #: too large to hold: :func:`chunk_copy` chunks it into the packer, then removes it.
    upload_path: str | None = None
    temp: bool = False  # upload_path is our own copy, delete it afterwards
    sqlite: bool = False
    side: tuple[Any, ...] | None = None
    how: str = SETTLED


def content_id(digests: list[bytes]) -> str:
    """The content id of a file whose chunks have these raw digests (docs/format.md §A4; the same as
    :func:`.manifest2.content_id` of its chunk refs)."""
    if len(digests) == 1:
        return digests[0].hex()
    if not digests:
        return EMPTY_SHA256
    return hashlib.sha256(b"".join(digests)).hexdigest()


def chunk_bytes(data: Bytes) -> tuple[list[Piece], str]:
    """Cut content held in memory into chunks and hash each one (each byte once); returns the chunks and the
    content id. A file of at most ``min_size`` bytes is one chunk whose digest is the SHA-256 of the file."""
    n = len(data)
    if n <= FORMAT_PARAMS.min_size:
        if not n:
            return [], EMPTY_SHA256
        d = hashlib.sha256(data).digest()
        return [(0, n, d)], d.hex()
    view = memoryview(data)
    pieces = [(off, ln, hashlib.sha256(view[off:off + ln]).digest()) for off, ln in cut_points(view)]
    return pieces, content_id([p[2] for p in pieces])


def slots_id(slots: list[Slot]) -> str:
    """The content id of a file whose chunks were placed as ``slots``."""
    return content_id([bytes.fromhex(s.sha256) for s in slots])


def same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_size == b.st_size and a.st_mtime_ns == b.st_mtime_ns and a.st_ctime_ns == b.st_ctime_ns
            and a.st_ino == b.st_ino)


def racy_ns(ctime_ns: int) -> int:
    """How long to wait until a file last changed at ``ctime_ns`` is safely in the past (0 = it already is)."""
    age = time.time_ns() - ctime_ns
    if age >= RACY_NS or age < -RACY_NS:  # old, or far in the future (clock skew: waiting won't help)
        return 0
    return RACY_NS - max(age, 0)


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


def _facts_to_keep(path: str, st0: os.stat_result, ctx: CaptureContext) -> Facts | None:
    """What the stat cache may remember of a plain read. Not the facts of a file with SQLite's header that
    SQLite could not open (copied as plain bytes this time): it may be a database caught half-written, e.g.
    being copied in, and remembering it as read would keep it "no database" until its stat changes, its
    -wal stored raw beside it meanwhile. Without facts the next checkpoint looks at it again."""
    return None if path in ctx.sqlite_unreadable_logged else stat_facts(st0)


def _open(path: str) -> tuple[int, os.stat_result] | str:
    """A read-only descriptor of the regular file ``path`` (never through a symlink) and its ``fstat``; GONE
    when it vanished, BUSY when it is no regular file any more (a symlink since the walk: the next round sees
    it as one)."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        return GONE
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return BUSY
        raise
    try:
        st0 = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if st0.st_mode & 0o170000 != S_IFREG:
        os.close(fd)
        return BUSY
    return fd, st0


def capture(path: str, ctx: CaptureContext) -> Captured | str:
    """Read ``path`` into memory so that the bytes provably belong to one version of the file, and chunk it.

    Bounded by the size seen at stat (an appended-to file would never reach EOF), re-stat'ed afterwards; a file
    that changed while being read is retried, then reported busy and left for the next round. A file of at
    least ``ctx.large`` bytes is not read: LARGE says to chunk it with :func:`capture_streamed`.
    """
    for attempt in range(READ_ATTEMPTS):
        if attempt:
            time.sleep(0.02 * attempt)
        opened = _open(path)
        if isinstance(opened, str):
            return opened
        fd, st0 = opened
        try:
            size = st0.st_size
            large = size >= ctx.large
            # a small file's first read holds its header (one read for most files); a large one's is peeked at
            data = os.pread(fd, 16, 0) if large else _read_into(fd, size, ctx)
            if data is None:
                return OUT_OF_TIME
            if data[:16] == SQLITE_MAGIC and path not in ctx.sqlite_unreadable_logged:
                # the backup API gives a consistent copy however busy the database is
                os.close(fd)
                fd = -1
                got = _capture_sqlite(path, st0, ctx)
                if got is not None:
                    return got
                continue  # not readable as a database: copy its bytes like any file
            if large:
                return LARGE
            wait = racy_ns(st0.st_ctime_ns)
            if wait:
                time.sleep(wait / 1e9)
                continue
            if _after_read_hook is not None:
                _after_read_hook(path)
            st1 = os.fstat(fd)
        finally:
            if fd >= 0:
                os.close(fd)
        if len(data) != size or not same(st0, st1):
            log.debug("%s changed while being read (attempt %d)", path, attempt + 1)
            continue
        pieces, cid = chunk_bytes(data)  # hashed only once the read is known to be one version
        return Captured(sha=cid, size=size, mode=st0.st_mode & 0o7777, mtime_ns=st0.st_mtime_ns,
                        facts=_facts_to_keep(path, st0, ctx), data=data, pieces=pieces)
    return BUSY


def _read_into(fd: int, size: int, ctx: CaptureContext) -> Bytes | None:
    """Up to ``size`` bytes of ``fd`` (fewer if it shrank), read in CHUNK steps so the cutoff is seen; None at
    the cutoff. One buffer, no joining: a 60 MiB file costs one copy out of the page cache."""
    if size <= CHUNK:
        return os.read(fd, size) if size else b""
    buf = bytearray(size)
    view = memoryview(buf)
    n = 0
    while n < size:
        if ctx.stop():
            return None
        got = os.readv(fd, [view[n:min(size, n + CHUNK)]])
        if not got:
            del view
            del buf[n:]  # shrank under us: the caller's size check sees it
            return buf
        n += got
    return buf


def capture_streamed(path: str, ctx: CaptureContext, put: PutChunk) -> Captured | str:
    """Read a large file once, cutting and hashing its chunks as they are read and handing each to ``put`` (the
    packer, which uploads new ones while reading goes on), then re-stat it; as :func:`capture` otherwise.

    A file that changed meanwhile is read again (up to READ_ATTEMPTS times), then BUSY. Its chunks already
    placed are harmless: content-addressed, only referenced by a file that really has them, and found again
    (not uploaded twice) by the next attempt."""
    for attempt in range(READ_ATTEMPTS):
        if attempt:
            time.sleep(0.02 * attempt)
        opened = _open(path)
        if isinstance(opened, str):
            return opened
        fd, st0 = opened
        try:
            size = st0.st_size
            if os.pread(fd, 16, 0) == SQLITE_MAGIC and path not in ctx.sqlite_unreadable_logged:
                os.close(fd)  # became a database since capture() looked: its backup, as there
                fd = -1
                got = _capture_sqlite(path, st0, ctx)
                if got is not None:
                    return got
                continue
            wait = racy_ns(st0.st_ctime_ns)
            if wait:
                time.sleep(wait / 1e9)
                continue
            got_all = _chunk_fd(fd, size, ctx, put)
            if got_all is None:
                return OUT_OF_TIME
            slots, n = got_all
            if _after_read_hook is not None:
                _after_read_hook(path)
            st1 = os.fstat(fd)
        finally:
            if fd >= 0:
                os.close(fd)
        if n != size or not same(st0, st1):
            log.debug("%s changed while being read (attempt %d)", path, attempt + 1)
            continue
        return Captured(sha=slots_id(slots), size=size, mode=st0.st_mode & 0o7777, mtime_ns=st0.st_mtime_ns,
                        facts=_facts_to_keep(path, st0, ctx), slots=slots)
    return BUSY


def _chunk_fd(fd: int, size: int, ctx: CaptureContext, put: PutChunk) -> tuple[list[Slot], int] | None:
    """Chunk up to ``size`` bytes of ``fd`` into ``put``: the slots and the bytes read (None at the cutoff).
    The chunker's worker has stopped reading ``fd`` when this returns."""
    slots: list[Slot] = []
    n = 0
    with contextlib.closing(chunks_pipelined(fd, limit=size)) as stream:
        for c in stream:
            if ctx.stop():
                return None
            slots.append(put(c.digest, c.data))
            n += c.length
    return slots, n


def chunk_copy(cap: Captured, ctx: CaptureContext, put: PutChunk) -> Captured | str:
    """Chunk ``cap``'s stable copy (``upload_path``) into ``put`` and remove the copy; sets ``cap.slots`` and
    its content id. OUT_OF_TIME at the cutoff."""
    path = cap.upload_path
    assert path is not None
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            got_all = _chunk_fd(fd, cap.size, ctx, put)
        finally:
            os.close(fd)
        if got_all is None:
            return OUT_OF_TIME
        slots, n = got_all
        if n != cap.size:  # our own copy; nothing else writes it
            raise OSError(errno.EIO, f"{path}: copy holds {n} bytes, expected {cap.size}")
    finally:
        if cap.temp:
            unlink_if_present(path)
        cap.upload_path, cap.temp = None, False
    cap.slots, cap.sha = slots, slots_id(slots)
    return cap


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
    opened = _open(path)
    if isinstance(opened, str):
        return opened
    fd, st0 = opened
    out_fd, temp = -1, None
    try:
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
    """``r`` as a capture; its temp copy (if any) now belongs to the capture (chunked by :func:`chunk_copy`).

    The reads of a busy file were compared by whole-file SHA-256, so the version taken is hashed a second time
    here, by chunk: the price of a file that would not hold still, paid only by such files."""
    cap = Captured(sha=r.sha, size=r.size, mode=st.st_mode & 0o7777, mtime_ns=st.st_mtime_ns, facts=facts,
                   how=how)
    if r.data is not None:
        cap.data = r.data
        cap.pieces, cap.sha = chunk_bytes(r.data)
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
        size = os.path.getsize(tmp)
        racy = racy_ns(st0.st_ctime_ns) or any(racy_ns(s[1]) for s in side if s[2])  # a sidecar written just now
        cap = Captured(sha="", size=size, mode=st0.st_mode & 0o7777, mtime_ns=st0.st_mtime_ns,
                        facts=None if racy else stat_facts(st0), sqlite=True, side=side)
        if size < ctx.large:
            with open(tmp, "rb") as f:
                cap.data = f.read()
            unlink_if_present(tmp)
            cap.pieces, cap.sha = chunk_bytes(cap.data)
        else:  # chunked from the copy by the checkpoint loop (chunk_copy): a page change costs about a chunk
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
