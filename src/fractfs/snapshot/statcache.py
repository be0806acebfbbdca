"""The node-local stat cache: what the last checkpoint (or restore) saw of every entry, and the lock on it.

It makes an unchanged tree cheap to checkpoint: a file whose stat facts are those remembered here keeps its
stored copy without being read. It is only ever written *after* the snapshot it describes is committed (or,
by a restore, after the files are on disk), so it never runs ahead of the store; losing it only costs
re-hashing.

File ``statcache.v1`` in the state dir (docs/format.md, "Change detection"): one JSON header line (padded with
spaces when it was written after the rows), then the payload: rows in batches, each a 4-byte little-endian
length and a marshal'd ``(area, {relpath: row})``, with rows as plain tuples in :class:`CacheRow` order. The
header alone answers "did anything change?" together with the walk digest (see :mod:`.scan`); the payload is
read only when something did. Batches let a writer stream rows as it makes them (a restore seeding a million
of them holds one batch, not every row and their encoding at once) and a reader take them one at a time.
marshal is fast and cannot execute code, but is not meant for damaged input, so the whole payload is checked
against the sha256 in the header before any batch is decoded. No fsync: a cache lost to a crash only costs
re-hashing.

Who uses it: the engine (load before a checkpoint, save after its commit), the restorer (:func:`seed` after a
restore, with the :class:`FactsTable` it filled), and ``fractfs prune`` (:class:`StateLock`, so it never runs
in the middle of a checkpoint).
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import marshal
import os
from array import array
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, Callable, NamedTuple, Optional

from ..localfile import private_dir, replacing, unlink_if_present
from .format import FILE, ChunkRef, Entry, Manifest
from .scan import RecordsDigest

try:  # POSIX only; the state dir lock is a courtesy on platforms without it
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("fractfs")

CACHE_FILE = "statcache.v1"
CACHE_MAGIC = "fractfs-statcache"
#: 2: rows carry Entry.chunks (format v2). 3: the payload is a sequence of batches (see above). A cache of
#: another version is ignored (files are read again).
CACHE_VERSION = 3
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

#: Rows per batch in the payload: a batch is a few hundred KB to encode, hash and write at once.
BATCH_ROWS = 2048
#: Bytes read at a time while hashing or copying a payload.
_READ = 1 << 20
#: Bytes of a batch's length prefix (little-endian).
_LEN = 4


def read_raw(state_dir: Path, hdr: CacheHeader, offset: int) -> RawRows | None:
    """The rows as plain tuples (no CacheRow made per row), or None when the payload is missing or damaged."""
    try:
        with open(state_dir / CACHE_FILE, "rb") as f:
            # First the whole payload is hashed, a megabyte at a time, then its batches are decoded one at a
            # time: never the payload and the rows in memory at once. Both passes read the same open file,
            # which is only ever replaced (renamed over), never written in place, so they see the same bytes.
            f.seek(offset)
            h = hashlib.sha256()
            while chunk := f.read(_READ):
                h.update(chunk)
            if h.hexdigest() != hdr.payload_sha256:
                raise ValueError("payload checksum mismatch")
            f.seek(offset)
            raw: RawRows = {}
            for area, rows in _batches(f):
                raw.setdefault(area, {}).update(rows)
            return raw
    except (OSError, ValueError, EOFError, TypeError) as exc:
        log.warning("fractfs: ignoring damaged stat cache %s (%s); files will be re-hashed",
                    state_dir / CACHE_FILE, exc)
        return None


def _batches(f: BinaryIO) -> Iterator[tuple[str, dict[str, tuple[Any, ...]]]]:
    """The ``(area, rows)`` batches of a payload whose checksum matched, each checked for shape."""
    while head := f.read(_LEN):
        n = int.from_bytes(head, "little")
        body = f.read(n)
        if len(head) != _LEN or len(body) != n:
            raise ValueError("payload ends inside a batch")
        got = marshal.loads(body)
        if type(got) is not tuple or len(got) != 2 or type(got[0]) is not str or type(got[1]) is not dict:
            raise ValueError("a payload batch is not (area, rows)")  # noqa: TRY004 - caught by read_raw
        yield got


def write_cache(state_dir: Path, hdr: CacheHeader, rows: Rows) -> None:
    """Replace the cache with ``hdr`` and ``rows`` (all at once: a reader sees the old cache or the new)."""
    # marshal only takes plain tuples, not NamedTuple instances; converted a batch at a time
    with writing(state_dir, hdr) as put:
        for area, arows in rows.items():
            for batch in _chunked(arows.items()):
                put(area, {r: plain(row) for r, row in batch})


def plain(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A row (or an entry's fields after area and path, plus facts) as marshal takes it: plain tuples only."""
    if row[10]:
        return (*row[:10], tuple(tuple(c) for c in row[10]), *row[11:])
    return tuple(row)


