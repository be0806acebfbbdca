"""restore(): newest valid snapshot → fetch in parallel → verify every file → write it where no reader can see
it until it is complete and flushed (a directory tree under a temp name, or a temp file), then rename.

A manifest is input from the network: every entry is checked so nothing lands outside its area (no absolute
paths, no ``..``, no writing through a symlink, whether it is already on disk or in the same snapshot), and
every file's bytes must hash to the manifest's sha256 before they are written. A symlink is data: it is
restored verbatim whatever its target (``current -> /opt/app/releases/3``), as tar and restic do; what keeps
the restore inside its area is that nothing is ever written *through* one.
"""
from __future__ import annotations

import collections
import ctypes
import errno
import hashlib
import itertools
import logging
import mmap
import os
import shutil
import stat
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Container, Union

from ..localfile import create_private, private_dir, unlink_if_present
from ..errors import RestoreError, StoreError, StoreNotFound
from ..stores.base import Store, reads_into
from . import catalog, chunked, gcpause, helper, statcache, unrestored
from .helper import Helper
from .format import DIR, SQLITE_SIDECARS, SYMLINK, ChunkRef, Entry, Manifest, object_key, pack_key, valid_area
from .positions import EntryPositions
from .scan import TMP_PREFIX, Want

log = logging.getLogger("fractfs")

PathLike = Union[str, "os.PathLike[str]"]

#: Modes applied on restore. set-uid/set-gid bits on files are dropped: restored files are owned by whoever
#: runs the restore (often root), and a tampered manifest must not be able to mint a set-uid binary.
FILE_MODE_MASK = 0o777
#: Directories too: a hostile 0o7777 must not leave a set-gid (group inheritance) or sticky directory behind.
DIR_MODE_MASK = 0o777
#: One read of a pack's first bytes up to the last one needed, unless the files we need are a small part of
#: that; then ranged GETs of the needed runs, merged across gaps up to _RANGE_GAP, each at most _RUN_MAX long.
_RANGE_GAP = 1 << 20
_RUN_MAX = 32 << 20
#: What one read fetches at most (unless one file is larger): the writer starts on the first piece while the
#: rest is read (a 16 MiB pack took 15-35 ms to read into fresh memory, with the writer waiting for it).
_READ_PIECE = 1 << 20
_DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
#: A new file: never through a symlink, never over an existing name.
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _O_NOFOLLOW | _O_CLOEXEC
#: What became of an entry (_Writer.state): written under its final name inside a directory tree the restore
#: built and not yet renamed into place; in place under its final name.
_DIRECT = 1
_RESTORED = 2


@dataclass
class RestoreResult:
    """What a restore did. Paths are ``"area:relpath"``; refused/errors entries carry the reason."""

    snapshot_id: str | None = None
    #: every file, directory and link put in place (empty when restore() was asked not to list them)
    restored: list[str] = field(default_factory=list)
    #: how many were put in place (also when they are not listed)
    restored_count: int = 0
    skipped_existing: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    fell_back_from: list[str] = field(default_factory=list)
    bytes: int = 0
    duration: float = 0.0
    #: With ``seed_in_background``: the thread that writes the stat cache, not started yet (the caller starts
    #: it, and must), which holds the state dir's lock until the cache is written; or None.
    seeding: threading.Thread | None = field(default=None, repr=False, compare=False)


class _Refused(Exception):
    pass


class _DiskFull(Exception):
    def __init__(self, path: str, exc: BaseException):
        super().__init__(path)
        self.path = path
        self.exc = exc


def _disk_full(exc: BaseException) -> bool:
    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 8:
        if isinstance(cur, OSError) and cur.errno in _DISK_FULL:
            return True
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return False


def _short_of_space(path: str, need: int) -> bool:
    try:
        st = os.statvfs(os.path.dirname(path))
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < need + (64 << 10)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _intact(data: bytes | memoryview, e: Entry) -> bool:
    return len(data) == e.size and hashlib.sha256(data).hexdigest() == e.sha256


def _passed_second_read(label: str) -> None:
    log.warning("fractfs: restore: %s failed sha256 verification once and passed on a second read (damaged in "
                "transit, not on the store)", label)


class _ChunkedFile:
    """A chunked file being restored: its runs write into ``path`` (a private temp file beside ``dest``, or
    its own name inside a directory tree the restore built) from several threads; ``pending`` counts the runs
    not finished yet."""

    def __init__(self, e: Entry, dest: str, path: str, in_place: bool, runs: int):
        self.e = e
        self.dest = dest
        self.path = path
        self.in_place = in_place
        self.pending = runs
        self.fd = -1
        self.failed = False
        self.lock = threading.Lock()


