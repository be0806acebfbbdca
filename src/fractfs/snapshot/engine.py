"""checkpoint(): walk the areas, find what changed, upload new content, then commit a manifest.

Order of writes: packs and objects first, the manifest last, the local stat cache after that. A crash anywhere
leaves the previous manifest as the checkpoint and at worst some unreferenced blobs (removed by prune). Which
blobs exist is only ever learned from a verified manifest (or from the stat cache written after committing
one), never from listing the store: a blob torn by a crash is simply written again.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import posixpath
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

from ..localfile import hash_file, unlink_if_present
from ..errors import AlreadyExists, FractfsError, StoreError
from ..stores.base import Store
from . import catalog, scan, statcache, unrestored
from . import sqlite as _sqlite
from .format import (
    DIR,
    FILE,
    MAX_SEQ,
    SQLITE_MAGIC,
    SQLITE_SIDECARS,
    SYMLINK,
    Entry,
    Manifest,
    SnapName,
    encode_manifest,
    object_key,
    pack_key,
    parse_snapshot_id,
    valid_area,
)
from .scan import S_IFDIR, S_IFLNK, S_IFREG, Rec, Want
from .statcache import CacheHeader, CacheRow, StateLock, stat_facts
from .xfer import Uploader, check_stored, store_blob

log = logging.getLogger("fractfs")

MiB = 1 << 20
#: Files at least this big are stored as their own object (streamed), smaller ones go into packs.
LARGE_FILE = 8 * MiB
#: A file whose ctime is this close to "now" may still be written within the same coarse kernel clock tick
#: without its timestamps changing, so a read of it cannot be proven untorn yet. We wait it out.
RACY_NS = 30_000_000
READ_ATTEMPTS = 3
SQLITE_TIMEOUT = 5.0
_CHUNK = MiB
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(
    os, "O_CLOEXEC", 0)

#: Tests set this to change a file between our read and our re-stat (called with the path).
_after_read_hook: Callable[[str], None] | None = None

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class CheckpointResult:
    """What one checkpoint did. Paths are ``"area:relpath"``.

    ``files``/``bytes`` describe the checkpointed state (the new snapshot, or the unchanged current one when
    nothing changed and ``snapshot_id`` is None); ``uploaded_bytes`` is what was actually sent to the store.
    """

    snapshot_id: str | None = None
    #: Files that are new in the snapshot or hold other content than in the one before it, whether their bytes
    #: were uploaded now or were already stored (identical content is stored once). Deletions are in
    #: ``deleted``; a change of mtime or mode alone, directories and symlinks are not listed.
    stored: list[str] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    deleted: list[str] = field(default_factory=list)
    skipped_busy: list[str] = field(default_factory=list)
    duration: float = 0.0
    #: Changed files left out because ``deadline`` was near (their previous version, if any, is kept).
    missed_deadline: list[str] = field(default_factory=list)
    uploaded_bytes: int = 0
    parent: str | None = None
    #: Entries a restore could not write, kept from the previous snapshot (see :mod:`.unrestored`).
    kept_unrestored: list[str] = field(default_factory=list)


# -- reading one file consistently -------------------------------------------------------------------------

_BUSY = "busy"
_GONE = "gone"


@dataclass
class _Captured:
    sha: str
    size: int
    mode: int
    mtime_ns: int
    facts: tuple[int, ...] | None  # what the stat cache will remember; None = re-read next time
    data: bytes | None = None  # small files: the bytes
    upload_path: str | None = None  # large files: what to stream to the store
    temp: bool = False  # upload_path is our own copy, delete it afterwards
    sqlite: bool = False
    side: tuple[Any, ...] | None = None


_facts = stat_facts


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_size == b.st_size and a.st_mtime_ns == b.st_mtime_ns and a.st_ctime_ns == b.st_ctime_ns
            and a.st_ino == b.st_ino)


def _racy_ns(ctime_ns: int) -> int:
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


class _Ctx:
    """Per-checkpoint settings the readers need."""

    def __init__(self, tmpdir: Path, large: int, deadline: float | None, content_hash: bool):
        self.tmpdir = tmpdir
        self.large = large
        self.deadline = deadline
        self.content_hash = content_hash
        self.sqlite_unreadable_logged: set[str] = set()

    def time_left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()


def _capture(path: str, ctx: _Ctx) -> _Captured | str:
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
            return _GONE
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # became a symlink since the walk: next round sees it as one
                return _BUSY
            raise
        try:
            st0 = os.fstat(fd)
            if st0.st_mode & 0o170000 != S_IFREG:
                return _BUSY
            size = st0.st_size
            first = _read_exact(fd, min(size, _CHUNK))
            if first[:16] == SQLITE_MAGIC and path not in ctx.sqlite_unreadable_logged:
                # the backup API gives a consistent copy however busy the database is
                os.close(fd)
                fd = -1
                got = _capture_sqlite(path, st0, ctx)
                if got is not None:
                    return got
                continue  # not readable as a database: copy its bytes like any file
            wait = _racy_ns(st0.st_ctime_ns)
            if wait:
                time.sleep(wait / 1e9)
                continue
            h = hashlib.sha256(first)
            n = len(first)
            small = size < ctx.large
            parts = [first]
            while n < size:
                b = os.read(fd, min(_CHUNK, size - n))
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
        if n != size or not _same(st0, st1):
            log.debug("%s changed while being read (attempt %d)", path, attempt + 1)
            continue
        cap = _Captured(sha=h.hexdigest(), size=size, mode=st0.st_mode & 0o7777, mtime_ns=st0.st_mtime_ns,
                        facts=_facts(st0))
        if small:
            cap.data = b"".join(parts)
        else:
            cap.upload_path = path
        return cap
    return _BUSY


def _capture_sqlite(path: str, st0: os.stat_result, ctx: _Ctx) -> _Captured | str | None:
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
        return _BUSY
    except _sqlite.SqliteUnreadable as exc:
        unlink_if_present(tmp)
        log.warning("fractfs: %s looks like SQLite but cannot be opened as one (%s); copying it as plain bytes",
                    path, exc)
        ctx.sqlite_unreadable_logged.add(path)
        return None
    try:
        sha, size = hash_file(tmp)
        racy = _racy_ns(st0.st_ctime_ns) or any(_racy_ns(s[3]) for s in side if s[2])
        cap = _Captured(sha=sha, size=size, mode=st0.st_mode & 0o7777, mtime_ns=st0.st_mtime_ns,
                        facts=None if racy else _facts(st0), sqlite=True, side=side)
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


class _Readers:
    """Captures the changed files a little ahead of the checkpoint loop, on a few threads.

    Reading and hashing release the GIL, so on a 2-vCPU node a couple of readers take in new data about
    twice as fast as one. Results are still handed out in the loop's order, so packing stays deterministic.
    The lookahead is bounded in files and in bytes held (large files are streamed later, not held).
    """

    def __init__(self, jobs: list[tuple[str, int]], ctx: _Ctx, workers: int, max_files: int = 64,
                 max_bytes: int = 64 * MiB) -> None:
        self.jobs = jobs  # (path, size at the walk)
        self.ctx = ctx
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fractfs-read")
        self.futures: dict[int, Future[_Captured | str]] = {}
        self.next = 0
        self.held = 0

    def _held(self, i: int) -> int:
        size = self.jobs[i][1]
        return size if size < self.ctx.large else 0

    def _fill(self, first: int) -> None:
        while self.next < len(self.jobs) and self.next - first < self.max_files and (
                self.next == first or self.held + self._held(self.next) <= self.max_bytes):
            self.futures[self.next] = self.pool.submit(_capture, self.jobs[self.next][0], self.ctx)
            self.held += self._held(self.next)
            self.next += 1

    def get(self, i: int) -> _Captured | str:
        """What ``_capture`` returns (or raises) for job ``i``; jobs are taken in increasing order."""
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
                if isinstance(got, _Captured) and got.temp and got.upload_path:
                    unlink_if_present(got.upload_path)
        self.futures.clear()


#: Threads reading and hashing changed files (see _Readers). More than the cores would only add GIL traffic.
READERS = 2


# -- packing -------------------------------------------------------------------------------------------------

class _Pack:
    """A pack being filled. Its id (the sha256 of its bytes) is known once sealed."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.id = ""

    def add(self, data: bytes) -> int:
        off = self.size
        self.parts.append(data)
        self.size += len(data)
        return off

    def store(self, store: Store) -> None:
        data = b"".join(self.parts)
        self.parts = []
        self.id = hashlib.sha256(data).hexdigest()
        store_blob(store, pack_key(self.id), data)