def write_raw(state_dir: Path, hdr: CacheHeader, raw: RawRows) -> None:
    """write_cache() for rows that are already plain tuples."""
    with writing(state_dir, hdr) as put:
        for area, arows in raw.items():
            if len(arows) <= BATCH_ROWS:
                put(area, arows)
            else:
                for batch in _chunked(arows.items()):
                    put(area, dict(batch))


def _chunked(items: Iterable[tuple[str, Any]]) -> Iterator[list[tuple[str, Any]]]:
    it = iter(items)
    while batch := list(itertools.islice(it, BATCH_ROWS)):
        yield batch


#: Writes one batch of rows of one area (see :func:`writing`).
PutBatch = Callable[[str, dict[str, tuple[Any, ...]]], None]


@contextmanager
def writing(state_dir: Path, hdr: CacheHeader) -> Iterator[PutBatch]:
    """Write a new cache a batch of rows at a time; it replaces the old one when the block ends (a reader sees
    the old cache or the new), or is removed if the block raises.

    The header goes first in the file but is written last, over room left for it at the start: so
    ``files``, ``bytes``, ``expect`` and ``digest`` may still be set while the rows are written (the room
    holds the widest values they can take); other header fields must not change in the meantime.
    """
    room = len(_header_json(_widest(hdr)))
    h = hashlib.sha256()
    with replacing(state_dir / CACHE_FILE) as f:
        f.write(b" " * room + b"\n")

        def put(area: str, rows: dict[str, tuple[Any, ...]]) -> None:
            body = marshal.dumps((area, rows), 4)
            head = len(body).to_bytes(_LEN, "little")
            h.update(head)
            h.update(body)
            f.write(head)
            f.write(body)

        yield put
        hdr.payload_sha256 = h.hexdigest()
        head = _header_json(hdr)
        if len(head) > room:
            raise ValueError(f"stat cache header grew past its room ({len(head)} > {room} bytes): a header field "
                             "other than files, bytes, expect or digest changed while writing")
        f.seek(0)
        f.write(head.ljust(room))  # JSON allows the trailing spaces


def write_header(state_dir: Path, hdr: CacheHeader, offset: int) -> None:
    """Rewrite the cache with header ``hdr`` and the payload it has now (at ``offset``), e.g. to add the walk
    digest when the rows stay as they are. The caller holds the StateLock, so the payload is the one it read.
    The payload is copied a megabyte at a time (checked against ``hdr.payload_sha256`` on the way)."""
    path = state_dir / CACHE_FILE
    with open(path, "rb") as src, replacing(path) as f:
        f.write(_header_json(hdr) + b"\n")
        src.seek(offset)
        h = hashlib.sha256()
        while chunk := src.read(_READ):
            h.update(chunk)
            f.write(chunk)
        if h.hexdigest() != hdr.payload_sha256:
            raise OSError(f"{path} changed while in use")


def _header_json(hdr: CacheHeader) -> bytes:
    return json.dumps({
        "magic": CACHE_MAGIC, "v": CACHE_VERSION, "snapshot": hdr.snapshot, "snapshot_size": hdr.snapshot_size,
        "digest": hdr.digest, "expect": hdr.expect,
        "sqlite": [list(x) for x in hdr.sqlite], "files": hdr.files, "bytes": hdr.bytes,
        "payload_sha256": hdr.payload_sha256,
    }, separators=(",", ":")).encode()


#: Wider than any count or byte total a header can hold: a manifest has at most 2**21 entries of under 2**63
#: bytes each.
_WIDEST_INT = 2**128
_WIDEST_HEX = "f" * 64


def _widest(hdr: CacheHeader) -> CacheHeader:
    """``hdr`` with the fields :func:`writing` lets change at their widest (what its room must hold)."""
    def wide(v: Optional[str]) -> str:
        return v if v is not None and len(v) > len(_WIDEST_HEX) else _WIDEST_HEX

    return replace(hdr, files=_WIDEST_INT, bytes=_WIDEST_INT, digest=wide(hdr.digest), expect=wide(hdr.expect),
                   payload_sha256=_WIDEST_HEX)


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


class FactsTable:
    """Stat facts of a snapshot's entries by each entry's position in ``Manifest.entries``: what a restore
    learned of the files it wrote, for :func:`seed`.

    A cold start records one per file, so they are kept as machine integers in one array per field (37 bytes an
    entry, made for every entry up front) rather than as a dict from Entry to a tuple of Python ints (~270
    bytes a file, measured). Facts an array cannot hold (a timestamp beyond 64 bits) go to a small dict.
    """

    def __init__(self, n: int):
        #: per entry: 0 no facts, 1 in the arrays, 2 in ``odd``
        self.has = bytearray(n)
        self.mode = array("I", [0]) * n
        self.size = array("q", [0]) * n
        self.mtime = array("q", [0]) * n
        self.ino = array("Q", [0]) * n
        self.ctime = array("q", [0]) * n
        self.odd: dict[int, Facts] = {}

    def __len__(self) -> int:
        return len(self.has)

    def set(self, i: int, facts: Facts) -> None:
        try:
            self.mode[i], self.size[i], self.mtime[i], self.ino[i], self.ctime[i] = facts
            self.has[i] = 1
        except OverflowError:
            self.odd[i] = tuple(facts)
            self.has[i] = 2

    def set_stat(self, i: int, st: os.stat_result) -> None:
        """``set(i, stat_facts(st))`` without making the tuple."""
        try:
            self.mode[i] = st.st_mode
            self.size[i] = st.st_size
            self.mtime[i] = st.st_mtime_ns
            self.ino[i] = st.st_ino
            self.ctime[i] = st.st_ctime_ns
            self.has[i] = 1
        except OverflowError:
            self.odd[i] = stat_facts(st)
            self.has[i] = 2

    def clear(self, i: int) -> None:
        self.has[i] = 0
        self.odd.pop(i, None)

    def get(self, i: int) -> Optional[Facts]:
        h = self.has[i]
        if h == 1:
            return (self.mode[i], self.size[i], self.mtime[i], self.ino[i], self.ctime[i])
        return self.odd[i] if h == 2 else None


