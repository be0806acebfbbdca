"""The on-store checkpoint format, version 1 (specified in docs/format.md).

Everything that decides what bytes go where on the store lives here, so the format can be read in one place:
key names, the manifest encoding, and the checks a manifest must pass before anything trusts it.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import re
import zlib
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..errors import CorruptCheckpointError, FractfsError

FORMAT_NAME = "fractfs-snapshot"
FORMAT_VERSION = 1
#: The version checkpoints write (docs/format.md Part A); FORMAT_VERSION stays the v1 codec's own.
WRITE_VERSION = 2
#: Versions this code can read. A manifest outside this set is never restored from and blocks prune, because
#: we cannot know which objects it references.
KNOWN_VERSIONS = frozenset({1, 2})

SNAPSHOTS = "snapshots/"
PACKS = "packs/"
OBJECTS = "objects/"

SQLITE_MAGIC = b"SQLite format 3\x00"
#: Sidecars SQLite keeps next to a database; the backup API already folds committed WAL content into the copy.
SQLITE_SIDECARS = ("-wal", "-shm", "-journal")

FILE = "file"
SYMLINK = "symlink"
DIR = "dir"
TYPES = (FILE, SYMLINK, DIR)

_HEX64 = re.compile(r"^[0-9a-f]{64}\Z")
# [0-9], not \d: \d also matches other scripts' digits, which int() accepts but SnapName.key spells differently
_SNAP_KEY = re.compile(r"^snapshots/([0-9]{12})-([0-9a-f]{64})\.json\.gz\Z")
_SNAP_ID = re.compile(r"^([0-9]{12})-([0-9a-f]{64})\Z")
_AREA = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}\Z")
#: The largest sequence number the 12-digit field can hold.
MAX_SEQ = 10**12 - 1

# Limits on what a manifest may hold (docs/format.md §B3 "Limits"). A manifest is input from whoever can write
# the store; these bound the memory and time a node spends on one before it knows whether it is usable.
#: Bytes a manifest may have on the store, and may inflate to: MAX_ENTRIES entries of up to ~500 bytes (a file
#: entry with a pack and a short path is ~280). Checked before reading, and while inflating.
MAX_MANIFEST_BYTES = 512 << 20
#: Entries per manifest: 10x the largest tree measured. Decoding one costs ~1.3 KB of memory and ~30 us, so
#: a manifest at the limit peaks at ~1.6 GB and takes ~30 s on a loaded 2-core node (measured).
MAX_ENTRIES = 1_000_000
#: JSON values (counted as the commas, "{" and "[" in the inflated bytes, before parsing): an honest entry has
#: 8-12 fields. Without it a few hundred MB of "{}," would parse into tens of GB of empty objects.
MAX_JSON_VALUES = 24 * MAX_ENTRIES
#: Entries per version 2 manifest: a million files plus their directories. Decoding one costs ~0.7 KB and
#: ~4 us (columns; measured, docs/format.md), so a manifest at the limit peaks near 1.5 GB like v1's at 1M.
#: An honest v2 entry is 6 JSON values plus 3 per chunk, so 2M one-chunk entries stay within MAX_JSON_VALUES.
MAX_ENTRIES_V2 = 2_000_000
#: Bytes of one path (UTF-8, surrogate escapes as the original bytes) and of one symlink target: Linux PATH_MAX,
#: beyond which the walker cannot reach a file, nor symlink(2) create a target.
MAX_PATH_BYTES = 4096
#: Bytes of one path component: NAME_MAX of every Linux filesystem fractfs targets.
MAX_NAME_BYTES = 255
#: Components of one path. A 4096-byte path holds at most 2048; the restore walks each once per entry.
MAX_PATH_DEPTH = 2048
#: Size of a file stored in a pack. The checkpoint packs only files below its large-file threshold (8 MiB);
#: restore holds a packed file in memory, so a claim beyond this is refused before anything is read.
MAX_PACKED_FILE = 64 << 20
#: Size, offset and mtime fields are signed 64-bit on every filesystem and in os.utime.
MAX_INT64 = 2**63 - 1
MIN_INT64 = -(2**63)


def is_hex64(s: object) -> bool:
    return isinstance(s, str) and _HEX64.match(s) is not None


def valid_area(name: object) -> bool:
    return isinstance(name, str) and _AREA.match(name) is not None


def pack_key(pack_id: str) -> str:
    return f"{PACKS}{pack_id[:2]}/{pack_id}"


def object_key(object_id: str) -> str:
    return f"{OBJECTS}{object_id[:2]}/{object_id}"


def blob_id_from_key(key: str) -> str | None:
    """The content id of a ``packs/`` or ``objects/`` key in canonical form, else None (foreign file)."""
    for prefix in (PACKS, OBJECTS):
        if key.startswith(prefix):
            rest = key[len(prefix):]
            fan, _, name = rest.partition("/")
            if is_hex64(name) and fan == name[:2]:
                return name
    return None


@dataclass(frozen=True, order=True)
class SnapName:
    """A manifest's store key, parsed. Ordering = age: sequence first, digest as a deterministic tie-break."""

    seq: int
    digest: str

    @property
    def id(self) -> str:
        return f"{self.seq:012d}-{self.digest}"

    @property
    def key(self) -> str:
        return f"{SNAPSHOTS}{self.id}.json.gz"

    @property
    def short(self) -> str:
        return f"{self.seq}-{self.digest[:12]}"