class _Writer:
    """Places verified bytes on disk, in two phases shared by the worker threads.

    Phase 1 (``write_run`` in one thread; ``write_object`` and chunked files in parallel). A file whose
    directory this restore made (see :class:`_Planner`: such directories live under a temporary name until
    phase 2) is written straight to its name there, relative to a directory fd, with its mode and mtime, and
    its stat facts are noted for the stat cache. Any other file goes to a temp file next to its final name and
    is *staged*.
    No fsync. Phase 2 (``place_all``): one flush of the whole filesystem (syncfs), then every staged file is
    renamed into place and every directory tree the restore built is renamed to its final name. A final name
    therefore never holds incomplete bytes even after a power cut, as with a per-file fsync, but costs one
    flush instead of one per file (restoring 10 000 small files measured 3x faster), and a file in a new
    directory costs four system calls and no rename (see docs/format.md, "Restore").
    """

    def __init__(self, overwrite: bool, store: Store, plan: _Planner, entries: list[Entry]):
        self.overwrite = overwrite
        self.store = store  # for one more read after a hash mismatch
        self.plan = plan
        self.abort = threading.Event()
        self.lock = threading.Lock()
        self.staged: list[tuple[str, str, Entry]] = []  # (temp path, final path, entry)
        # What happened to each entry is kept by its position in the manifest's ``entries`` (EntryPositions
        # finds it), in flat arrays: a cold start of a million files would otherwise hold a dict entry, a
        # tuple and Python ints per file here (docs/architecture.md, "Memory of a cold start").
        self.positions = EntryPositions(entries)
        #: per entry: 0, _DIRECT or _RESTORED
        self.state = bytearray(len(entries))
        #: stat facts of what this restore put there, for the stat cache
        self.facts = statcache.FactsTable(len(entries))
        self.skipped: list[str] = []
        self.errors: list[str] = []
        self.failed: list[Entry] = []  # entries not written for a reason other than a local file in the way
        self.bytes = 0
        #: bytes of the files in state _DIRECT (written in a tree the restore built, not yet renamed)
        self.direct_bytes = 0
        self.touched_dirs: set[str] = set()
        self.run_id = plan.run_id
        self.counter = itertools.count()
        # Files are created with their final mode when the umask leaves it intact, saving an fchmod per file
        # (None: umask unknown, always fchmod).
        self.umask = _current_umask()
        self.noreplace_ok = True
        #: chunked files being written (removed when staged or discarded)
        self.chunked: set[_ChunkedFile] = set()

    def _fail(self, e: Entry, msg: str) -> None:
        log.error("fractfs: restore: %s: %s", e.label, msg)
        with self.lock:
            self.errors.append(f"{e.label}: {msg}")
            self.failed.append(e)

    def _skip(self, e: Entry) -> None:
        with self.lock:
            self.skipped.append(e.label)

    def _stage(self, tmp: str, dest: str, e: Entry) -> None:
        with self.lock:
            self.staged.append((tmp, dest, e))

    def _same_as_local(self, dest: str, e: Entry) -> bool:
        try:
            st = os.lstat(dest)
        except FileNotFoundError:
            return False
        if not stat.S_ISREG(st.st_mode) or st.st_size != e.size:
            return False
        return chunked.holds(dest, e)

    def _tmp_for(self, dest: str) -> str:
        # one random id per restore plus a counter: no entropy syscall per file
        return os.path.join(os.path.dirname(dest), f"{TMP_PREFIX}{self.run_id}-{next(self.counter)}")

    def _refetch(self, e: Entry, *, mismatch: bool = True) -> bytes | None:
        """Read a packed file's bytes once more after a hash mismatch: a bit flipped on the way (a flaky
        link, proxy or cache) is not damage on the store and must not cost the app the file. (Without
        ``mismatch``: bytes that were not kept, see write_shared.)"""
        if not e.pack:
            return None
        try:
            data = self.store.get_range(pack_key(e.pack), e.offset, e.size)
        except StoreNotFound:
            return None
        if not _intact(data, e):
            return None
        if mismatch:
            _passed_second_read(e.label)
        return data

    def _verified(self, data: bytes | memoryview | None, e: Entry, *,
                  damaged: bool = False) -> bytes | memoryview | None:
        """``data`` if it is ``e``'s content, else a second read's if that is; None (failure recorded).
        ``data`` None: the bytes were not kept (write_shared) and are read again; ``damaged``: the helper
        found them damaged."""
        if data is not None and not damaged and _intact(data, e):
            return data
        again = self._refetch(e, mismatch=damaged or data is not None)
        if again is None:
            self._fail(e, "stored bytes fail sha256 verification (damaged or tampered); not restored")
        return again

    def write_run(self, items: list[tuple[Entry, str]], buf: memoryview | None, base: int) -> None:
        """Verify and write ``items`` (their bytes are ``buf[e.offset - base:][:e.size]``; None: empty files).

        The hot loop of a cold restore, hence flat and with local names: files in a directory the restore made
        are written in place through a directory fd (open, write, futimens, fstat, close: the fstat gives the
        stat cache its facts); the rest are staged in temp files (:meth:`_write_staged`).
        """
        plan_cur = self.plan.cur
        fresh = self.plan.fresh
        umask = self.umask
        abort = self.abort
        sha256 = hashlib.sha256
        o_open, o_write, o_close, o_utime, o_fstat = os.open, os.write, os.close, os.utime, os.fstat
        done: list[tuple[Entry, str, os.stat_result]] = []
        dfd = -1
        dpath = ""
        try:
            for e, dest in items:
                if abort.is_set():
                    return
                data: bytes | memoryview | None
                if buf is None:
                    data = b""
                else:
                    start = e.offset - base
                    data = buf[start:start + e.size]
                if len(data) != e.size or sha256(data).hexdigest() != e.sha256:
                    data = self._verified(data, e)
                    if data is None:
                        continue
                parent, _, name = dest.rpartition("/")
                if parent not in fresh:
                    self._write_staged(dest, data, e)
                    continue
                mode = e.mode & FILE_MODE_MASK
                fd = -1
                try:
                    if parent != dpath:
                        if dfd >= 0:
                            o_close(dfd)
                            dfd = -1
                        dpath = ""
                        dfd = o_open(plan_cur[parent], _DIR_FLAGS)
                        dpath = parent
                    fd = o_open(name, _NEW_FILE, 0o600 if umask is None else mode, dir_fd=dfd)
                    if data:
                        n = o_write(fd, data)
                        if n < len(data):
                            _write_rest(fd, data, n)
                    if umask is None or mode & umask:
                        os.fchmod(fd, mode)
                    o_utime(fd, ns=(e.mtime_ns, e.mtime_ns))
                    st = o_fstat(fd)
                    o_close(fd)
                    fd = -1
                except BaseException as exc:
                    if fd >= 0:
                        os.close(fd)
                        _unlink_at(name, dfd)
                    if isinstance(exc, OSError) and _disk_full(exc):
                        raise _DiskFull(dest, exc) from exc
                    if isinstance(exc, OSError):
                        self._fail(e, f"cannot write {dest}: {exc.strerror or exc}")
                        continue
                    raise
                done.append((e, dest, st))
                if len(done) >= 1024:  # a stat result is ~700 bytes: never one per file of a 1M-file run
                    self._record_direct(done)
                    done = []
        finally:
            if dfd >= 0:
                o_close(dfd)
            if done:
                self._record_direct(done)

    def _record_direct(self, done: list[tuple[Entry, str, os.stat_result]]) -> None:
        self._record(done, self.facts.set_stat)

    def _record_facts(self, done: list[tuple[Entry, str, statcache.Facts]]) -> None:
        """:meth:`_record_direct` of files whose facts came as tuples (from the helper process)."""
        self._record(done, self.facts.set)

    def _record(self, done: list[tuple[Entry, str, Any]], put: Callable[[int, Any], None]) -> None:
        of = self.positions.of
        found = [(of(e), x) for e, _dest, x in done]
        nbytes = sum(e.size for e, _dest, _x in done)
        with self.lock:  # once per run, not per file
            state = self.state
            for i, x in found:
                state[i] = _DIRECT
                put(i, x)
            self.direct_bytes += nbytes

    # -- sharing small files with the helper process (see helper.py) ------------------------------------
    def write_shared(self, items: list[tuple[Entry, str]], buf: memoryview | None, base: int,
                     hp: Helper | None) -> None:
        """:meth:`write_run`, with batches of the files that go into directories the restore made handed to
        the helper process whenever it has room for one (the others, and everything when it has none, are
        written here). The helper verifies and writes them as write_run does."""
        if hp is None:
            self.write_run(items, buf, base)
            return
        fresh, cur, umask = self.plan.fresh, self.plan.cur, self.umask
        limit = hp.batch_bytes
        i = 0
        while i < len(items) and not self.abort.is_set():
            self.absorb(hp.answers(block=False))
            # a batch: up to BATCH_FILES files whose bytes lie within batch_bytes of the range (they are in
            # offset order, so that is about their total size; the helper gets that span of the range)
            lo = items[i][0].offset
            j = i
            while j < len(items) and j - i < helper.BATCH_FILES:
                e = items[j][0]
                if e.offset + e.size - lo > limit and j > i:
                    break
                lo = min(lo, e.offset)
                j += 1
            part, i = items[i:j], j
            if hp.busy():
                self.write_run(part, buf, base)
                continue
            mine: list[tuple[Entry, str]] = []
            theirs: list[helper.Item] = []
            wire: list[tuple[Any, ...]] = []
            lo, hi = -1, 0
            for e, dest in part:
                parent, _, name = dest.rpartition("/")
                if parent not in fresh:
                    mine.append((e, dest))
                    continue
                if lo < 0 or e.offset < lo:
                    lo = e.offset
                if e.offset + e.size > hi:
                    hi = e.offset + e.size
                mode = e.mode & FILE_MODE_MASK
                # The bytes are not kept: their buffer is reused once this returns (send copies what the pipe
                # does not take at once). The rare file the helper could not verify or never answered is
                # read from the store again.
                theirs.append((e, dest, b"" if buf is None else None))
                wire.append((cur[parent], name, 0o600 if umask is None else mode,
                             mode if umask is None or mode & umask else -1, e.mtime_ns, e.sha256, e.offset, e.size))
            if theirs:
                if buf is None:  # empty files
                    hp.send(theirs, wire, 0, b"")
                else:
                    hp.send(theirs, wire, lo, buf[lo - base:hi - base])
            if mine:
                self.write_run(mine, buf, base)

    def absorb(self, answered: list[tuple[list[helper.Item], list[helper.Answer]]]) -> None:
        """Take the helper's answers: files it wrote are recorded like those written here; files whose bytes
        did not verify are read once more and written here; a failed system call is a failed file (a full
        disk fails the whole restore, as here)."""
        done: list[tuple[Entry, str, statcache.Facts]] = []
        try:
            for items, answers in answered:
                for (e, dest, data), a in zip(items, answers):
                    if a is not None and len(a) == 5:
                        done.append((e, dest, tuple(a)))
                    elif a is None:
                        got = self._verified(data, e, damaged=True)
                        if got is not None:
                            self.write_run([(e, dest)], memoryview(got), e.offset)
                    else:
                        code, msg = a
                        if code in _DISK_FULL:
                            raise _DiskFull(dest, OSError(code, msg, dest))
                        self._fail(e, f"cannot write {dest}: {msg}")
        finally:
            if done:
                self._record_facts(done)

    def redo(self, items: list[helper.Item]) -> None:
        """Write here what the helper was given but never answered (it died): whatever it left of a file
        is removed first, in a directory nobody else can see yet."""
        for e, dest, data in items:
            if self.abort.is_set():
                return
            parent, _, name = dest.rpartition("/")
            unlink_if_present(os.path.join(self.plan.cur[parent], name))
            got = self._verified(data, e)
            if got is not None:
                self.write_run([(e, dest)], memoryview(got), e.offset)


    def _write_staged(self, dest: str, data: bytes | memoryview, e: Entry) -> None:
        """Write verified ``data`` to a temp file next to ``dest``, renamed into place by place_all()."""
        if self.overwrite and self._same_as_local(dest, e):
            self._skip(e)
            return
        tmp = self._tmp_for(dest)
        try:
            mode = e.mode & FILE_MODE_MASK
            fd = os.open(tmp, _NEW_FILE, 0o600 if self.umask is None else mode)
            try:
                if data:
                    n = os.write(fd, data)
                    if n < len(data):
                        _write_rest(fd, data, n)
                if self.umask is None or mode & self.umask:
                    os.fchmod(fd, mode)
                os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))
            finally:
                os.close(fd)
        except BaseException as exc:
            unlink_if_present(tmp)
            if isinstance(exc, OSError) and _disk_full(exc):
                raise _DiskFull(dest, exc) from exc
            if isinstance(exc, OSError):
                self._fail(e, f"cannot write {dest}: {exc.strerror or exc}")
                return
            raise
        self._stage(tmp, dest, e)

    def write_object(self, store: Store, dest: str, e: Entry, *, second_read: bool = False) -> None:
        if self.abort.is_set():
            return
        parent = os.path.dirname(dest)
        in_place = parent in self.plan.fresh
        if not in_place and self.overwrite and self._same_as_local(dest, e):
            self._skip(e)
            return
        # in a directory the restore made (invisible until placed) the object lands under its own name
        tmp = os.path.join(self.plan.cur[parent], os.path.basename(dest)) if in_place else self._tmp_for(dest)
        key = object_key(e.object)
        try:
            try:
                # Ask the size first: a hostile entry may point at a huge (or sparse) object, and get_file would
                # fill the disk with it before the hash could say no.
                stored = store.size(key)
                if stored is None:
                    raise StoreNotFound(key)
                if stored != e.size:
                    self._fail(e, f"object {key} holds {stored} bytes, the snapshot says {e.size}; not restored")
                    return
                # created private (and exclusive, not through a link) before get_file writes into it: the
                # stores' get_file keep the mode of a file that exists, so the content is never readable by
                # others on the way; its final mode is set below once it is verified
                os.close(create_private(tmp))
                store.get_file(key, Path(tmp))
            except StoreNotFound:
                unlink_if_present(tmp)
                self._fail(e, f"object {key} is missing from the store; not restored")
                return
            except StoreError:
                # unreachable is not damage: the whole restore fails (see restore()), because a caller that
                # went on with this file missing would checkpoint its absence as a deletion
                unlink_if_present(tmp)
                raise
            h = hashlib.sha256()
            n = 0
            fd = os.open(tmp, os.O_RDWR | _O_NOFOLLOW | _O_CLOEXEC)
            try:
                while True:
                    b = os.read(fd, 1 << 20)
                    if not b:
                        break
                    h.update(b)
                    n += len(b)
                if n != e.size or h.hexdigest() != e.sha256:
                    if n < e.size and _short_of_space(tmp, min(e.size - n, 1 << 20)):
                        # some get_file implementations ignore short writes on a full disk. Judged by the
                        # disk really being (nearly) full, not by the size the manifest claims: a tampered
                        # entry claiming petabytes must fail alone, not abort the whole restore.
                        raise OSError(errno.ENOSPC, "No space left on device", dest)
                    os.close(fd)
                    fd = -1
                    unlink_if_present(tmp)
                    if not second_read:  # as in _refetch: one more read tells transit from the store
                        self.write_object(store, dest, e, second_read=True)
                        return
                    self._fail(e, "stored bytes fail sha256 verification (damaged or tampered); not restored")
                    return
                if second_read:
                    _passed_second_read(e.label)
                os.fchmod(fd, e.mode & FILE_MODE_MASK)
                os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))
                st = os.fstat(fd)
            finally:
                if fd >= 0:
                    os.close(fd)
        except BaseException as exc:
            unlink_if_present(tmp)
            if _disk_full(exc):
                raise _DiskFull(dest, exc) from exc
            if isinstance(exc, OSError):
                self._fail(e, f"cannot write {dest}: {exc.strerror or exc}")
                return
            raise
        if in_place:
            self._record_direct([(e, dest, st)])
        else:
            self._stage(tmp, dest, e)

    # -- files stored as chunks (format v2) -------------------------------------------------------------
    def start_chunked(self, e: Entry, dest: str, spawn: Callable[[Callable[[], None]], None]) -> None:
        """First task of a chunked file: decide where its bytes go, then hand each run of chunks to the pool
        (:meth:`write_chunk_run`). The file is created by the first run that has verified bytes to write."""
        if self.abort.is_set():
            return
        parent = os.path.dirname(dest)
        in_place = parent in self.plan.fresh
        try:
            if not in_place and self.overwrite and self._same_as_local(dest, e):
                self._skip(e)
                return
        except OSError as exc:
            log.debug("fractfs: restore: %s: cannot compare with the local file (%s); restoring it", e.label, exc)
        why = chunked.bad_ref(e)
        if why is not None:
            self._fail(e, why)
            return
        # in a directory the restore made (invisible until placed) the file is written under its own name;
        # elsewhere into a private temp file beside it, renamed into place by place_all() once whole
        path = os.path.join(self.plan.cur[parent], os.path.basename(dest)) if in_place else self._tmp_for(dest)
        runs = chunked.plan_runs(e.chunks)
        cf = _ChunkedFile(e, dest, path, in_place, len(runs))
        with self.lock:
            self.chunked.add(cf)
        for run in runs:
            spawn(lambda run=run: self.write_chunk_run(cf, run))  # type: ignore[misc]

    def write_chunk_run(self, cf: _ChunkedFile, run: chunked.Run) -> None:
        """Fetch one run, verify each of its chunks and write it at its offset in ``cf``'s file; the last run
        of the file to finish closes it and stages it (or removes it, if any run failed)."""
        try:
            if self.abort.is_set() or cf.failed:
                return
            self._fetch_run(cf, run)
        except BaseException:
            cf.failed = True
            raise
        finally:
            with cf.lock:
                cf.pending -= 1
                last = cf.pending == 0
            if last:
                self._finish_chunked(cf)

    def _fetch_run(self, cf: _ChunkedFile, run: chunked.Run) -> None:
        key = pack_key(run.pack)
        try:
            buf = memoryview(self.store.get_range(key, run.start, run.length))
        except StoreNotFound as exc:
            self._fail_chunked(cf, f"cannot fetch pack {key}: {exc}; not restored")
            return
        # any other StoreError propagates: unreachable is not damage (see write_object)
        sha256 = hashlib.sha256
        for at, k, c in run.pieces:
            if cf.failed or self.abort.is_set():
                return
            lo = c.offset - run.start
            data: bytes | memoryview | None = buf[lo:lo + c.length]
            assert data is not None
            if len(data) != c.length or sha256(data).hexdigest() != c.sha256:
                data = self._refetch_chunk(cf, k, c)
                if data is None:
                    return
            self._pwrite(cf, data, at)
        if cf.fd >= 0:
            first, last = run.pieces[0], run.pieces[-1]
            _start_writeback(cf.fd, first.file_offset, last.file_offset + last.ref.length - first.file_offset)

    def _refetch_chunk(self, cf: _ChunkedFile, k: int, c: ChunkRef) -> bytes | None:
        """A chunk's bytes from a second read after a mismatch (see _refetch), else None (failure recorded)."""
        key = pack_key(c.pack)
        try:
            data = self.store.get_range(key, c.offset, c.length)
        except StoreNotFound as exc:
            self._fail_chunked(cf, f"cannot fetch pack {key}: {exc}; not restored")
            return None
        where = f"chunk {k + 1} of {len(cf.e.chunks)} (bytes {c.offset}..{c.offset + c.length} of {key})"
        if len(data) != c.length:
            self._fail_chunked(cf, f"{where} is not there: the pack holds {c.offset + len(data)} bytes or less "
                                   "(truncated, or the snapshot is damaged); not restored")
            return None
        if hashlib.sha256(data).hexdigest() != c.sha256:
            self._fail_chunked(cf, f"{where} fails sha256 verification (damaged or tampered); not restored")
            return None
        _passed_second_read(f"{cf.e.label} {where}")
        return data

    def _fail_chunked(self, cf: _ChunkedFile, msg: str) -> None:
        with cf.lock:
            first = not cf.failed
            cf.failed = True
        if first:  # one message per file, whichever run found the damage first
            self._fail(cf.e, msg)

    def _pwrite(self, cf: _ChunkedFile, data: bytes | memoryview, at: int) -> None:
        try:
            with cf.lock:
                if cf.fd < 0:
                    if cf.failed:
                        return
                    cf.fd = os.open(cf.path, _NEW_FILE, 0o600)  # private until it is whole and verified
                fd = cf.fd
            view = memoryview(data)
            while view:
                n = os.pwrite(fd, view, at)
                view = view[n:]
                at += n
        except OSError as exc:
            if _disk_full(exc):
                cf.failed = True
                raise _DiskFull(cf.dest, exc) from exc
            self._fail_chunked(cf, f"cannot write {cf.dest}: {exc.strerror or exc}")

    def _finish_chunked(self, cf: _ChunkedFile) -> None:
        """After the file's last run: set its mode and mtime and stage it, or remove what was written."""
        e = cf.e
        ok = not cf.failed and not self.abort.is_set() and cf.fd >= 0
        st = None
        try:
            if ok:
                os.fchmod(cf.fd, e.mode & FILE_MODE_MASK)
                os.utime(cf.fd, ns=(e.mtime_ns, e.mtime_ns))
                st = os.fstat(cf.fd)
        except OSError as exc:
            ok = False
            if _disk_full(exc):
                self._discard_chunked(cf)
                raise _DiskFull(cf.dest, exc) from exc
            self._fail_chunked(cf, f"cannot write {cf.dest}: {exc.strerror or exc}")
        if not ok:
            self._discard_chunked(cf)
            return
        fd, cf.fd = cf.fd, -1
        try:
            os.close(fd)
        except OSError as exc:  # a network filesystem may report a failed write only here
            self._discard_chunked(cf)
            if _disk_full(exc):
                raise _DiskFull(cf.dest, exc) from exc
            self._fail_chunked(cf, f"cannot write {cf.dest}: {exc.strerror or exc}")
            return
        with self.lock:
            self.chunked.discard(cf)
        if cf.in_place:
            assert st is not None
            self._record_direct([(e, cf.dest, st)])
        else:
            self._stage(cf.path, cf.dest, e)

    def _discard_chunked(self, cf: _ChunkedFile) -> None:
        """Close and remove what was written of a chunked file (nothing of it is left under any name)."""
        with cf.lock:
            fd, cf.fd = cf.fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass
        unlink_if_present(cf.path)
        with self.lock:
            self.chunked.discard(cf)

    def discard_staged(self) -> None:
        """Abort: remove every temp file and every directory tree the restore built; nothing was placed yet."""
        with self.lock:
            staged, self.staged = self.staged, []
            unfinished = list(self.chunked)
        for tmp, _dest, _e in staged:
            unlink_if_present(tmp)
        for cf in unfinished:  # chunked files whose runs were cancelled
            self._discard_chunked(cf)
        self.plan.discard_trees()

    def place_all(self, roots: list[str], transfers: int) -> None:
        """Flush, then rename every staged file and every built directory tree into place."""
        with self.lock:
            staged, self.staged = sorted(self.staged, key=lambda x: x[1]), []
        trees = self.plan.trees
        if not staged and not trees:
            return
        try:
            _flush_filesystems(roots)
        except OSError as exc:
            for tmp, _dest, _e in staged:
                unlink_if_present(tmp)
            self.plan.discard_trees()
            raise RestoreError(f"could not flush restored files to disk under {', '.join(roots)}: {exc}"
                               ) from exc
        if staged:
            self._place_staged(staged, transfers)
        if trees:
            self._place_trees(trees)

    def _place_staged(self, staged: list[tuple[str, str, Entry]], transfers: int) -> None:
        def place(item: tuple[str, str, Entry]) -> bool:
            """Move one staged file into place; True when it was (skips and failures are recorded here)."""
            tmp, dest, e = item
            try:
                if not self.overwrite and not e.sqlite:
                    if self._rename_new(tmp, dest):
                        return True
                    unlink_if_present(tmp)  # appeared since we planned (rare: restore runs before the app)
                    self._skip(e)
                    return False
                if not self.overwrite and os.path.lexists(dest):
                    # appeared since we planned: never clobber it, nor remove its sidecars below
                    unlink_if_present(tmp)
                    self._skip(e)
                    return False
                if e.sqlite:
                    # a stale -wal next to a newly placed database would be replayed into it
                    for sfx in SQLITE_SIDECARS:
                        unlink_if_present(dest + sfx)
                os.replace(tmp, dest)
            except OSError as exc:
                unlink_if_present(tmp)
                self._fail(e, f"cannot move into place: {exc.strerror or exc}")
                return False
            return True

        def place_run(items: list[tuple[str, str, Entry]]) -> None:
            placed = [(dest, e) for tmp, dest, e in items if place((tmp, dest, e))]
            found: list[tuple[int, os.stat_result | None]] = []
            for dest, e in placed:
                # after the rename, which moves the ctime the stat cache compares
                try:
                    st: os.stat_result | None = os.lstat(dest)
                except OSError:
                    st = None
                found.append((self.positions.of(e), st))
            with self.lock:  # once per run, not per file: 16 threads queueing on it showed in profiles
                for i, st in found:
                    self.state[i] = _RESTORED
                    if st is not None:
                        self.facts.set_stat(i, st)
                self.bytes += sum(e.size for _dest, e in placed)
                self.touched_dirs.update(os.path.dirname(dest) for dest, _e in placed)

        # Runs of neighbouring files per task: one pool task per file cost more in futures and thread
        # hand-offs than the rename itself, and neighbours share a directory, whose lock the kernel takes.
        runs = [staged[i:i + _PLACE_RUN] for i in range(0, len(staged), _PLACE_RUN)]
        if len(runs) == 1:
            place_run(runs[0])
            return
        with ThreadPoolExecutor(max_workers=max(1, min(transfers, len(runs))),
                                thread_name_prefix="fractfs-place") as pool:
            list(pool.map(place_run, runs))

    def _place_trees(self, trees: list[tuple[str, str]]) -> None:
        """Rename each directory tree the restore built (under a temp name) to its final name: one rename
        puts all of its files in place at once. Something that appeared at that name meanwhile is never
        clobbered: the tree is then merged into it file by file, without replacing anything."""
        #: final path of each tree's top -> None (placed), "" (to merge) or why it could not be renamed
        outcome: dict[str, str | None] = {}
        tmp_of = {final: tmp for tmp, final in trees}
        for tmp, final in trees:
            try:
                placed = self._rename_new(tmp, final)
            except OSError as exc:
                placed = False
                why = exc.strerror or str(exc)
            else:
                why = ""
            if placed:
                outcome[final] = None
                self.touched_dirs.add(os.path.dirname(final))
                continue
            outcome[final] = why
            self.plan.forget_modes_under(final)  # not ours to chmod (merged), or not there (failed)
            if why:
                _remove_tree(tmp)
        # Then the files written in the trees. Every tree in place (a cold start): all of them are, in one pass
        # in C over their states, not one step of Python each.
        if all(got is None for got in outcome.values()):
            self.state[:] = self.state.replace(bytes([_DIRECT]), bytes([_RESTORED]))
            self.bytes += self.direct_bytes
            return
        # Else each is found by its state (no list of them is kept while writing). A file's final path is its
        # area's root and its path (as _Planner.add made it), so its tree is found from its directory, once
        # per directory.
        entries = self.positions.entries
        roots = self.plan.targets
        top_of: dict[tuple[str, str], str] = {}  # (area, parent relpath) -> its tree
        to_merge: dict[str, list[tuple[Entry, str]]] = {}
        bytes_placed = 0
        state = self.state
        i = -1
        while (i := state.find(_DIRECT, i + 1)) >= 0:
            e = entries[i]
            prel = e.path.rpartition("/")[0]
            top = top_of.get((e.area, prel))
            if top is None:
                parent = f"{roots[e.area]}/{prel}" if prel else roots[e.area]
                top = top_of[(e.area, prel)] = self.plan.tree_of(parent, outcome.keys())
            got = outcome.get(top, "")
            state[i] = 0
            if got is None:
                state[i] = _RESTORED
                bytes_placed += e.size
            elif got:
                self.facts.clear(i)
                self._fail(e, f"cannot move into place: {got}")
            else:
                to_merge.setdefault(top, []).append((e, f"{roots[e.area]}/{e.path}"))
        self.bytes += bytes_placed
        for final, merging in to_merge.items():
            self._merge_tree(tmp_of[final], final, merging)

    def _merge_tree(self, tmp: str, final: str, entries: list[tuple[Entry, str]]) -> None:
        """``final`` appeared while the restore built ``tmp``: move what the tree holds into it one name at a
        time, never replacing anything (an existing name keeps its content and its entry counts as skipped)."""
        log.warning("fractfs: restore: %s appeared during the restore; merging the restored files into it", final)
        moved: set[str] = set()
        for dirpath, dirs, files in os.walk(tmp):
            rel = os.path.relpath(dirpath, tmp)
            target = final if rel == "." else os.path.join(final, rel)
            try:
                st = os.lstat(target)
                ok = stat.S_ISDIR(st.st_mode)
            except FileNotFoundError:
                try:
                    os.mkdir(target)
                    ok = True
                except OSError:
                    ok = False
            if not ok:
                dirs[:] = []  # a non-directory in the way: what is below stays unrestored
                continue
            for name in files:
                dest = os.path.join(target, name)
                try:
                    if self._rename_new(os.path.join(dirpath, name), dest):
                        moved.add(dest)
                except OSError:
                    pass
        _remove_tree(tmp)
        for e, dest in entries:
            i = self.positions.of(e)
            self.facts.clear(i)  # renamed one by one: their ctime moved
            if dest in moved:
                self.state[i] = _RESTORED
                self.bytes += e.size
            elif os.path.lexists(dest):
                self.skipped.append(e.label)
            else:
                self._fail(e, "its directory was replaced by something else during the restore; not restored")
        self.touched_dirs.add(final)

    def restored_labels(self) -> list[str]:
        """``"area:path"`` of every entry put in place, in the manifest's order."""
        entries, state = self.positions.entries, self.state
        out = []
        i = -1
        while (i := state.find(_RESTORED, i + 1)) >= 0:
            e = entries[i]
            out.append(f"{e.area}:{e.path}")
        return out

    def _rename_new(self, tmp: str, dest: str) -> bool:
        """Rename ``tmp`` to ``dest`` unless something exists there (False). One renameat2(RENAME_NOREPLACE)
        where the kernel and filesystem have it: atomic, and no lstat per file; else a check, then rename."""
        fn = _renameat2() if self.noreplace_ok else None
        if fn is not None:
            if fn(_AT_FDCWD, os.fsencode(tmp), _AT_FDCWD, os.fsencode(dest), _RENAME_NOREPLACE) == 0:
                return True
            err = ctypes.get_errno()
            if err == errno.EEXIST:
                return False
            if err not in _NOREPLACE_UNSUPPORTED:
                raise OSError(err, os.strerror(err), dest)
            self.noreplace_ok = False  # this filesystem (FUSE, NFS ...) cannot: check, then rename
        if os.path.lexists(dest):
            return False
        os.replace(tmp, dest)
        return True