def seed(state_dir: Path, m: Manifest, facts_of: Optional[Callable[[Entry], Optional[Facts]]], *,
         facts: Optional[FactsTable] = None, snapshot_size: Optional[int] = None, locked: bool = False) -> None:
    """Describe snapshot ``m`` as now on disk, after a restore wrote (some of) it.

    Every manifest entry is listed, since the cache must describe the whole snapshot it claims to match;
    ``facts_of(entry)``, or ``facts`` at the entry's position in ``m.entries``, gives the stat facts of entries
    known to match their stored copy, None for the rest: the next checkpoint re-examines those, and SQLite
    databases always (their sidecars' facts are not known here). ``snapshot_size``, the manifest's size on the
    store, lets the next checkpoint trust the cache as describing the store's newest snapshot (see the
    engine's ``synced``) instead of fetching that manifest again. When every entry has facts, the header also
    carries :func:`.scan.records_digest` of them (``expect``): the first checkpoint's walk then only has to
    match it. ``locked``: the caller holds the :class:`StateLock` (a restore that seeds on a thread takes it
    first).

    Rows are written a batch at a time as they are made (see :func:`writing`): a cold start seeds every entry,
    and at a million files holding all rows and then their encoding at once was the restore's peak memory.
    """
    if facts is not None and len(facts) != len(m.entries):
        raise ValueError(f"facts for {len(facts)} entries, the manifest has {len(m.entries)}")
    private_dir(state_dir)  # 0700 from creation: the rows hold every file's sha256 (docs/security.md)
    hdr = CacheHeader(snapshot=m.id, snapshot_size=snapshot_size)
    with contextlib.nullcontext() if locked else StateLock(state_dir), writing(state_dir, hdr) as put:
        hdr.files, hdr.bytes, hdr.expect = _seed_rows(put, m, facts_of, facts)


def _seed_rows(put: PutBatch, m: Manifest, facts_of: Optional[Callable[[Entry], Optional[Facts]]],
               facts: Optional[FactsTable]) -> tuple[int, int, Optional[str]]:
    """Write a row per entry of ``m`` through ``put``; (files, bytes, expect) for the header."""
    files = nbytes = 0
    # What the next walk must find if nothing changes: every entry with its facts, as walk records. A
    # manifest fractfs wrote is sorted, so they are digested as they come; any other order is sorted first.
    digest: Optional[RecordsDigest] = RecordsDigest() if facts is not None else None
    last = ("", "")
    in_order = True
    area = ""
    batch: dict[str, tuple[Any, ...]] = {}
    if facts is not None:  # read straight from the arrays: one entry per file of a cold start
        has, odd = facts.has, facts.odd
        mode, size, mtime, ino, ctime = facts.mode, facts.size, facts.mtime, facts.ino, facts.ctime
    f: Optional[Facts]
    # Rows are plain tuples in CacheRow order, no NamedTuple per row.
    for i, e in enumerate(m.entries):
        if e.area != area or len(batch) >= BATCH_ROWS:
            if batch:
                put(area, batch)
                batch = {}
            area = e.area
        if e.sqlite:
            f = None
        elif facts is not None:
            h = has[i]
            f = (mode[i], size[i], mtime[i], ino[i], ctime[i]) if h == 1 else odd[i] if h else None
        else:
            assert facts_of is not None
            f = facts_of(e)
        batch[e.path] = (*e[2:], f, None) if not e.chunks else plain((*e[2:], f, None))
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
    if batch:
        put(area, batch)
    expect: Optional[str] = None
    if digest is not None and facts is not None:
        if not in_order:  # a manifest fractfs did not write: sort (rare, so the simple way)
            digest = RecordsDigest()
            recs: list[tuple[str, tuple[Any, ...]]] = []
            for i, e in enumerate(m.entries):
                f = facts.get(i)
                assert f is not None  # every entry has facts, or digest would be None
                recs.append((e.area, (e.path, *f)))
            for a, rec in sorted(recs):
                digest.add(a, rec)
        expect = digest.hexdigest()
    return files, nbytes, expect
