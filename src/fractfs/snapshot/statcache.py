"""The node-local stat cache: what the last checkpoint (or restore) saw of every entry, and the lock on it.

It makes an unchanged tree cheap to checkpoint: a file whose stat facts are those remembered here keeps its
stored copy without being read. It is only ever written *after* the snapshot it describes is committed (or,
by a restore, after the files are on disk), so it never runs ahead of the store; losing it only costs
re-hashing.

File ``statcache.v1`` in the state dir: one JSON header line, then a marshal payload
``{area: {relpath: row}}`` with rows as plain tuples in :class:`CacheRow` order. The header alone answers "did
anything change?" together with the walk digest (see :mod:`.scan`); the payload is read only when something
did. marshal is fast and cannot execute code, but is not meant for damaged input, so the payload is checked
against the sha256 in the header first. No fsync: a cache lost to a crash only costs re-hashing.

Who uses it: the engine (load before a checkpoint, save after its commit), the restorer (:func:`seed` after a
restore), and ``fractfs prune`` (:class:`StateLock`, so it never runs in the middle of a checkpoint).
"""
from __future__ import annotations

import hashlib
import json
import logging
import marshal
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

from ..localfile import private_dir, unlink_if_present, write_replace
from .format import FILE, ChunkRef, Entry, Manifest
from .scan import RecordsDigest

try:  # POSIX only; the state dir lock is a courtesy on platforms without it
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("fractfs")

CACHE_FILE = "statcache.v1"
CACHE_MAGIC = "fractfs-statcache"
#: 2: rows carry Entry.chunks (format v2). A cache of another version is ignored (files are read again).
CACHE_VERSION = 2
LOCK_FILE = "lock"

#: What the cache remembers of a file's stat: (st_mode, st_size, st_mtime_ns, st_ino, st_ctime_ns), i.e. the
#: walk's record (scan.Rec) without its path, so the two compare directly.
Facts = tuple[int, ...]