def _write_rest(fd: int, data: bytes | memoryview, n: int) -> None:
    """Finish a short write (a signal, a pipe-like file system): the rest of ``data`` from byte ``n``."""
    view = memoryview(data)[n:]
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _unlink_at(name: str, dfd: int) -> None:
    try:
        os.unlink(name, dir_fd=dfd)
    except FileNotFoundError:
        pass


def _remove_tree(path: str) -> None:
    """Remove a directory tree the restore built (it is ours: no symlink in it is followed)."""
    shutil.rmtree(path, ignore_errors=True)


def _flush_filesystems(roots: list[str]) -> None:
    """Make everything written under ``roots`` durable: syncfs(2) on each where it exists, else sync(2)."""
    syncfs = _syncfs()
    if syncfs is None:
        os.sync()
        return
    for root in sorted(set(roots)):
        fd = os.open(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _O_CLOEXEC)
        try:
            if syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), root)
        finally:
            os.close(fd)


#: Staged files renamed into place per pool task.
_PLACE_RUN = 64
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_NOREPLACE_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}
_RENAMEAT2: list[Callable[..., int] | None] = []


def _renameat2() -> Callable[..., int] | None:
    """glibc's renameat2 (Linux >= 3.15, glibc >= 2.28), or None."""
    if not _RENAMEAT2:
        fn: Callable[..., int] | None = None
        if os.uname().sysname == "Linux":
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fn = getattr(libc, "renameat2", None)
                if fn is not None:
                    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
                    fn.restype = ctypes.c_int
            except (OSError, AttributeError):
                fn = None
        _RENAMEAT2.append(fn)
    return _RENAMEAT2[0]