@dataclass
class _NewLoc:
    pack: _Pack | None = None
    offset: int = 0
    object: str = ""
    #: For streamed large files: resolves to True when the upload finished and the source was unchanged.
    future: Any = None


# -- the checkpoint ------------------------------------------------------------------------------------------

def _row_to_entry(area: str, rel: str, row: CacheRow) -> Entry:
    return row.entry(area, rel)


def _entry_row(e: Entry, facts: tuple[int, ...] | None, side: tuple[Any, ...] | None) -> CacheRow:
    return CacheRow.of(e, facts, side)


def _norm_areas(areas: dict[str, Path]) -> dict[str, Path]:
    out = {}
    for name, p in areas.items():
        if not valid_area(name):
            raise FractfsError(f"area name {name!r} is not valid (letters, digits, '_', '-', '.'; max 64)")
        out[name] = Path(os.path.abspath(os.fspath(p)))
    return out


def _exclusions(areas: dict[str, Path], extra: list[Path]) -> frozenset[str]:
    """Directory paths (as the walk spells them) never to descend into: the state dir, and an area nested
    inside another (its own walk covers it)."""
    out: set[str] = set()
    candidates = [Path(os.path.abspath(p)) for p in extra] + list(areas.values())
    for top in areas.values():
        real_top = os.path.realpath(top)
        for c in candidates:
            if c == top:
                continue
            for form in {os.fspath(c), os.path.realpath(c)}:
                for base in {os.fspath(top).rstrip("/"), real_top.rstrip("/")}:
                    if form.startswith(base + "/"):
                        out.add(os.fspath(top).rstrip("/") + form[len(base):])
    return frozenset(out)