def parse_snapshot_key(key: str) -> SnapName | None:
    m = _SNAP_KEY.match(key)
    return SnapName(int(m.group(1)), m.group(2)) if m else None


def parse_snapshot_id(sid: str) -> SnapName | None:
    m = _SNAP_ID.match(sid)
    return SnapName(int(m.group(1)), m.group(2)) if m else None


def short_id(sid: str | None) -> str:
    """:attr:`SnapName.short` of a snapshot id given as text (``"-"`` for none, the text itself when it is
    not a snapshot id): how logs and the ``fractfs`` command name snapshots."""
    if not sid:
        return "-"
    name = parse_snapshot_id(sid)
    return name.short if name is not None else sid


class ChunkRef(NamedTuple):
    """Where one chunk of a file is stored (format v2): bytes ``offset .. offset+length`` of pack ``pack``,
    whose SHA-256 is ``sha256`` (hex). A v1 pack slice is described the same way."""

    pack: str
    offset: int
    length: int
    sha256: str


class Entry(NamedTuple):
    """One path in a snapshot. Which fields matter depends on ``type`` (see docs/format.md).

    A NamedTuple rather than a dataclass: checkpoints of 100 000 files build and compare this many of them, and
    tuples are several times cheaper to make and to compare.
    """

    area: str
    path: str
    type: str
    mode: int = 0
    size: int = 0
    mtime_ns: int = 0
    sha256: str = ""
    pack: str = ""
    offset: int = 0
    object: str = ""
    target: str = ""
    sqlite: bool = False
    #: A file stored as two or more chunks (format v2): its content in order; ``sha256`` is then the content
    #: id (docs/format.md). A file of one chunk is described by ``pack``/``offset``/``sha256`` alone, exactly
    #: like a v1 packed file, so every reader of one-slice files serves both versions.
    chunks: tuple[ChunkRef, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.area}:{self.path}"

    @property
    def stored(self) -> bool:
        """Whether the entry points at stored content (a pack slice, an object or chunks)."""
        return bool(self.pack or self.object or self.chunks)

    def refs(self) -> tuple[ChunkRef, ...]:
        """The file's content as pack slices: its chunks, or its one v1/v2 pack slice (empty for an object or an
        empty file)."""
        if self.chunks:
            return self.chunks
        if self.pack:
            return (ChunkRef(self.pack, self.offset, self.size, self.sha256),)
        return ()

    @property
    def blob_key(self) -> str | None:
        if self.pack:
            return pack_key(self.pack)
        if self.object:
            return object_key(self.object)
        return None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"area": self.area, "path": self.path, "type": self.type}
        if self.type == DIR:
            d["mode"] = self.mode
        elif self.type == SYMLINK:
            d["target"] = self.target
            d["mtime_ns"] = self.mtime_ns
        else:
            d["mode"] = self.mode
            d["size"] = self.size
            d["mtime_ns"] = self.mtime_ns
            d["sha256"] = self.sha256
            if self.pack:
                d["pack"] = self.pack
                d["offset"] = self.offset
                d["length"] = self.size
            elif self.object:
                d["object"] = self.object
            if self.sqlite:
                d["sqlite"] = True
        return d