def _current_umask() -> int | None:
    """The process umask, read without changing it (os.umask can only set it, racing other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


_SYNCFS: list[Callable[[int], int] | None] = []
_SYNC_FILE_RANGE: list[Callable[..., int] | None] = []
_SYNC_FILE_RANGE_WRITE = 2


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``length`` bytes at ``offset`` of ``fd`` to disk, without waiting
    (sync_file_range(2), SYNC_FILE_RANGE_WRITE). The flush before the rename (syncfs) still makes them durable;
    this only lets the disk work while the rest of a large file is being fetched, so that flush finds
    little left to do. A no-op where the call does not exist."""
    if not _SYNC_FILE_RANGE:
        fn: Callable[..., int] | None = None
        try:
            fn = getattr(ctypes.CDLL(None, use_errno=True), "sync_file_range", None)
            if fn is not None:
                fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
                fn.restype = ctypes.c_int
        except (OSError, AttributeError):  # pragma: no cover - non-Linux
            fn = None
        _SYNC_FILE_RANGE.append(fn)
    fn = _SYNC_FILE_RANGE[0]
    if fn is not None:
        fn(fd, offset, length, _SYNC_FILE_RANGE_WRITE)  # failure only means the final flush does the work


def _syncfs() -> Callable[[int], int] | None:
    if not _SYNCFS:
        fn: Callable[[int], int] | None = None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fn = getattr(libc, "syncfs", None)
        except (OSError, AttributeError):  # pragma: no cover - non-Linux
            fn = None
        _SYNCFS.append(fn)
    return _SYNCFS[0]