#: Kept for `fractfs prune` (cli.py) until it imports statcache.StateLock itself.
_StateLock = StateLock


def checkpoint(
    store: Store,
    areas: dict[str, Path],
    want: Want | None,
    *,
    state_dir: PathLike,
    content_hash: bool = False,
    node_id: str = "",
    transfers: int = 16,
    keep: int = 10,
    pack_size: int = 16 * MiB,
    deadline: float | None = None,
    large_file: int = LARGE_FILE,
) -> CheckpointResult:
    """Take a snapshot of ``areas`` (name → directory) into ``store`` if anything changed.

    ``want(area, relpath, is_dir)`` selects entries (False on a directory skips its subtree; None = all).
    ``state_dir`` is node-local and holds the stat cache. ``deadline`` is a ``time.monotonic()`` value: when it
    is set, changed files are stored newest-modified first and those that would not fit are left out (listed
    in ``missed_deadline``, their previous version kept). After a new snapshot only the newest ``keep``
    manifests are kept; unreferenced blobs are removed by :func:`prune`.
    """
    t0 = time.monotonic()
    if keep < 1:
        raise FractfsError(f"keep={keep}: keep at least 1 snapshot")
    areas = _norm_areas(areas)
    sdir = Path(os.path.abspath(os.fspath(state_dir)))
    sdir.mkdir(parents=True, exist_ok=True)
    pick: Want = want if want is not None else (lambda _a, _r, _d: True)
    with StateLock(sdir):
        return _checkpoint_locked(store, areas, pick, sdir, content_hash, node_id, max(1, transfers), keep,
                                  max(pack_size, 1), deadline, large_file, t0)