class BadEntry(ValueError):
    """A manifest entry that is malformed or hostile; restore refuses it and reports ``str(exc)``."""


def check_relpath(path: object) -> str:
    """Return ``path`` if it is a clean relative POSIX path that cannot leave its area, else raise BadEntry."""
    if not isinstance(path, str) or not path:
        raise BadEntry("empty or non-string path")
    # sizes first, before any work that grows with the path (a 320 000-component path must cost nothing)
    if len(path) > MAX_PATH_BYTES or _nbytes(path) > MAX_PATH_BYTES:
        raise BadEntry(f"path longer than {MAX_PATH_BYTES} bytes")
    if path.count("/") >= MAX_PATH_DEPTH:
        raise BadEntry(f"path deeper than {MAX_PATH_DEPTH} components")
    if "\x00" in path:
        raise BadEntry("NUL byte in path")
    if path.startswith("/"):
        raise BadEntry("absolute path")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise BadEntry(f"path component {part!r} is not allowed")
        if len(part) > MAX_NAME_BYTES and _nbytes(part) > MAX_NAME_BYTES:
            raise BadEntry(f"path component longer than {MAX_NAME_BYTES} bytes")
    return path


def _nbytes(s: str) -> int:
    """Length of ``s`` as the file name bytes it stands for (surrogate escapes are the original bytes)."""
    return len(s.encode("utf-8", "surrogateescape")) if not s.isascii() else len(s)


def _int(d: dict[str, Any], key: str, lo: int = 0, hi: int = MAX_INT64) -> int:
    v = d.get(key)
    # bool is an int subclass; a manifest that says "size": true is malformed, not size 1. The upper bound
    # matters: an mtime of 10**30 passed this check once and raised OverflowError out of the whole restore.
    if not isinstance(v, int) or isinstance(v, bool) or v < lo or v > hi:
        raise BadEntry(f"field {key!r} missing or out of range: {v!r}")
    return v