def _pack_ranges(items: list[tuple[Entry, str]], piece: int) -> list[tuple[int, int, list[tuple[Entry, str]]]]:
    """The ranged reads ``(start, length, files)`` that fetch what ``items`` (files of one pack) need.

    One read from the pack's first byte up to the last one needed, unless the files needed are a small part
    of that; then reads of the runs of needed files, merged across gaps up to _RANGE_GAP. Never "the whole
    pack": a hostile entry may point into a huge sparse pack (and entry sizes are bounded by MAX_PACKED_FILE).
    Either way a read is cut at file boundaries into pieces of at most ``piece`` bytes and never longer than
    _RUN_MAX (unless one file alone is): what a restore holds per read is bounded whatever the manifest claims.
    """
    offsets = [e.offset for e, _ in items]
    if offsets != sorted(offsets):  # a pack's files come in its order when fractfs wrote both
        items = sorted(items, key=_pack_offset)
    need = extent = 0
    for e, _ in items:
        need += e.size
        if e.offset + e.size > extent:
            extent = e.offset + e.size
    whole = extent <= 4 * _RANGE_GAP or (need * 4 >= extent and extent <= _RUN_MAX)
    gap = extent if whole else _RANGE_GAP
    limit = min(piece, _RUN_MAX)
    out: list[tuple[int, int, list[tuple[Entry, str]]]] = []
    cut: list[tuple[Entry, str]] = []
    start = end = 0 if whole else items[0][0].offset
    for it in items:
        off = it[0].offset
        stop = off + it[0].size
        if cut and (off > end + gap or stop - start > limit):
            out.append((start, end - start, cut))
            cut, start, end = [], off, off
        cut.append(it)  # in place: copying the list per file made a run of n files cost n**2
        if stop > end:
            end = stop
    out.append((start, end - start, cut))
    return out


def _pack_offset(item: tuple[Entry, str]) -> int:
    return item[0].offset


def restore(
    store: Store,
    areas: dict[str, Path],
    *,
    snapshot_id: str | None = None,
    overwrite: bool = False,
    dry_run: bool = False,
    transfers: int = 16,
    want: Want | None = None,
    state_dir: PathLike | None = None,
    manifest: Manifest | None = None,
    seed_in_background: bool = False,
    list_restored: bool = True,
) -> RestoreResult:
    """Restore a snapshot (default: the newest valid one) into ``areas`` (area name → target directory).

    By default only files missing locally are written; ``overwrite=True`` also replaces files whose content
    differs. Entries for areas not in ``areas``, or rejected by ``want(area, relpath, is_dir)``, are left
    alone. Damaged or hostile entries are reported, never written. Disk full raises RestoreError (no partial
    file is left). ``state_dir``, when it is the one later checkpoints use, is seeded so that the first
    checkpoint after the restore does not re-read everything that was just written. ``manifest``: the snapshot
    to restore when the caller has already loaded it (verified, e.g. by ``catalog.newest_valid``), so it is not
    fetched and decoded a second time; the caller then reports any fallback itself. ``seed_in_background``:
    return once the files are in place, and leave writing the stat cache to a thread (``RestoreResult.seeding``,
    for the caller to start) that holds the state dir's lock meanwhile, so a checkpoint that starts waits for
    it (init() does this, once its own threads are started: the cache only serves the first checkpoint, and
    writing it took a sixth of a cold start). ``list_restored=False``: leave ``RestoreResult.restored`` empty
    and give only ``restored_count`` (init() needs the number alone: a million labels are ~70 MB and a sort).
    """
    with gcpause.paused():  # a cold start makes a few objects per file and keeps them all: see gcpause
        return _restore(store, areas, snapshot_id=snapshot_id, overwrite=overwrite, dry_run=dry_run,
                        transfers=transfers, want=want, state_dir=state_dir, manifest=manifest,
                        seed_in_background=seed_in_background, list_restored=list_restored)


def _restore(store: Store, areas: dict[str, Path], *, snapshot_id: str | None, overwrite: bool, dry_run: bool,
             transfers: int, want: Want | None, state_dir: PathLike | None, manifest: Manifest | None,
             seed_in_background: bool, list_restored: bool) -> RestoreResult:
    t0 = time.monotonic()
    res = RestoreResult()
    m: Manifest | None
    if manifest is not None:
        m = manifest
    elif snapshot_id:
        m = catalog.load(store, catalog.resolve_id(catalog.list_names(store), snapshot_id))
    else:
        m, res.fell_back_from = catalog.newest_valid(store)
    if m is None:
        if res.fell_back_from:
            res.errors.append("no valid snapshot on the store: every one is damaged")
            log.error("fractfs: restore: no valid snapshot (damaged: %s)", ", ".join(res.fell_back_from))
        else:
            log.info("fractfs: restore: the store holds no snapshot yet")
        res.duration = time.monotonic() - t0
        return res
    res.snapshot_id = m.id
    for msg in m.bad:
        log.warning("fractfs: restore: refused manifest entry: %s", msg)
        res.refused.append(msg)

    targets = {a: os.path.abspath(os.fspath(p)) for a, p in areas.items() if valid_area(a)}
    # The helper process starts before planning, so that its interpreter starts up on the other core while
    # this one plans. (Started later, alongside the fetching threads, it delayed them: each new thread then
    # waited up to a scheduler tick, 4 ms, behind it.)
    hp = _helper_for(m.entries, transfers) if not dry_run else None
    plan = _Planner(targets, want, overwrite, dry_run)
    try:
        for e in m.entries:
            plan.add(e)
    except BaseException:
        plan.discard_trees()
        if hp is not None:
            hp.stop()
        raise
    plan.planned()
    res.refused.extend(plan.refused)
    res.errors.extend(plan.errors)
    res.skipped_existing.extend(plan.skipped)
    if dry_run:
        assert hp is None
        res.restored = sorted([e.label for e, _ in plan.files] + [e.label for e, _ in plan.links])
        res.restored_count = len(res.restored)
        res.duration = time.monotonic() - t0
        return res

    try:
        w = _Writer(overwrite, store, plan, m.entries)
    except BaseException:
        if hp is not None:
            hp.stop()
        raise
    try:
        _fetch_and_write(store, plan.files, w, max(1, transfers), hp)
    except _DiskFull as df:
        w.discard_staged()
        msg = (f"disk full while restoring {df.path}: {getattr(df.exc, 'strerror', None) or df.exc}; "
               "nothing of this restore was put in place (all temporary files removed). "
               "Free space (or give the node a bigger disk) and restore again")
        log.error("fractfs: restore: %s", msg)
        raise RestoreError(msg) from df.exc
    except StoreError as exc:
        w.discard_staged()
        msg = (f"the store failed while restoring snapshot {m.id}: {exc}; nothing of this restore was put in "
               "place (all temporary files removed). Restore again when the store is reachable")
        log.error("fractfs: restore: %s", msg)
        raise RestoreError(msg) from exc
    except BaseException:
        w.discard_staged()
        raise
    # Every file is written: the (entry, final path) of each goes now, before placing (about 210 bytes a
    # file: a fifth of a GiB at 1 000 000 files). What became of each entry is in w.state.
    plan.files.clear()
    try:
        w.place_all(sorted(plan.roots_used), max(1, transfers))
    except BaseException:
        w.discard_staged()
        raise
    res.skipped_existing.extend(w.skipped)
    res.errors.extend(w.errors)
    res.bytes = w.bytes

    try:
        _place_links(plan, w, res)
        plan.apply_dir_modes()
        # what the next checkpoint's walk records of a directory: its st_mode alone (see scan.py)
        for d, mode in plan.dir_facts.items():
            w.facts.set(w.positions.of(d), (mode, 0, 0, 0, 0))
    except OSError as exc:
        if _disk_full(exc):
            raise RestoreError(f"disk full while restoring {getattr(exc, 'filename', '')}: {exc}") from exc
        raise
    # the renames, new directories and links: one more flush makes them durable too
    if w.touched_dirs or plan.made_dirs:
        try:
            _flush_filesystems(sorted(plan.roots_used))
        except OSError as exc:
            raise RestoreError(f"could not flush restored files to disk: {exc}") from exc

    if state_dir is not None:
        if seed_in_background:
            res.seeding = _seed_later(Path(os.fspath(state_dir)), store, m, w.facts)
        else:
            _seed_state(Path(os.fspath(state_dir)), store, m, w.facts)
        try:
            unrestored.record(Path(os.fspath(state_dir)), m.id or "", plan.failed + w.failed)
        except OSError as exc:
            log.warning("fractfs: restore: could not note in %s which files were not restored (%s); the next "
                        "checkpoint records them as deleted: %s", state_dir, exc,
                        ", ".join(e.label for e in (plan.failed + w.failed)[:10]))
    # Labels last, after the stat cache is seeded (the restore's peak): a string per restored file.
    res.restored_count = w.state.count(_RESTORED)
    if list_restored:
        res.restored = w.restored_labels()
        res.restored.sort()
    res.skipped_existing.sort()
    res.duration = time.monotonic() - t0
    log.info("fractfs: restored snapshot %s: %d written, %d already present, %d refused, %d errors (%.2fs)",
             m.name.short if m.name else m.id, res.restored_count, len(res.skipped_existing),
             len(res.refused), len(res.errors), res.duration)
    return res