def _checkpoint_locked(store: Store, areas: dict[str, Path], want: Want, sdir: Path, content_hash: bool,
                       node_id: str, transfers: int, keep: int, pack_size: int, deadline: float | None,
                       large_file: int, t0: float) -> CheckpointResult:
    tmpdir = sdir / "tmp"
    tmpdir.mkdir(exist_ok=True)
    for leftover in tmpdir.iterdir():  # copies from a checkpoint that crashed
        unlink_if_present(leftover)
    hdr, payload_at = statcache.read_header(sdir)
    sized = catalog.list_sized(store)
    names = sorted(sized)
    newest = names[-1] if names else None
    walked = scan.walk(areas, want, _exclusions(areas, [sdir]))
    _remove_stale_temps(walked.temps)

    # "synced": the store's newest manifest is the one this cache was written after committing, and still
    # has the size we wrote (a truncated or emptied manifest is caught here for the price of the listing;
    # other damage to a committed manifest is what verify() is for).
    synced = (hdr is not None and hdr.snapshot == (newest.id if newest else None)
              and (newest is None or sized[newest] == hdr.snapshot_size))
    if (synced and not content_hash and hdr is not None and hdr.digest is not None
            and scan.walk_digest(areas, walked, scan.fresh_side(areas, hdr.sqlite)) == hdr.digest):
        log.debug("fractfs: checkpoint: nothing changed (%.3fs)", time.monotonic() - t0)
        return CheckpointResult(files=hdr.files, bytes=hdr.bytes, duration=time.monotonic() - t0,
                                parent=hdr.snapshot)

    # -- something may have changed: what do we compare against? ------------------------------------------
    rows: dict[str, dict[str, CacheRow]] = {}
    if hdr is not None:
        loaded = statcache.read_rows(sdir, hdr, payload_at)
        if loaded is None:
            synced = False  # unreadable: compare with the store's newest snapshot instead
        else:
            rows = loaded
    base_id: str | None
    base_name: SnapName | None
    if synced:
        base_id = hdr.snapshot if hdr is not None else None
        base_name = newest
        base = {(a, r): _row_to_entry(a, r, row) for a, ar in rows.items() for r, row in ar.items()}
    else:
        m, _damaged = catalog.newest_valid(store, names)
        base_id = m.id if m is not None else None
        base_name = m.name if m is not None else None
        base = {(e.area, e.path): e for e in m.entries} if m is not None else {}
        if m is not None:
            log.info("fractfs: checkpoint: local state is not the store's newest snapshot; comparing with %s",
                     m.name.short if m.name else m.id)
    # content we may point at without uploading: only what the base snapshot references
    dedup: dict[str, Entry] = {}
    for e in base.values():
        if e.type == FILE and (e.pack or e.object) and e.sha256 not in dedup:
            dedup[e.sha256] = e

    new: dict[tuple[str, str], Entry] = {}
    new_rows: dict[tuple[str, str], CacheRow] = {}
    carried: set[tuple[str, str]] = set()  # kept from base without looking: busy, unreadable, out of time
    dirty: list[tuple[str, str, Rec]] = []
    result = CheckpointResult(parent=base_id)
    digest_ok = True

    def carry(key: tuple[str, str]) -> None:
        e = base.get(key)
        if e is not None:
            new[key] = e
            new_rows[key] = _entry_row(e, None, None)
            carried.add(key)

    for area in sorted(areas):
        top = os.fspath(areas[area])
        arows = rows.get(area, {})
        recs = walked.records.get(area, [])
        files = {r[0]: r for r in recs if r[1] & 0o170000 == S_IFREG}
        # SQLite: which files are databases whose sidecars must not be recorded?
        sqlite_dbs: set[str] = set()
        for rel in files:
            for suffix in SQLITE_SIDECARS:
                if rel.endswith(suffix):
                    db = rel[: -len(suffix)]
                    if db in files and db not in sqlite_dbs and _is_sqlite(top, db, files[db], arows.get(db)):
                        sqlite_dbs.add(db)
        for rec in recs:
            rel, mode = rec[0], rec[1]
            key = (area, rel)
            fmt = mode & 0o170000
            row = arows.get(rel)
            if fmt == S_IFDIR:
                e = Entry(area, rel, DIR, mode=mode & 0o7777)
                new[key] = e
                new_rows[key] = _entry_row(e, rec[1:], None)
                continue
            if fmt == S_IFLNK:
                if row is not None and row.type == SYMLINK and row.facts == rec[1:]:
                    target = row.target
                else:
                    try:
                        target = os.readlink(os.path.join(top, rel))
                    except FileNotFoundError:
                        continue
                    except OSError as exc:
                        log.warning("fractfs: cannot read symlink %s (%s); keeping its previous state",
                                    os.path.join(top, rel), exc)
                        carry(key)
                        digest_ok = False
                        continue
                e = Entry(area, rel, SYMLINK, mtime_ns=rec[3], target=target)
                new[key] = e
                new_rows[key] = _entry_row(e, rec[1:], None)
                continue
            # a regular file
            if rel.endswith(SQLITE_SIDECARS):
                sfx = next(s for s in SQLITE_SIDECARS if rel.endswith(s))
                if rel[: -len(sfx)] in sqlite_dbs:
                    continue
            if not content_hash and row is not None and row.type == FILE and row.facts == rec[1:]:
                side = None
                if row.sqlite:
                    side = scan.sidecar_facts(os.path.join(top, rel))
                if not row.sqlite or tuple(row.side or ()) == side:
                    e = base[key] if synced else _row_to_entry(area, rel, row)
                    if not synced:
                        where = dedup.get(e.sha256)
                        if where is None and e.size:
                            dirty.append((area, rel, rec))
                            continue
                        e = _relocate(e, where)
                    new[key] = e
                    new_rows[key] = row if synced else _entry_row(e, rec[1:], side)
                    continue
            dirty.append((area, rel, rec))
        for prefix in walked.trouble.get(area, []):
            digest_ok = False
            subtree = prefix == "" or prefix.endswith("/")
            for (a, r) in list(base):
                if a == area and (a, r) not in new and (r == prefix or (subtree and r.startswith(prefix))):
                    carry((a, r))

    # -- read and upload what changed ----------------------------------------------------------------------
    if deadline is not None:
        dirty.sort(key=lambda d: -d[2][3])  # most recently modified first: likeliest to matter on restart
    else:
        dirty.sort(key=lambda d: (d[0], d[1]))
    ctx = _Ctx(tmpdir, large_file, deadline, content_hash)
    up = Uploader(store, transfers)
    pending: dict[str, _NewLoc] = {}  # sha256 → where this run put it
    new_locs: dict[tuple[str, str], tuple[_Captured, _NewLoc]] = {}
    pack = _Pack()
    uploaded = 0
    reserve = 0.5 + 4e-6 * (len(new) + len(dirty))  # time kept back for writing the manifest

    def seal() -> None:
        nonlocal pack, uploaded
        if not pack.parts:
            return
        sealed, pack = pack, _Pack()
        uploaded += sealed.size
        # joined, hashed and stored on the upload pool: on a big checkpoint, hashing every pack a second
        # time in this thread kept the readers waiting for a third of the run. Its id is read after wait().
        up.submit(lambda: sealed.store(store), sealed.size)

    # With a deadline every file's budget is checked right before it is read, so read one at a time there.
    readers = None if deadline is not None or len(dirty) < 2 else _Readers(
        [(os.path.join(os.fspath(areas[a]), r), rec[2]) for a, r, rec in dirty], ctx, READERS)
    try:
        for i, (area, rel, rec) in enumerate(dirty):
            key = (area, rel)
            label = f"{area}:{rel}"
            if deadline is not None:
                rate = up.rate() or 20.0 * MiB
                budget = ctx.time_left() - reserve - (up.pending_bytes + pack.size) / rate
                if budget < rec[2] / rate + 0.002:
                    result.missed_deadline.append(label)
                    carry(key)
                    digest_ok = False
                    continue
            path = os.path.join(os.fspath(areas[area]), rel)
            try:
                got = _capture(path, ctx) if readers is None else readers.get(i)
            except OSError as exc:
                log.warning("fractfs: cannot read %s (%s); keeping its previous state", path, exc)
                result.skipped_busy.append(label)
                carry(key)
                digest_ok = False
                continue
            if got == _GONE:
                digest_ok = False
                continue
            if isinstance(got, str):
                log.info("fractfs: %s kept changing while being read; left for the next checkpoint", path)
                result.skipped_busy.append(label)
                carry(key)
                digest_ok = False
                continue
            cap = got
            if cap.facts is None or cap.facts != rec[1:]:
                digest_ok = False  # stat moved since the walk (or too fresh to trust): look again next time
            entry = Entry(area, rel, FILE, mode=cap.mode, size=cap.size, mtime_ns=cap.mtime_ns, sha256=cap.sha,
                          sqlite=cap.sqlite)
            prev = base.get(key)
            known = prev if (prev is not None and prev.type == FILE and prev.sha256 == cap.sha
                             and (prev.pack or prev.object or not prev.size)) else dedup.get(cap.sha)
            if known is not None or cap.size == 0:
                if cap.temp and cap.upload_path:
                    unlink_if_present(cap.upload_path)
                new[key] = _relocate(entry, known)
                new_rows[key] = _entry_row(new[key], cap.facts, cap.side)
                continue
            loc = pending.get(cap.sha)
            if loc is None:
                if cap.data is not None:
                    loc = _NewLoc(pack=pack, offset=pack.add(cap.data))
                    if pack.size >= pack_size:
                        seal()
                else:
                    assert cap.upload_path is not None
                    loc = _NewLoc(object=cap.sha, future=up.submit(
                        _streamer(store, object_key(cap.sha), cap), cap.size))
                    uploaded += cap.size
                pending[cap.sha] = loc
            elif cap.temp and cap.upload_path:
                unlink_if_present(cap.upload_path)
            new_locs[key] = (cap, loc)
        seal()
        up.wait()
    finally:
        if readers is not None:
            readers.close()
        up.close()
        for leftover in tmpdir.iterdir():
            unlink_if_present(leftover)

    for key, (cap, nloc) in new_locs.items():
        entry = Entry(key[0], key[1], FILE, mode=cap.mode, size=cap.size, mtime_ns=cap.mtime_ns, sha256=cap.sha,
                      sqlite=cap.sqlite)
        if nloc.future is not None and not nloc.future.result():
            label = f"{key[0]}:{key[1]}"
            log.info("fractfs: %s changed while being uploaded; left for the next checkpoint", label)
            result.skipped_busy.append(label)
            carry(key)
            digest_ok = False
            continue
        if nloc.pack is not None:
            entry = Entry(entry.area, entry.path, FILE, mode=entry.mode, size=entry.size, mtime_ns=entry.mtime_ns,
                          sha256=entry.sha256, pack=nloc.pack.id, offset=nloc.offset, sqlite=entry.sqlite)
        else:
            entry = _relocate(entry, None, obj=nloc.object)
        new[key] = entry
        new_rows[key] = _entry_row(entry, cap.facts, cap.side)

    # Files a restore could not write are absent because the app never had them, not because it deleted
    # them: keep their entries (see unrestored.py for when they are let go).
    waiting = unrestored.load(sdir)
    kept: list[Entry] = []
    for key, fp in sorted(waiting.items()):
        was = base.get(key)
        if key in new or was is None or unrestored.fingerprint(was) != fp:
            continue  # the app wrote something there, or the snapshot we extend no longer has it
        parent = posixpath.dirname(key[1])
        holder = new.get((key[0], parent))
        if parent and (holder is None or holder.type != DIR):
            continue  # the app removed (or replaced) the directory it was in
        if key[0] in areas and want(key[0], key[1], False):
            carry(key)
            kept.append(was)
    result.kept_unrestored = [e.label for e in kept]

    # What the checkpoint reports as stored: every file that is new or holds other content than in the base,
    # whether its bytes went up now or were already there (same content is stored once). Only changed-looking
    # files can differ, unless the base is not the snapshot the stat cache describes.
    order = [(a, r) for a, r, _rec in dirty]
    if not synced:
        seen = set(order)
        order += sorted(k for k in new if k not in seen)
    result.stored = [f"{a}:{r}" for a, r in order if _new_content(base.get((a, r)), new.get((a, r)))]

    # -- commit ----------------------------------------------------------------------------------------------
    result.deleted = sorted(f"{a}:{r}" for (a, r) in base if (a, r) not in new)
    result.files = sum(1 for e in new.values() if e.type == FILE)
    result.bytes = sum(e.size for e in new.values() if e.type == FILE)
    snapshot_id = base_id
    snapshot_size = sized.get(base_name) if base_name is not None else None
    committed: SnapName | None = None
    if new != base:
        entries = [new[k] for k in sorted(new)]
        # Never below what this node already committed: a stale listing (FUSE directory cache, an eventually
        # consistent store) can hide our last manifest, and a second manifest with the same number would
        # then be ordered against it by digest alone, i.e. at random, and could lose to the older state.
        last = parse_snapshot_id(hdr.snapshot) if hdr is not None and hdr.snapshot else None
        seq = max(names[-1].seq if names else 0, last.seq if last is not None else 0) + 1
        if seq > MAX_SEQ:
            raise FractfsError("snapshot sequence space exhausted")
        man = Manifest(seq=seq, created_ns=time.time_ns(), node=node_id, parent=base_id, entries=entries)
        name, data = encode_manifest(man)
        try:
            store.put(name.key, data, exclusive=True)
        except AlreadyExists:
            pass  # same name = same bytes (the name is their hash)
        try:
            check_stored(store, name.key, len(data))  # a torn manifest must not be reported as committed
        except StoreError:
            # its name promises bytes it does not hold, so no reader can ever use it: do not leave it behind
            try:
                store.delete(name.key)
            except StoreError as exc:
                log.debug("fractfs: could not remove torn manifest %s: %s", name.key, exc)
            raise
        uploaded += len(data)
        snapshot_size = len(data)
        snapshot_id = name.id
        committed = name
        result.snapshot_id = name.id
        _trim(store, names + [name], keep)
    result.uploaded_bytes = uploaded

    # -- remember what we now know (after the commit: the cache must never run ahead of the store) ----------
    rows_out: dict[str, dict[str, CacheRow]] = {}
    for (a, r), row in new_rows.items():
        rows_out.setdefault(a, {})[r] = row
    dbs = sorted((a, r) for (a, r), e in new.items() if e.sqlite and (a, r) not in carried)
    hdr_out = CacheHeader(snapshot=snapshot_id, snapshot_size=snapshot_size, sqlite=dbs, files=result.files,
                          bytes=result.bytes)
    db_sides = [(a, r, new_rows[(a, r)].side) for a, r in dbs]
    if digest_ok and not result.skipped_busy and not result.missed_deadline and all(x[2] for x in db_sides):
        hdr_out.digest = scan.walk_digest(areas, walked, db_sides)
    try:
        statcache.write_cache(sdir, hdr_out, rows_out)
    except OSError as exc:
        # The snapshot is committed; the cache only saves the next checkpoint from re-reading files. Whatever
        # cache is left describes an older snapshot, so the next run compares against the store instead.
        log.warning("fractfs: checkpoint %s committed, but its stat cache could not be saved in %s (%s); the "
                    "next checkpoint re-reads changed files", snapshot_id, sdir, exc)

    if len(kept) != len(waiting):
        try:
            unrestored.record(sdir, snapshot_id or "", kept)
        except OSError as exc:
            log.warning("fractfs: could not update %s (%s)", sdir / unrestored.RECORD_FILE, exc)
    if kept and committed is not None:
        log.info("fractfs: checkpoint keeps %d files the last restore could not write (their stored copy is "
                 "unchanged until the app writes them or removes their directory): %s",
                 len(kept), ", ".join(result.kept_unrestored[:10]))
    result.duration = time.monotonic() - t0
    if result.missed_deadline:
        log.warning("fractfs: checkpoint ran out of time; %d changed files not stored (newest kept first): %s",
                    len(result.missed_deadline), ", ".join(result.missed_deadline[:10]))
    if committed is not None:
        log.info("fractfs: checkpoint %s: %d files (%d stored, %d deleted, %d busy), %d bytes uploaded, %.2fs",
                 committed.short, result.files, len(result.stored), len(result.deleted),
                 len(result.skipped_busy), uploaded, result.duration)
    else:
        log.debug("fractfs: checkpoint: no change to commit (%.3fs)", result.duration)
    return result