def stat_facts(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """The :data:`Facts` of a stat result."""
    return (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


class CacheRow(NamedTuple):
    """One remembered entry: the snapshot Entry's fields after (area, path), then what was seen on disk."""

    type: str
    mode: int
    size: int
    mtime_ns: int
    sha256: str
    pack: str
    offset: int
    object: str
    target: str
    sqlite: bool
    #: Entry.chunks (a file of several chunks); as plain tuples in the file (marshal takes no NamedTuple)
    chunks: tuple[Any, ...]
    #: The entry's stat facts when it was captured, or None when it must be re-read next time (it was busy,
    #: too fresh to trust, or carried forward without looking).
    facts: Optional[Facts]
    #: scan.sidecar_facts() for a SQLite database (its -wal/-journal), else None.
    side: Optional[tuple[Any, ...]]

    @classmethod
    def of(cls, e: Entry, facts: Optional[Facts], side: Optional[tuple[Any, ...]]) -> CacheRow:
        return cls(e.type, e.mode, e.size, e.mtime_ns, e.sha256, e.pack, e.offset, e.object, e.target,
                   e.sqlite, e.chunks, facts, side)

    def entry(self, area: str, rel: str) -> Entry:
        # the first eleven fields are the Entry's fields after (area, path), in the same order
        if self.chunks and type(self.chunks[0]) is not ChunkRef:
            return Entry._make((area, rel) + tuple(self[:10]) + (tuple(ChunkRef._make(c) for c in self.chunks),))
        return Entry._make((area, rel) + tuple(self[:11]))


#: The whole cache payload: area -> relpath -> row.
Rows = dict[str, dict[str, CacheRow]]


@dataclass
class CacheHeader:
    snapshot: str | None = None
    #: Byte size of that manifest as written, compared with the store listing.
    snapshot_size: int | None = None
    #: scan.walk_digest() of the tree when it was saved; None when the next checkpoint must look at rows.
    digest: str | None = None
    #: Set by a restore that wrote every entry: scan.records_digest() of what the next walk should see.
    expect: str | None = None
    sqlite: list[tuple[str, str]] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    payload_sha256: str = ""


def read_header(state_dir: Path) -> tuple[CacheHeader | None, int]:
    """The cache header and the byte offset of the payload, or (None, 0) when absent or unreadable."""
    try:
        with open(state_dir / CACHE_FILE, "rb") as f:
            line = f.readline(1 << 20)
            doc = json.loads(line)
            if not isinstance(doc, dict) or doc.get("magic") != CACHE_MAGIC or doc.get("v") != CACHE_VERSION:
                raise ValueError("unknown stat cache format")
            hdr = CacheHeader(
                snapshot=doc.get("snapshot"), snapshot_size=doc.get("snapshot_size"), digest=doc.get("digest"),
                expect=doc.get("expect"),
                sqlite=[(str(a), str(r)) for a, r in doc.get("sqlite", [])],
                files=int(doc.get("files", 0)), bytes=int(doc.get("bytes", 0)),
                payload_sha256=str(doc.get("payload_sha256", "")),
            )
            return hdr, len(line)
    except FileNotFoundError:
        return None, 0
    except (OSError, ValueError, TypeError) as exc:
        log.warning("fractfs: ignoring unreadable stat cache %s (%s); files will be re-hashed",
                    state_dir / CACHE_FILE, exc)
        return None, 0


def read_rows(state_dir: Path, hdr: CacheHeader, offset: int) -> Rows | None:
    """The per-file rows, or None when the payload is missing or damaged."""
    raw = read_raw(state_dir, hdr, offset)
    if raw is None:
        return None
    make = CacheRow._make
    try:
        return {area: {rel: make(row) for rel, row in arows.items()} for area, arows in raw.items()}
    except (TypeError, AttributeError) as exc:
        # rows of another shape (another fractfs version wrote this cache): re-read, never trust or crash
        log.warning("fractfs: ignoring stat cache %s written in another layout (%s); files will be re-hashed",
                    state_dir / CACHE_FILE, exc)
        return None


#: The payload as stored: area -> relpath -> row as a plain tuple in CacheRow order.
RawRows = dict[str, dict[str, tuple[Any, ...]]]


def read_raw(state_dir: Path, hdr: CacheHeader, offset: int) -> RawRows | None:
    """The rows as plain tuples (no CacheRow made per row), or None when the payload is missing or damaged."""
    try:
        with open(state_dir / CACHE_FILE, "rb") as f:
            f.seek(offset)
            payload = f.read()
        if hashlib.sha256(payload).hexdigest() != hdr.payload_sha256:
            raise ValueError("payload checksum mismatch")
        raw = marshal.loads(payload)
        if not isinstance(raw, dict) or not all(isinstance(a, dict) for a in raw.values()):
            raise ValueError("payload is not a mapping")  # noqa: TRY004 - caught right below, never escapes
        return raw
    except (OSError, ValueError, EOFError, TypeError) as exc:
        log.warning("fractfs: ignoring damaged stat cache %s (%s); files will be re-hashed",
                    state_dir / CACHE_FILE, exc)
        return None


def write_cache(state_dir: Path, hdr: CacheHeader, rows: Rows) -> None:
    """Replace the cache with ``hdr`` and ``rows`` (all at once: a reader sees the old cache or the new)."""
    # marshal only takes plain tuples, not NamedTuple instances
    write_raw(state_dir, hdr, {a: {r: plain(row) for r, row in ar.items()} for a, ar in rows.items()})


def plain(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A row (or an entry's fields after area and path, plus facts) as marshal takes it: plain tuples only."""
    if row[10]:
        return (*row[:10], tuple(tuple(c) for c in row[10]), *row[11:])
    return tuple(row)


def write_raw(state_dir: Path, hdr: CacheHeader, raw: RawRows) -> None:
    """write_cache() for rows that are already plain tuples."""
    payload = marshal.dumps(raw, 4)
    hdr.payload_sha256 = hashlib.sha256(payload).hexdigest()
    _write_file(state_dir, hdr, payload)


def write_header(state_dir: Path, hdr: CacheHeader, offset: int) -> None:
    """Rewrite the cache with header ``hdr`` and the payload it has now (at ``offset``), e.g. to add the walk
    digest when the rows stay as they are. The caller holds the StateLock, so the payload is the one it read."""
    with open(state_dir / CACHE_FILE, "rb") as f:
        f.seek(offset)
        payload = f.read()
    if hashlib.sha256(payload).hexdigest() != hdr.payload_sha256:
        raise OSError(f"{state_dir / CACHE_FILE} changed while in use")
    _write_file(state_dir, hdr, payload)


def _write_file(state_dir: Path, hdr: CacheHeader, payload: bytes) -> None:
    head = json.dumps({
        "magic": CACHE_MAGIC, "v": CACHE_VERSION, "snapshot": hdr.snapshot, "snapshot_size": hdr.snapshot_size,
        "digest": hdr.digest, "expect": hdr.expect,
        "sqlite": [list(x) for x in hdr.sqlite], "files": hdr.files, "bytes": hdr.bytes,
        "payload_sha256": hdr.payload_sha256,
    }, separators=(",", ":")).encode() + b"\n"
    write_replace(state_dir / CACHE_FILE, head, payload)


def drop_cache(state_dir: Path) -> None:
    unlink_if_present(state_dir / CACHE_FILE)


class StateLock:
    """Exclusive lock on a state dir (``flock`` on its ``lock`` file), held by a checkpoint from its first
    look at the stat cache until the cache describes what it committed, by a restore's seeding, and by
    ``fractfs prune`` (a checkpoint's new blobs are unreferenced until its manifest lands). Blocks until free.
    """

    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / LOCK_FILE
        self.fd = -1

    def __enter__(self) -> StateLock:  # noqa: PYI034 - not meant to be subclassed
        if fcntl is not None:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            # Unlock explicitly: the flock belongs to the open file, which a process forked meanwhile (a web
            # server's worker) shares through its copy of the descriptor; closing ours alone kept it locked.
            if fcntl is not None:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1


def seed(state_dir: Path, m: Manifest, facts_of: Optional[Callable[[Entry], Optional[Facts]]], *,
         facts: Optional[dict[Entry, Facts]] = None, snapshot_size: Optional[int] = None,
         locked: bool = False) -> None:
    """Describe snapshot ``m`` as now on disk, after a restore wrote (some of) it.

    Every manifest entry is listed, since the cache must describe the whole snapshot it claims to match;
    ``facts_of(entry)``, or ``facts[entry]``, gives the stat facts of entries known to match their stored copy,
    None (absent) for the rest: the next checkpoint re-examines those, and SQLite databases always (their
    sidecars' facts are not known here). ``snapshot_size``, the manifest's size on the store, lets the next
    checkpoint trust the cache as describing the store's newest snapshot (see the engine's ``synced``)
    instead of fetching that manifest again. When every entry has facts, the header also carries
    :func:`.scan.records_digest` of them (``expect``): the first checkpoint's walk then only has to match it.
    ``locked``: the caller holds the :class:`StateLock` (a restore that seeds on a thread takes it first).
    """
    private_dir(state_dir)  # 0700 from creation: the rows hold every file's sha256 (docs/security.md)
    raw: RawRows = {}
    get = facts.get if facts is not None else None
    files = nbytes = 0
    area = ""
    arows: dict[str, tuple[Any, ...]] = {}
    # What the next walk must find if nothing changes: every entry with its facts, as walk records. A
    # manifest fractfs wrote is sorted, so they are digested as they come; any other order is sorted first.
    digest: Optional[RecordsDigest] = RecordsDigest() if get is not None else None
    last = ("", "")
    in_order = True
    # Written flat (plain tuples in CacheRow order, no NamedTuple per row): a cold start seeds every entry.
    for e in m.entries:
        if e.area != area:
            area = e.area
            arows = raw.setdefault(area, {})
        if e.sqlite:
            f = None
        elif get is not None:
            f = get(e)
        else:
            assert facts_of is not None
            f = facts_of(e)
        arows[e.path] = (*e[2:], f, None) if not e.chunks else plain((*e[2:], f, None))
        if digest is not None:
            if f is None:
                digest = None
            elif in_order:
                if (area, e.path) > last:
                    digest.add(area, (e.path, *f))
                    last = (area, e.path)
                else:
                    in_order = False
        if e.type == FILE:
            files += 1
            nbytes += e.size
    expect: Optional[str] = None
    if digest is not None and get is not None:
        if not in_order:  # a manifest fractfs did not write: sort (rare, so the simple way)
            digest = RecordsDigest()
            recs: list[tuple[str, tuple[Any, ...]]] = []
            for e in m.entries:
                f = get(e)
                assert f is not None  # every entry has facts, or digest would be None
                recs.append((e.area, (e.path, *f)))
            for a, rec in sorted(recs):
                digest.add(a, rec)
        expect = digest.hexdigest()
    hdr = CacheHeader(snapshot=m.id, snapshot_size=snapshot_size, files=files, bytes=nbytes, expect=expect)
    if locked:
        write_raw(state_dir, hdr, raw)
        return
    with StateLock(state_dir):
        write_raw(state_dir, hdr, raw)