class _Planner:
    """Checks every entry against the manifest and the disk, and creates the directories files need.

    A directory missing on disk is created by the restore, and the first one missing on a path (its parent
    already existed) is created under a temp name (``.fractfs-tmp-<run>-d<n>`` beside its final name) and
    renamed to its final name only after every file below it is written and flushed (``_Writer.place_all``).
    Nothing but this restore can have put anything in such a tree, so its files are written straight to their
    names, with no lstat to learn they are missing and no temp file and rename each; and since the tree
    appears all at once, a crash never leaves a final name holding a file that is not complete.

    Directories are keyed by their final absolute path: ``cur`` says where each one is now (inside a tree
    still under its temp name, or the path itself), ``fresh`` which ones this restore made.
    """

    def __init__(self, targets: dict[str, str], want: Want | None, overwrite: bool, dry_run: bool):
        self.targets = targets
        self.want = want
        self.overwrite = overwrite
        self.dry_run = dry_run
        self.refused: list[str] = []
        self.errors: list[str] = []
        self.failed: list[Entry] = []
        self.skipped: list[str] = []
        self.files: list[tuple[Entry, str]] = []  # (entry, final path)
        self.links: list[tuple[Entry, str]] = []
        self.dir_modes: list[tuple[str, int]] = []  # directories we created for a dir entry (final paths)
        #: entry -> st_mode of those directories once their mode is applied, for the stat cache
        self.dir_facts: dict[Entry, int] = {}
        self.made_dirs = False
        #: final path of a directory -> where it is now (differs inside a tree still under its temp name)
        self.cur: dict[str, str] = {}
        #: directories this restore created (final paths): nothing can be in them but what it puts there
        self.fresh: set[str] = set()
        #: (temp path, final path) of each tree this restore built, renamed into place by place_all()
        self.trees: list[tuple[str, str]] = []
        self.run_id = uuid.uuid4().hex[:12]
        self._tree_count = itertools.count()
        self._parents: dict[tuple[str, str], str] = {}  # (area, parent relpath) -> parent's final path
        #: area -> paths of the files and symlinks planned so far (a path used as a directory too is refused)
        self._nondirs: dict[str, set[str]] = {}
        self._wanted_dirs: dict[tuple[str, str], bool] = {}
        self.roots_used: set[str] = set()

    def planned(self) -> None:
        """Every entry is added: drop what only served to check them against each other (a path per file)."""
        self._nondirs.clear()
        self._wanted_dirs.clear()

    def _refuse(self, e: Entry, why: str) -> None:
        log.warning("fractfs: restore: refused %s: %s", e.label, why)
        self.refused.append(f"{e.label}: {why}")

    def _wanted(self, e: Entry) -> bool:
        if self.want is None:
            return True
        parts = e.path.split("/")
        for i in range(1, len(parts)):
            key = (e.area, "/".join(parts[:i]))
            ok = self._wanted_dirs.get(key)
            if ok is None:
                ok = self._wanted_dirs[key] = bool(self.want(e.area, key[1], True))
            if not ok:
                return False
        return bool(self.want(e.area, e.path, e.type == DIR))

    def _root(self, root: str) -> None:
        if root not in self.cur:
            if not self.dry_run:
                os.makedirs(root, exist_ok=True)
            self.cur[root] = root  # files directly in an area root always go through temp file + rename
        self.roots_used.add(root)

    def _parent(self, area: str, root: str, prel: str) -> str:
        """The final path of directory ``prel`` of ``area``, made if missing (see the class docstring);
        refuses a component that is a symlink or not a directory, on disk or in the same snapshot."""
        nondirs = self._nondirs.get(area, set())
        cur = root
        rel = ""
        for part in prel.split("/"):
            rel = f"{rel}/{part}" if rel else part
            path = f"{cur}/{part}"
            if path in self.cur:
                cur = path
                continue
            if rel in nondirs:
                raise _Refused(f"parent {rel!r} is a file or symlink in the same snapshot")
            if not self._make_dir(path, cur):
                st = os.lstat(path)
                if stat.S_ISLNK(st.st_mode):
                    raise _Refused(f"parent {rel!r} is a symlink on disk; not writing through it")
                if not stat.S_ISDIR(st.st_mode):
                    raise _Refused(f"parent {rel!r} exists and is not a directory")
                self.cur[path] = path
            cur = path
        return cur

    def _make_dir(self, path: str, parent: str) -> bool:
        """Create directory ``path`` (final path) in ``parent`` if nothing is there; False if something is
        (the caller looks at what). In a fresh parent nothing can be, so it is not even looked at."""
        if parent in self.fresh:
            now = self.cur[parent] + path[len(parent):]
            if not self.dry_run:
                os.mkdir(now)
        else:
            if os.path.lexists(path):
                return False
            now = os.path.join(parent, f"{TMP_PREFIX}{self.run_id}-d{next(self._tree_count)}")
            if not self.dry_run:
                os.mkdir(now)
                self.trees.append((now, path))
        self.cur[path] = now
        self.fresh.add(path)
        self.made_dirs = True
        return True

    def add(self, e: Entry) -> None:
        root = self.targets.get(e.area)
        if root is None:
            log.debug("restore: %s: area not restored here", e.label)
            return
        if self.want is not None and not self._wanted(e):
            return
        prel, _, name = e.path.rpartition("/")
        key = (e.area, prel)
        parent = self._parents.get(key)
        if parent is None:
            self._root(root)
            try:
                parent = self._parent(e.area, root, prel) if prel else root
            except _Refused as exc:
                self._refuse(e, str(exc))
                return
            except OSError as exc:
                if _disk_full(exc):
                    raise RestoreError(f"disk full while creating directories for {e.label} under {root}"
                                       ) from exc
                self.errors.append(f"{e.label}: cannot create its directory: {exc}")
                self.failed.append(e)
                log.error("fractfs: restore: %s: cannot create its directory: %s", e.label, exc)
                return
            self._parents[key] = parent
        dest = f"{parent}/{name}"
        if e.type == DIR:
            self._add_dir(e, dest, parent)
            return
        if dest in self.cur:  # a directory is there: on disk, or made for other entries of this snapshot
            if self.overwrite:
                self.errors.append(f"{e.label}: a directory is in the way; left as is")
            else:
                self.skipped.append(e.label)
            return
        nondirs = self._nondirs.get(e.area)
        if nondirs is None:
            nondirs = self._nondirs[e.area] = set()
        nondirs.add(e.path)
        if parent not in self.fresh:
            try:
                st = os.lstat(dest)
            except FileNotFoundError:
                pass
            else:
                if not self.overwrite:
                    self.skipped.append(e.label)
                    return
                if stat.S_ISDIR(st.st_mode):
                    self.errors.append(f"{e.label}: a directory is in the way; left as is")
                    return
                if e.type == SYMLINK and stat.S_ISLNK(st.st_mode) and os.readlink(dest) == e.target:
                    self.skipped.append(e.label)
                    return
        if e.type == SYMLINK:
            self.links.append((e, dest))
        else:
            self.files.append((e, dest))

    def _add_dir(self, e: Entry, dest: str, parent: str) -> None:
        if dest in self.cur:
            if dest in self.fresh:  # made for entries below it that came first: give it its mode
                self._dir_mode(e, dest)
            return
        if e.path in self._nondirs.get(e.area, ()):
            self.errors.append(f"{e.label}: exists locally and is not a directory; left as is")
            return
        try:
            made = self._make_dir(dest, parent)
            if not made:
                if not stat.S_ISDIR(os.lstat(dest).st_mode):
                    self.errors.append(f"{e.label}: exists locally and is not a directory; left as is")
                    return
                self.cur[dest] = dest
                return
        except OSError as exc:
            if _disk_full(exc):
                raise RestoreError(f"disk full while creating directory {e.label} under {parent}") from exc
            self.errors.append(f"{e.label}: cannot create directory: {exc}")
            log.error("fractfs: restore: %s: cannot create directory: %s", e.label, exc)
            return
        self._dir_mode(e, dest)

    def _dir_mode(self, e: Entry, dest: str) -> None:
        mode = e.mode & DIR_MODE_MASK
        self.dir_modes.append((dest, mode))
        if mode == e.mode:  # else the next checkpoint records another mode: let it look
            self.dir_facts[e] = stat.S_IFDIR | mode

    def tree_of(self, d: str, tops: Container[str]) -> str:
        """The tree (final path of its top) that directory ``d``, the final path of a fresh directory, is in."""
        while d not in tops:
            up = os.path.dirname(d)
            if up == d:
                return ""
            d = up
        return d

    def discard_trees(self) -> None:
        """Abort: remove every tree this restore built (none is in place yet)."""
        trees, self.trees = self.trees, []
        for tmp, _final in trees:
            _remove_tree(tmp)

    def forget_modes_under(self, top: str) -> None:
        """Leave the directories at and below ``top`` as they are (a tree that could not be renamed there)."""
        below = top.rstrip("/") + "/"
        self.dir_modes = [(p, m) for p, m in self.dir_modes if p != top and not p.startswith(below)]

    def apply_dir_modes(self) -> None:
        # deepest first, after all writes: a read-only directory must not block filling it
        for path, mode in sorted(self.dir_modes, key=lambda x: -x[0].count("/")):
            os.chmod(path, mode)