def _new_content(was: Entry | None, now: Entry | None) -> bool:
    """``now`` is a file that ``was`` did not hold: new, or other bytes (a metadata-only change is not)."""
    return (now is not None and now.type == FILE
            and (was is None or was.type != FILE or was.sha256 != now.sha256))


#: A restore temp file this old (by ctime, which utime cannot move) was left by a restore that died.
STALE_TEMP_NS = 3600 * 10**9


def _remove_stale_temps(paths: list[str]) -> None:
    now = time.time_ns()
    for p in paths:
        try:
            st = os.lstat(p)
            if st.st_mode & 0o170000 in (S_IFREG, S_IFLNK) and now - st.st_ctime_ns > STALE_TEMP_NS:
                os.unlink(p)
                log.info("fractfs: removed %s, left behind by an interrupted restore", p)
        except OSError:
            pass


def _relocate(e: Entry, loc: Entry | None, obj: str = "") -> Entry:
    """``e`` pointing at the stored copy described by ``loc`` (or at object ``obj``; or nowhere if empty)."""
    pack = loc.pack if loc is not None else ""
    offset = loc.offset if loc is not None else 0
    o = (loc.object if loc is not None else obj) if not pack else ""
    return Entry(e.area, e.path, e.type, mode=e.mode, size=e.size, mtime_ns=e.mtime_ns, sha256=e.sha256,
                 pack=pack, offset=offset, object=o, target=e.target, sqlite=e.sqlite)