def entry_from_json(d: object) -> Entry:
    """Parse and validate one manifest entry. Raises BadEntry naming the problem."""
    if not isinstance(d, dict):
        raise BadEntry("entry is not an object")
    area = d.get("area")
    if not valid_area(area):
        raise BadEntry(f"bad area name {area!r}")
    assert isinstance(area, str)
    path = d.get("path")
    try:
        check_relpath(path)
    except BadEntry as exc:
        raise BadEntry(f"{area}:{path!r}: {exc}") from None
    assert isinstance(path, str)
    typ = d.get("type")
    where = f"{area}:{path}"
    try:
        if typ == DIR:
            return Entry(area, path, DIR, mode=_int(d, "mode", 0, 0o7777))
        if typ == SYMLINK:
            target = d.get("target")
            if (not isinstance(target, str) or not target or len(target) > MAX_PATH_BYTES
                    or _nbytes(target) > MAX_PATH_BYTES or "\x00" in target):
                raise BadEntry(f"bad symlink target {target[:80] if isinstance(target, str) else target!r}")
            return Entry(area, path, SYMLINK, mtime_ns=_int(d, "mtime_ns", MIN_INT64), target=target)
        if typ != FILE:
            raise BadEntry(f"unknown entry type {typ!r}")
        size = _int(d, "size")
        sha = d.get("sha256")
        if not is_hex64(sha):
            raise BadEntry(f"bad sha256 {sha!r}")
        assert isinstance(sha, str)
        pack = d.get("pack", "")
        obj = d.get("object", "")
        offset = 0
        if pack and obj:
            raise BadEntry("entry names both a pack and an object")
        if pack:
            if not is_hex64(pack):
                raise BadEntry(f"bad pack id {pack!r}")
            offset = _int(d, "offset")
            length = _int(d, "length")
            if length != size:
                raise BadEntry(f"size {size} does not match the stored length {length}")
            if size > MAX_PACKED_FILE or offset + size > MAX_INT64:
                raise BadEntry(f"packed file of {size} bytes at offset {offset}: beyond the limit of "
                               f"{MAX_PACKED_FILE} bytes per packed file")
        elif obj:
            if obj != sha:
                raise BadEntry("object id differs from the file's sha256")
        elif size != 0:
            raise BadEntry(f"size {size} but no stored location")
        sqlite = d.get("sqlite", False)
        if not isinstance(sqlite, bool):
            raise BadEntry("field 'sqlite' is not a boolean")
        return Entry(area, path, FILE, mode=_int(d, "mode", 0, 0o7777), size=size,
                     mtime_ns=_int(d, "mtime_ns", MIN_INT64), sha256=sha, pack=str(pack), offset=offset,
                     object=str(obj), sqlite=sqlite)
    except BadEntry as exc:
        raise BadEntry(f"{where}: {exc}") from None


_ENTRY_NEW = tuple.__new__


def _quick_file_entry(d: Any, areas: set[str]) -> Entry | None:
    """The common entries, a file in a pack or an empty file, with every field present and well-typed, parsed
    without the general checks' function calls (a cold start decodes one per file); None for anything else,
    which :func:`entry_from_json` then parses or refuses with its reasons. Accepts exactly what that function
    accepts for such an entry. ``areas`` holds the area names already found valid."""
    if type(d) is not dict or d.get("type") != FILE or len(d) > 11:
        return None
    area = d.get("area")
    path = d.get("path")
    sha = d.get("sha256")
    pack = d.get("pack", "")
    mode = d.get("mode")
    size = d.get("size")
    mtime = d.get("mtime_ns")
    sqlite = d.get("sqlite", False)
    # an ASCII path of up to 255 bytes is within every path limit (length, component, depth); other paths and
    # out-of-range numbers go to entry_from_json, which applies the limits of docs/format.md and says why
    if (area not in areas or type(path) is not str or not path or len(path) > 255 or not path.isascii() or path[0] == "/"
            or "\x00" in path or type(mode) is not int or type(size) is not int or type(mtime) is not int
            or type(sha) is not str or type(pack) is not str or type(sqlite) is not bool
            or d.get("object", "") != "" or not 0 <= mode <= 0o7777 or not 0 <= size <= MAX_PACKED_FILE
            or not 0 <= mtime <= MAX_INT64 or _HEX64.match(sha) is None):
        return None
    if pack:
        offset = d.get("offset")
        length = d.get("length")
        if (type(offset) is not int or not 0 <= offset <= MAX_INT64 - size or type(length) is not int
                or length != size or _HEX64.match(pack) is None):
            return None
    elif size:
        return None
    else:
        offset = 0
    wrapped = f"/{path}/"  # no empty, "." or ".." component, as check_relpath says
    if "//" in wrapped or "/./" in wrapped or "/../" in wrapped:
        return None
    e: Entry = _ENTRY_NEW(Entry, (area, path, FILE, mode, size, mtime, sha, pack, offset, "", "", sqlite, ()))
    return e