class _Tasks:
    """A thread pool whose tasks may add more tasks (a fetched pack fans out into write batches), plus a
    small pool of its own for the runs of chunked files (made when the first one is spawned).

    Runs get their own few threads so that what they hold is bounded by those threads, not by the main
    pool: at most ``run_workers`` runs in flight, and malloc keeps freed run buffers per thread (arena), so
    sixteen threads taking turns at 16 MiB runs kept several hundred MiB resident where four keep ~100.
    """

    def __init__(self, workers: int, run_workers: int = 1):
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fractfs-restore")
        self.run_workers = run_workers
        self.run_pool: ThreadPoolExecutor | None = None
        self.futures: list[Future[Any]] = []
        self.lock = threading.Lock()

    def spawn(self, fn: Callable[[], None]) -> None:
        with self.lock:
            self.futures.append(self.pool.submit(fn))

    def spawn_run(self, fn: Callable[[], None]) -> None:
        """A run of a chunked file (see the class docstring)."""
        with self.lock:
            if self.run_pool is None:
                self.run_pool = ThreadPoolExecutor(max_workers=self.run_workers, thread_name_prefix="fractfs-runs")
            self.futures.append(self.run_pool.submit(fn))

    def _shutdown(self, *, wait: bool, cancel: bool = False) -> None:
        for pool in (self.pool, self.run_pool):
            if pool is not None:
                pool.shutdown(wait=wait, cancel_futures=cancel)

    def run(self, w: _Writer) -> None:
        """Wait for every task, including those spawned meanwhile; the first failure cancels the rest."""
        i = 0
        try:
            while True:
                with self.lock:
                    if i >= len(self.futures):
                        break
                    fut = self.futures[i]
                i += 1
                # a task spawns its children before it finishes, so once we have waited for every
                # earlier future, the list cannot grow behind our back
                exc = fut.exception()
                if exc is not None:
                    raise _as_disk_full(exc)
        except BaseException:
            self.abandon(w)
            raise
        finally:
            self._shutdown(wait=True)

    def abandon(self, w: _Writer) -> None:
        """Something failed: stop every task and wait for those already running."""
        w.abort.set()
        self._shutdown(wait=False, cancel=True)
        with self.lock:
            pending = list(self.futures)
        # Writers that are running clean up their own temp files: wait for them. Not for the ones the
        # shutdown cancelled: wait() never returns for a future cancelled before a worker picked it up.
        wait([f for f in pending if not f.cancel()])
        self._shutdown(wait=True)


def _as_disk_full(exc: BaseException) -> BaseException:
    """``exc``, or a _DiskFull for it when it says the disk is full (the restore then fails as a whole)."""
    if isinstance(exc, _DiskFull) or not _disk_full(exc):
        return exc
    return _DiskFull(getattr(exc, "filename", None) or "?", exc)


#: Bytes of fetched pack ranges waiting for the writer at most (a fetch blocks while more are): what a restore
#: holds in memory is bounded whatever the number of packs or ``transfers``.
_FETCHED_BYTES_IN_FLIGHT = 128 << 20
#: Bytes that runs of chunked files may hold at once (each run is at most chunked.RUN_MAX, one per thread of
#: the run pool, see _Tasks): a 1 GiB file is never in memory, whatever ``transfers`` is.
_CHUNK_BYTES_IN_FLIGHT = 64 << 20


class _Inbox:
    """Fetched pack ranges on their way from the fetching threads to the one thread that writes them, and the
    buffers they are read into.

    A store that reads into a caller's buffer (:func:`~fractfs.stores.base.reads_into`, a mounted Volume) is
    read in pieces of _READ_PIECE into at most ``buffers`` buffers that ``take`` hands out and ``release``
    takes back, so their pages are faulted in once, not once per range. Reading 89 MiB into fresh memory cost
    70-85 ms of page faults on tmpfs, into reused buffers 17-21 ms, and a thread started while the others
    faulted waited for them.

    Any other store's reads return fresh bytes, so a fetch first ``reserve``s the bytes it is about to read,
    which blocks while ``limit`` bytes are already fetched or being fetched and not yet written (unless none
    are: a range larger than the limit still passes alone). So fetching never runs far ahead of writing, and
    what the fetching threads hold is bounded too (reserving after the read let sixteen threads hold 16 MiB
    each: 330 MiB more peak RSS at 100 000 files).

    Either way a fetch then ``put``s what it read. ``get`` returns None once every expected fetch has called
    ``done`` and nothing is left; ``close`` (the writer failed) releases blocked fetchers, whose ``take`` says
    None and ``reserve`` False.
    """

    def __init__(self, fetches: int, limit: int = _FETCHED_BYTES_IN_FLIGHT, buffers: int = 0):
        lock = threading.Lock()
        # Two conditions on one lock: the writer waits for ranges, fetchers for room. A buffer given back
        # wakes one fetcher, not all sixteen (each woken thread takes the GIL from the writer).
        self.arrived = threading.Condition(lock)
        self.room = threading.Condition(lock)
        self.ready: collections.deque[tuple[memoryview, int, list[tuple[Entry, str]]]] = collections.deque()
        self.held = 0
        self.limit = limit
        self.open_fetches = fetches
        self.closed = False
        self.free: list[mmap.mmap] = []
        self.buffers = buffers  # not yet made

    def take(self) -> memoryview | None:
        """A buffer of _READ_PIECE bytes, waiting while all are in use; None once closed."""
        with self.room:
            while not self.free and not self.buffers and not self.closed:
                self.room.wait()
            if self.closed:
                return None
            if self.free:
                return memoryview(self.free.pop())
            self.buffers -= 1
        # anonymous memory: its pages are faulted in by the first read, with the GIL released
        return memoryview(mmap.mmap(-1, _READ_PIECE))

    def reserve(self, nbytes: int) -> bool:
        with self.room:
            while self.held and self.held + nbytes > self.limit and not self.closed:
                self.room.wait()
            if self.closed:
                return False
            self.held += nbytes
            return True

    def put(self, buf: memoryview, base: int, items: list[tuple[Entry, str]], reserved: int) -> None:
        with self.arrived:
            if not isinstance(buf.obj, mmap.mmap):
                self.held += len(buf) - reserved  # a store may return less than asked (the writer says why)
            if not self.closed:
                self.ready.append((buf, base, items))
                self.arrived.notify()

    def done(self) -> None:
        with self.arrived:
            self.open_fetches -= 1
            self.arrived.notify()

    def get(self) -> tuple[memoryview, int, list[tuple[Entry, str]]] | None:
        with self.arrived:
            while not self.ready and self.open_fetches > 0:
                self.arrived.wait()
            return self.ready.popleft() if self.ready else None

    def release(self, buf: memoryview | int) -> None:
        """The writer is done with ``buf`` (or a fetch could not use its reservation of that many bytes)."""
        with self.room:
            if isinstance(buf, int):
                self.held -= buf
            elif isinstance(buf.obj, mmap.mmap):
                if not self.closed:
                    self.free.append(buf.obj)
                    self.room.notify()
                return
            else:
                self.held -= len(buf)
            self.room.notify_all()  # bytes freed: every fetch that now fits may go

    def close(self) -> None:
        with self.room:
            self.closed = True
            self.ready.clear()
            self.free.clear()
            self.room.notify_all()
            self.arrived.notify_all()


def _helper_for(entries: list[Entry], transfers: int) -> Helper | None:
    """A helper process for a restore of these entries, when it has enough small files to share (see
    :func:`_fetch_and_write`)."""
    if transfers <= 1:
        return None
    small = sum(1 for e in entries if e.type != DIR and e.type != SYMLINK and not e.chunks and not e.object)
    return Helper.start() if small >= helper.min_files() else None