def _is_sqlite(top: str, rel: str, rec: Rec, row: CacheRow | None) -> bool:
    if row is not None and row.type == FILE and row.facts == rec[1:]:
        return bool(row.sqlite)
    try:
        with open(os.path.join(top, rel), "rb") as f:
            return f.read(16) == SQLITE_MAGIC
    except OSError:
        return False


def _streamer(store: Store, key: str, cap: _Captured) -> Callable[[], bool]:
    """Upload a large file straight from its path; True if the source provably did not change meanwhile."""
    path = cap.upload_path
    assert path is not None

    def run() -> bool:
        try:
            # a complete copy may be referenced by snapshots we do not know of: never rewrite it (see
            # xfer.store_blob); a shorter one is the leftover of an interrupted write and is replaced
            present = store.size(key) == cap.size
            if cap.temp:
                if not present:
                    store.put_file(key, Path(path))
                    check_stored(store, key, cap.size)
                return True
            before = cap.facts
            try:
                if not present:
                    store.put_file(key, Path(path))
            except Exception:
                # a source that changed or vanished under the upload is busy, not a store failure
                try:
                    if before is None or _facts(os.lstat(path)) != before:
                        return False
                except OSError:
                    return False
                raise
            try:
                unchanged = before is not None and _facts(os.lstat(path)) == before
            except OSError:
                return False
            if unchanged and not present:
                check_stored(store, key, cap.size)
            return unchanged
        finally:
            if cap.temp:
                unlink_if_present(path)

    return run


def _trim(store: Store, names: list[SnapName], keep: int) -> None:
    names = sorted(set(names))
    for old in names[: max(len(names) - keep, 0)]:
        try:
            store.delete(old.key)
            log.debug("fractfs: removed old snapshot %s", old.short)
        except Exception as exc:  # noqa: BLE001 - a manifest we failed to trim is retried next time
            log.warning("fractfs: could not remove old snapshot %s: %s", old.key, exc)