@dataclass
class Manifest:
    seq: int
    created_ns: int
    node: str
    parent: str | None
    entries: list[Entry]
    #: Entries that failed validation, as messages; restore reports them as refused.
    bad: list[str] = field(default_factory=list)
    version: int = FORMAT_VERSION
    name: SnapName | None = None

    @property
    def id(self) -> str | None:
        return self.name.id if self.name else None

    @property
    def file_count(self) -> int:
        return sum(1 for e in self.entries if e.type == FILE)

    @property
    def byte_count(self) -> int:
        return sum(e.size for e in self.entries if e.type == FILE)

    def paths(self, *, include_dirs: bool = False) -> set[tuple[str, str]]:
        """``(area, relpath)`` of every file and symlink (and directory, if asked)."""
        return {(e.area, e.path) for e in self.entries if include_dirs or e.type != DIR}


class UnknownFormatError(CorruptCheckpointError):
    """A manifest written by a fractfs that knows a newer format. Not damage, but not usable here either."""


def encode_manifest(m: Manifest) -> tuple[SnapName, bytes]:
    """Serialize ``m``; returns its name (which carries the sha256 of the returned bytes) and the bytes."""
    doc = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "seq": m.seq,
        "created_ns": m.created_ns,
        "node": m.node,
        "parent": m.parent,
        "files": m.file_count,
        "bytes": m.byte_count,
        "entries": [e.to_json() for e in m.entries],
    }
    if len(m.entries) > MAX_ENTRIES:
        raise FractfsError(f"a snapshot of {len(m.entries)} files, directories and links is over the limit of "
                           f"{MAX_ENTRIES} entries (docs/format.md §B3), so no node could restore it; exclude "
                           "generated or cache trees with [ignore] or put them under [dirs]")
    raw = json.dumps(doc, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    if len(raw) > MAX_MANIFEST_BYTES:
        raise FractfsError(f"this snapshot's manifest would be {len(raw)} bytes, over the limit of "
                           f"{MAX_MANIFEST_BYTES} (docs/format.md §B3), so no node could restore it; exclude "
                           "generated or cache trees with [ignore] or put them under [dirs]")
    # level 1: a 100k-entry manifest compresses 5x in ~0.2 s; higher levels buy a few % for 3x the time,
    # and the final checkpoint at SIGTERM has a budget of seconds. mtime=0 keeps the bytes deterministic.
    data = gzip.compress(raw, compresslevel=1, mtime=0)
    name = SnapName(m.seq, hashlib.sha256(data).hexdigest())
    return name, data


#: Inflating a manifest may not produce more than this many times its stored size (or MAX_INFLATE_MIN): real
#: manifests shrink 3-10x, while a crafted one (a "gzip bomb") inflates a megabyte into gigabytes and would take
#: the node's memory with it at start-up.
MAX_INFLATE_RATIO = 100
MAX_INFLATE_MIN = 64 << 20


def _inflate(name: SnapName, data: bytes) -> bytes:
    limit = min(MAX_MANIFEST_BYTES, max(MAX_INFLATE_MIN, MAX_INFLATE_RATIO * len(data)))
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip framing, one member (what encode_manifest writes)
    raw = d.decompress(data, limit + 1)
    if len(raw) > limit:
        raise CorruptCheckpointError(f"{name.key}: inflates to more than {limit} bytes from {len(data)}; "
                                     "refused (not a manifest fractfs wrote)")
    if not d.eof:
        raise CorruptCheckpointError(f"{name.key}: not a readable manifest (the gzip stream ends early)")
    if d.unused_data:
        raise CorruptCheckpointError(f"{name.key}: not a readable manifest (data after the gzip stream)")
    return raw


def read_doc(name: SnapName, data: bytes) -> dict[str, Any]:
    """The parsed JSON document of a stored manifest, after the checks every format version shares: size,
    digest against the name, inflation and JSON value bounds, format name, and a version this fractfs reads.
    Raises CorruptCheckpointError (UnknownFormatError for a version it does not read)."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise CorruptCheckpointError(f"{name.key}: {len(data)} bytes, over the limit of {MAX_MANIFEST_BYTES} for "
                                     "a manifest; refused")
    digest = hashlib.sha256(data).hexdigest()
    if digest != name.digest:
        raise CorruptCheckpointError(
            f"{name.key}: content hash {digest[:16]}… does not match its name (truncated or altered)")
    try:
        text = _inflate(name, data)
        values = text.count(b",") + text.count(b"{") + text.count(b"[")
        if values > MAX_JSON_VALUES:
            raise CorruptCheckpointError(f"{name.key}: holds about {values} JSON values, over the limit of "
                                         f"{MAX_JSON_VALUES}; refused (not a manifest fractfs wrote)")
        doc = json.loads(text)
        del text  # the parsed document is what stays: do not hold both
    except RecursionError:
        # JSON nested deeper than the interpreter's recursion limit: no manifest fractfs writes nests past 3
        raise CorruptCheckpointError(f"{name.key}: not a readable manifest (JSON nested too deeply)") from None
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise CorruptCheckpointError(f"{name.key}: not a readable manifest ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise CorruptCheckpointError(f"{name.key}: not a {FORMAT_NAME} manifest")
    version = doc.get("version")
    if version not in KNOWN_VERSIONS or type(version) is not int:
        raise UnknownFormatError(
            f"{name.key}: format version {version!r} is not one this fractfs reads "
            f"({sorted(KNOWN_VERSIONS)}); upgrade fractfs to use it")
    return doc


def decode_manifest(name: SnapName, data: bytes) -> Manifest:
    """Verify and parse a version 1 manifest. Raises CorruptCheckpointError (UnknownFormatError for other
    versions; :func:`.manifests.decode` reads every version)."""
    doc = read_doc(name, data)
    if doc.get("version") != 1:
        raise UnknownFormatError(f"{name.key}: format version {doc.get('version')!r} is not 1 "
                                 "(read it with fractfs.snapshot.manifests.decode)")
    return manifest_from_v1(name, doc)


def manifest_from_v1(name: SnapName, doc: dict[str, Any]) -> Manifest:
    """The entries of a version 1 document (see :func:`read_doc`), each validated; bad ones in ``bad``."""
    version = 1
    seq = doc.get("seq")
    if seq != name.seq:
        raise CorruptCheckpointError(f"{name.key}: sequence {seq!r} inside differs from its name")
    created = doc.get("created_ns")
    node = doc.get("node")
    parent = doc.get("parent")
    raw_entries = doc.get("entries")
    if (not isinstance(created, int) or not isinstance(node, str) or not isinstance(raw_entries, list)
            or not (parent is None or isinstance(parent, str))):
        raise CorruptCheckpointError(f"{name.key}: header fields are missing or mistyped")
    if len(raw_entries) > MAX_ENTRIES:
        raise CorruptCheckpointError(f"{name.key}: {len(raw_entries)} entries, over the limit of {MAX_ENTRIES}; "
                                     "refused (not a manifest fractfs wrote)")
    entries: list[Entry] = []
    bad: list[str] = []
    seen: dict[tuple[str, str], int] = {}
    ok_areas: set[str] = set()
    for raw in raw_entries:
        e = _quick_file_entry(raw, ok_areas)
        if e is None:
            try:
                e = entry_from_json(raw)
            except BadEntry as exc:
                bad.append(str(exc))
                continue
            ok_areas.add(e.area)
        key = (e.area, e.path)
        if key in seen:
            seen[key] += 1
            continue
        seen[key] = 1
        entries.append(e)
    dups = {k for k, n in seen.items() if n > 1}
    if dups:
        # which copy is genuine is unknowable, so neither is restored
        entries = [e for e in entries if (e.area, e.path) not in dups]
        bad.extend(f"{a}:{p}: duplicate path in manifest" for a, p in sorted(dups))
    return Manifest(seq=seq, created_ns=created, node=node, parent=parent, entries=entries, bad=bad,
                    version=version, name=name)