def _fetch_and_write(store: Store, files: list[tuple[Entry, str]], w: _Writer, transfers: int,
                     hp: Helper | None) -> None:
    """Fetch every file's bytes (packs whole or in ranged runs, chunked files run by run, objects one by one)
    and write them.

    Small files (empty, or packed) are all written by the calling thread, while up to ``transfers`` threads
    fetch their packs. Writing a small file is a few microseconds of Python around five system calls, and each
    call releases the GIL: with several writing threads every release handed the GIL to another one through a
    futex, so 16 writers made 690 000 futex calls for 20 000 files and the restore took twice as long as with
    one writer (2.0 s against 1.1 s of wall time, and three times the system time; see the cold_start
    benchmark). The fetching threads only wait on the store, and hand whole ranges over (no hand-off per file).
    From :func:`.helper.min_files` small files on, that thread shares the writing with a helper process
    (:mod:`.helper`, ``hp``, started by the caller and stopped here), which puts the second core to work. Big files (chunked, or objects) are written by the
    threads that fetch them: a few large writes each.
    """
    by_pack: dict[str, list[tuple[Entry, str]]] = {}
    empty: list[tuple[Entry, str]] = []
    tasks = _Tasks(transfers, max(1, min(transfers, _CHUNK_BYTES_IN_FLIGHT // chunked.RUN_MAX)))
    for e, dest in files:
        if e.chunks:
            # first: a big file's runs then queue behind the small files' packs and overlap with them
            tasks.spawn(lambda e=e, dest=dest: w.start_chunked(e, dest, tasks.spawn_run))  # type: ignore[misc]
        elif e.pack:
            by_pack.setdefault(e.pack, []).append((e, dest))
        elif e.object:
            tasks.spawn(lambda e=e, dest=dest: w.write_object(store, dest, e))  # type: ignore[misc]
        else:
            empty.append((e, dest))
    # Every pack is a ranged read of what its entries need (_pack_ranges), never a batch of whole objects: a
    # pack named by a hostile entry can be any size, and get_many would hold all of it in memory.
    read_into = reads_into(store)
    piece = _READ_PIECE if read_into is not None else _RUN_MAX
    ranges = collections.deque((pid, start, length, run) for pid, items in sorted(by_pack.items())
                               for start, length, run in _pack_ranges(items, piece))
    fetchers = min(transfers, len(ranges))
    # a buffer per fetching thread and two for the writer (one being written, one waiting)
    inbox = _Inbox(len(ranges), buffers=fetchers + 2 if read_into is not None else 0)
    go = threading.Event()

    def fetch(pid: str, start: int, length: int, items: list[tuple[Entry, str]]) -> bool:
        """Take a buffer or reserve room in the inbox, read one range, hand it to the writer; False when the
        restore stops."""
        if w.abort.is_set():
            return False
        if read_into is not None and length <= _READ_PIECE:
            into = inbox.take()
            if into is None:
                return False
            try:
                n = read_into(pack_key(pid), start, into[:length])
            except BaseException:
                inbox.release(into)
                raise
            inbox.put(into[:n], start, items, 0)
            return True
        if not inbox.reserve(length):
            return False
        try:
            buf = store.get_range(pack_key(pid), start, length)
        except BaseException:
            inbox.release(length)
            raise
        inbox.put(memoryview(buf), start, items, length)
        return True

    def fetcher() -> None:
        """Fetch ranges until none is left. Every range is accounted for (inbox.done), also after a failure,
        so that the writer never waits for a range nobody will fetch."""
        failed: BaseException | None = None
        go.wait()
        while True:
            try:
                pid, start, length, items = ranges.popleft()
            except IndexError:
                break
            try:
                if failed is None:
                    fetch(pid, start, length, items)
            except StoreNotFound as exc:
                for e, _ in items:
                    w._fail(e, f"cannot fetch pack {pack_key(pid)}: {exc}; not restored")
            except BaseException as exc:
                # any other StoreError fails the restore (tasks.run raises it): unreachable is not damage
                # (see write_object). The writer stops at its next range.
                failed = exc
                w.abort.set()
            finally:
                inbox.done()
        if failed is not None:
            raise failed

    try:
        # The fetching threads wait for ``go`` until all are started: a thread started while others read
        # into fresh memory waited for their page faults (2-20 ms each, 30-60 ms for six 16 MiB packs on
        # tmpfs); started first, all of them took about 1 ms.
        try:
            for _ in range(fetchers):
                tasks.spawn(fetcher)
        finally:
            go.set()
        if empty:  # while the first packs are fetched
            w.write_shared(empty, None, 0, hp)
        while not w.abort.is_set():
            got = inbox.get()
            if got is None:
                break
            buf, base, items = got
            try:
                w.write_shared(items, buf, base, hp)
            finally:
                inbox.release(buf)
        if hp is not None:
            answered, left = hp.finish()
            w.absorb(answered)
            w.redo(left)
    except BaseException as exc:
        inbox.close()
        tasks.abandon(w)
        err = _as_disk_full(exc)
        if err is exc:
            raise
        raise err from exc
    finally:
        if hp is not None:
            hp.stop()  # before the caller may discard the directories it writes in
    tasks.run(w)


def _place_links(plan: _Planner, w: _Writer, res: RestoreResult) -> None:
    for e, dest in plan.links:
        try:
            if plan.overwrite:
                tmp = os.path.join(os.path.dirname(dest), f"{TMP_PREFIX}{uuid.uuid4().hex[:16]}")
                os.symlink(e.target, tmp)
                try:
                    os.replace(tmp, dest)
                except BaseException:
                    unlink_if_present(tmp)
                    raise
            else:
                os.symlink(e.target, dest)  # fails if anything appeared there: never clobbers
        except FileExistsError:
            res.skipped_existing.append(e.label)
            continue
        except OSError as exc:
            if _disk_full(exc):
                raise
            res.errors.append(f"{e.label}: cannot create symlink: {exc}")
            w.failed.append(e)
            log.error("fractfs: restore: %s: cannot create symlink: %s", e.label, exc)
            continue
        if os.utime in os.supports_follow_symlinks:
            try:
                os.utime(dest, ns=(e.mtime_ns, e.mtime_ns), follow_symlinks=False)
            except OSError:
                pass
        w.touched_dirs.add(os.path.dirname(dest))
        i = w.positions.of(e)
        w.state[i] = _RESTORED  # verbatim, wherever it points: nothing is written through it
        try:
            st = os.lstat(dest)
        except OSError:
            continue
        if st.st_mtime_ns == e.mtime_ns:  # else (no lutimes here) the next checkpoint records the new mtime
            w.facts.set_stat(i, st)


def _seed_state(sdir: Path, store: Store, m: Manifest, facts: statcache.FactsTable, *,
                locked: bool = False) -> None:
    """Tell the stat cache what is now on disk, so the next checkpoint need not re-read restored files.

    Every manifest entry is listed (the cache must describe the whole snapshot it claims to match), but only
    files and links this restore wrote get stat facts, taken right after writing them (an fstat of the open
    file, or an lstat after the rename); everything else is re-examined by the next checkpoint. The manifest's
    stored size goes in too: with it the next checkpoint knows the cache describes the store's newest snapshot
    and compares with the cache alone, without fetching and decoding the manifest again. ``locked``: the
    caller holds the state dir's lock.

    Never fails the restore: the cache is only a shortcut for the next checkpoint, which re-reads the files
    without it (e.g. when the node-local state directory is full).
    """
    try:
        size: int | None = None
        if m.name is not None:
            try:
                size = store.size(m.name.key)
            except StoreError as exc:
                log.debug("fractfs: restore: size of %s unknown (%s)", m.name.key, exc)
        statcache.seed(sdir, m, None, facts=facts, snapshot_size=size, locked=locked)
    except OSError as exc:
        log.warning("fractfs: restore: could not record the restored files in %s (%s); the next "
                    "checkpoint reads them again", sdir, exc)


def _seed_later(sdir: Path, store: Store, m: Manifest, facts: statcache.FactsTable) -> threading.Thread | None:
    """_seed_state on a thread of its own (returned unstarted), under the state dir's lock taken here: a
    checkpoint (of this process or another one) that starts meanwhile waits for the cache instead of finding
    none and re-reading every file. The files' facts were taken when they were written, so an app that
    changes one meanwhile is seen by that checkpoint all the same."""
    lock = statcache.StateLock(sdir)
    try:
        private_dir(sdir)
        lock.__enter__()
    except OSError as exc:
        log.warning("fractfs: restore: cannot lock %s (%s); the next checkpoint reads the restored files again",
                    sdir, exc)
        return None

    def run() -> None:
        try:
            with gcpause.paused():
                _seed_state(sdir, store, m, facts, locked=True)
        except BaseException:  # noqa: BLE001 - a thread's last resort: say what went wrong, keep the app up
            log.exception("fractfs: restore: writing the stat cache failed; the next checkpoint reads the "
                          "restored files again")
        finally:
            lock.__exit__()

    # Not started here: the caller starts it once its own start-up system calls are done (a thread busy in
    # Python slows a thread making many system calls, which gives up the GIL at each one). Not a daemon: an
    # interpreter that exits right after init() still finishes the cache (a fraction of a second) rather than
    # leave the next start to re-read every file.
    return threading.Thread(target=run, name="fractfs-seed")
