"""Format v2 manifests (docs/format.md §A4): gzip JSON whose entries are stored as columns.

v1 stores one JSON object per entry, and decoding it costs ~30 us per entry (a dict per entry, then a dict
lookup per field). v2 stores each field as one list (a column) and each file's content as a run of chunk refs
in flat chunk columns, so `json` builds a few long lists of ints and strings in C and the Python left is one
validating loop over entries. Paths are split into a directory table and names: a directory's path is
checked once, not once per file in it.

Every entry is validated; an entry that breaks a rule is refused alone (``Manifest2.refused``), as in v1.
Damage to the structure (a column of the wrong length, an unparsable table) makes the whole manifest damaged
(:class:`~fractfs.errors.CorruptCheckpointError`), since no entry could be trusted then.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import re
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Optional

from ..errors import CorruptCheckpointError
from .chunker import FORMAT_PARAMS
from .format import MAX_ENTRIES_V2, ChunkRef, UnknownFormatError

FORMAT_NAME = "fractfs-snapshot"
VERSION = 2

FILE, SYMLINK, DIR = "f", "l", "d"
_KINDS = frozenset("fld")

MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096
MAX_TARGET_BYTES = 4096
MAX_MODE = 0o7777
MAX_SIZE = (1 << 63) - 1
MIN_MTIME, MAX_MTIME = -(1 << 63), (1 << 63) - 1
#: A chunk (and so any pack member a manifest references) is at most the chunker's max_size.
MAX_CHUNK = FORMAT_PARAMS.max_size
#: Decompression bound, as in v1: real manifests shrink 3-10x, so this only stops crafted ones.
MIN_DECOMPRESSED_LIMIT = 64 << 20
EXPANSION_LIMIT = 100

CHUNKING = {
    "algorithm": "fastcdc-2020",
    "gear": "md5-64",
    "min_size": FORMAT_PARAMS.min_size,
    "avg_size": FORMAT_PARAMS.avg_size,
    "max_size": FORMAT_PARAMS.max_size,
    "normalization": FORMAT_PARAMS.normalization,
}

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEXSTR = re.compile(r"[0-9a-f]*")
_AREA = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


class Entry2(NamedTuple):
    area: str
    path: str
    kind: str  # FILE, SYMLINK or DIR
    mode: int = 0
    size: int = 0
    mtime_ns: int = 0
    target: Optional[str] = None
    sqlite: bool = False
    chunks: tuple[ChunkRef, ...] = ()


@dataclass
class Header:
    seq: int
    created_ns: int
    node: str
    parent: Optional[str]


def content_id(chunks: Sequence[ChunkRef]) -> str:
    """One digest naming a file's content without hashing its bytes again: the chunk's own SHA-256 for a
    one-chunk file (so a small file's id is the SHA-256 of its bytes, as in v1), else the SHA-256 of the
    concatenated raw chunk digests. Used where a single fingerprint per file is needed (stat cache,
    unrestored list)."""
    if len(chunks) == 1:
        return chunks[0].sha256
    return hashlib.sha256(b"".join(bytes.fromhex(c.sha256) for c in chunks)).hexdigest()


# -- encode ------------------------------------------------------------------------------------------------

def encode(header: Header, entries: Iterable[Entry2]) -> bytes:
    """The manifest's bytes (gzip, header mtime 0: equal content gives equal bytes). Entries are sorted by
    ``(area, path)``; the caller's order does not matter."""
    ents = sorted(entries, key=lambda e: (e.area, e.path))
    areas = sorted({e.area for e in ents})
    area_ix = {a: i for i, a in enumerate(areas)}
    dir_ix: dict[tuple[int, str], int] = {}
    dir_area: list[int] = []
    dir_path: list[str] = []
    pack_ix: dict[str, int] = {}
    names: list[str] = []
    dirs: list[int] = []
    kinds: list[str] = []
    modes: list[int] = []
    sizes: list[int] = []
    mtimes: list[int] = []
    nchunks: list[int] = []
    targets: list[str] = []
    sqlite: list[int] = []
    c_pack: list[int] = []
    c_off: list[int] = []
    c_len: list[int] = []
    c_sha: list[str] = []
    files = total = 0
    for i, e in enumerate(ents):
        parent, _, name = e.path.rpartition("/")
        key = (area_ix[e.area], parent)
        d = dir_ix.get(key)
        if d is None:
            d = dir_ix[key] = len(dir_path)
            dir_area.append(key[0])
            dir_path.append(parent)
        dirs.append(d)
        names.append(name)
        kinds.append(e.kind)
        modes.append(e.mode)
        sizes.append(e.size)
        mtimes.append(e.mtime_ns)
        nchunks.append(len(e.chunks))
        if e.kind == SYMLINK:
            targets.append(e.target or "")
        if e.sqlite:
            sqlite.append(i)
        if e.kind == FILE:
            files += 1
            total += e.size
        for c in e.chunks:
            p = pack_ix.get(c.pack)
            if p is None:
                p = pack_ix[c.pack] = len(pack_ix)
            c_pack.append(p)
            c_off.append(c.offset)
            c_len.append(c.length)
            c_sha.append(c.sha256)
    doc = {
        "format": FORMAT_NAME,
        "version": VERSION,
        "seq": header.seq,
        "created_ns": header.created_ns,
        "node": header.node,
        "parent": header.parent,
        "files": files,
        "bytes": total,
        "chunking": CHUNKING,
        "areas": areas,
        "packs": list(pack_ix),
        "dirs": {"area": dir_area, "path": dir_path},
        "entries": {"dir": dirs, "name": names, "kind": "".join(kinds), "mode": modes, "size": sizes,
                    "mtime_ns": mtimes, "nchunks": nchunks, "targets": targets, "sqlite": sqlite},
        "chunks": {"pack": c_pack, "offset": c_off, "length": c_len, "sha256": "".join(c_sha)},
    }
    # ASCII JSON as in v1: names that are not UTF-8 travel as \udcXX escapes; level 1 as in v1 (speed at
    # SIGTERM matters more than a few % of size)
    raw = json.dumps(doc, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    return gzip.compress(raw, compresslevel=1, mtime=0)


# -- decode ------------------------------------------------------------------------------------------------

@dataclass
class Manifest2:
    """A decoded, validated v2 manifest, kept as columns. ``entries()`` yields the valid entries;
    ``refused`` maps an entry's index to why it is not restorable."""

    header: Header
    areas: list[str]
    packs: list[str]
    paths: list[str]
    entry_area: list[int]
    kinds: str
    modes: list[int]
    sizes: list[int]
    mtimes: list[int]
    chunk_start: list[int]
    nchunks: list[int]
    targets: dict[int, str]
    sqlite: frozenset[int]
    c_pack: list[int]
    c_off: list[int]
    c_len: list[int]
    c_sha: str
    refused: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    def chunks_of(self, i: int) -> tuple[ChunkRef, ...]:
        s = self.chunk_start[i]
        packs, off, ln, sha = self.packs, self.c_off, self.c_len, self.c_sha
        return tuple(ChunkRef(packs[self.c_pack[k]], off[k], ln[k], sha[64 * k:64 * k + 64])
                     for k in range(s, s + self.nchunks[i]))

    def entry(self, i: int) -> Entry2:
        return Entry2(self.areas[self.entry_area[i]], self.paths[i], self.kinds[i], self.modes[i],
                      self.sizes[i], self.mtimes[i], self.targets.get(i), i in self.sqlite, self.chunks_of(i))

    def entries(self) -> Iterator[Entry2]:
        refused = self.refused
        for i in range(len(self.paths)):
            if i not in refused:
                yield self.entry(i)

    def referenced_packs(self) -> set[str]:
        """Pack ids that valid entries reference (what prune must keep)."""
        used = set()
        refused = self.refused
        for i in range(len(self.paths)):
            if i not in refused and self.nchunks[i]:
                s = self.chunk_start[i]
                used.update(self.c_pack[s:s + self.nchunks[i]])
        return {self.packs[p] for p in used}


def _bad(msg: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"v2 manifest damaged: {msg}")


def _gunzip(data: bytes) -> bytes:
    limit = max(MIN_DECOMPRESSED_LIMIT, EXPANSION_LIMIT * len(data))
    d = zlib.decompressobj(wbits=31)  # exactly one gzip member
    try:
        raw = d.decompress(data, limit)
    except zlib.error as e:
        raise _bad(f"not gzip ({e})") from None
    if d.unconsumed_tail:
        raise _bad(f"decompresses to more than {limit} bytes")
    if not d.eof or d.unused_data:
        raise _bad("truncated gzip stream or trailing data")
    return raw


def _col(obj: Any, key: str, n: Optional[int], what: str) -> list[Any]:
    v = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(v, list) or (n is not None and len(v) != n):
        raise _bad(f"{what}.{key} must be a list" + (f" of {n}" if n is not None else ""))
    return v


def _name_ok(name: object) -> bool:
    if type(name) is not str or not name or "/" in name or "\x00" in name or name in (".", ".."):
        return False
    # a character is at most 4 bytes: only long names need the encode
    return len(name) <= 63 or len(name.encode("utf-8", "surrogateescape")) <= MAX_NAME_BYTES


def _path_ok(path: str) -> bool:
    if len(path) > 1024 and len(path.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        return False
    return all(_name_ok(c) for c in path.split("/"))


def decode(data: bytes, expect_seq: Optional[int] = None) -> Manifest2:
    """Decode and validate a v2 manifest's bytes (already checked against the digest in its name, whose
    sequence number the caller passes as ``expect_seq``).

    Raises CorruptCheckpointError when the structure is damaged (UnknownFormatError for a newer version);
    individual bad entries land in ``refused``.
    """
    try:
        doc = json.loads(_gunzip(data))
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError included
        raise _bad(f"not JSON ({e})") from None
    return decode_doc(doc, expect_seq)


def decode_doc(doc: Any, expect_seq: Optional[int] = None) -> Manifest2:
    """:func:`decode` of an already parsed document (the store reader inflates and parses once for every
    version, see :func:`.manifests.decode`).

    Function length: one pass per table, kept together so the per-entry loop's locals stay local (speed).
    """
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise _bad("not a fractfs-snapshot manifest")
    version = doc.get("version")
    if type(version) is int and version > VERSION:
        raise UnknownFormatError(f"manifest format version {version} is newer than this fractfs reads "
                                 f"(up to {VERSION}); upgrade fractfs to use it")
    if version != VERSION:
        raise _bad(f"version {version!r} is not {VERSION} (a v1 manifest goes to format.decode_manifest)")
    seq, created, node, parent = doc.get("seq"), doc.get("created_ns"), doc.get("node"), doc.get("parent")
    if type(seq) is not int or seq < 0 or type(created) is not int or not isinstance(node, str) or not (
            parent is None or isinstance(parent, str)):
        raise _bad("header fields seq/created_ns/node/parent have wrong types")
    if expect_seq is not None and seq != expect_seq:
        raise _bad(f"sequence {seq} inside differs from its name ({expect_seq})")
    if doc.get("chunking") != CHUNKING:
        raise _bad(f"chunking parameters {doc.get('chunking')!r} are not format v2's")
    areas = doc.get("areas")
    if not isinstance(areas, list) or not all(isinstance(a, str) and _AREA.fullmatch(a) for a in areas) or (
            len(set(areas)) != len(areas)):
        raise _bad("areas must be a list of distinct area names")
    packs = doc.get("packs")
    if not isinstance(packs, list) or not all(isinstance(p, str) and _HEX64.fullmatch(p) for p in packs):
        raise _bad("packs must be a list of 64-hex pack ids")

    # directory table: a bad row refuses the entries in it, not the manifest
    dtab = doc.get("dirs")
    d_area = _col(dtab, "area", None, "dirs")
    d_path = _col(dtab, "path", len(d_area), "dirs")
    n_areas = len(areas)
    dir_ok: list[Optional[str]] = []  # None = fine, else the reason
    area_of_dir: list[int] = []  # 0 for a row without a valid area (its entries are refused anyway)
    for a, p in zip(d_area, d_path):
        area_of_dir.append(a if type(a) is int and 0 <= a < n_areas else 0)
        if type(a) is not int or not 0 <= a < n_areas:
            dir_ok.append("directory row names no area")
        elif type(p) is not str or (p != "" and not _path_ok(p)):
            dir_ok.append(f"bad directory path {p!r}")
        else:
            dir_ok.append(None)

    # chunk table
    ctab = doc.get("chunks")
    c_pack = _col(ctab, "pack", None, "chunks")
    nc = len(c_pack)
    c_off = _col(ctab, "offset", nc, "chunks")
    c_len = _col(ctab, "length", nc, "chunks")
    c_sha = ctab.get("sha256") if isinstance(ctab, dict) else None
    if not isinstance(c_sha, str) or len(c_sha) != 64 * nc or not _HEXSTR.fullmatch(c_sha):
        raise _bad("chunks.sha256 must be 64 lowercase hex characters per chunk")
    n_packs = len(packs)
    chunk_ok = bytearray(nc)
    for k, (p, o, ln) in enumerate(zip(c_pack, c_off, c_len)):
        if (type(p) is int and 0 <= p < n_packs and type(o) is int and 0 <= o <= MAX_SIZE
                and type(ln) is int and 0 < ln <= MAX_CHUNK):
            chunk_ok[k] = 1

    # entries
    etab = doc.get("entries")
    e_dir = _col(etab, "dir", None, "entries")
    n = len(e_dir)
    if n > MAX_ENTRIES_V2:
        raise _bad(f"{n} entries, over the limit of {MAX_ENTRIES_V2}")
    names = _col(etab, "name", n, "entries")
    kinds = etab.get("kind") if isinstance(etab, dict) else None
    if not isinstance(kinds, str) or len(kinds) != n:
        raise _bad(f"entries.kind must be a string of {n} characters")
    modes = _col(etab, "mode", n, "entries")
    sizes = _col(etab, "size", n, "entries")
    mtimes = _col(etab, "mtime_ns", n, "entries")
    nchunks = _col(etab, "nchunks", n, "entries")
    target_list = _col(etab, "targets", kinds.count(SYMLINK), "entries")
    sqlite_list = _col(etab, "sqlite", None, "entries")
    if not all(type(i) is int and 0 <= i < n for i in sqlite_list):
        raise _bad("entries.sqlite must list entry indices")
    sqlite = frozenset(sqlite_list)

    refused: dict[int, str] = {}
    paths: list[str] = []
    entry_area: list[int] = []
    chunk_start: list[int] = []
    targets: dict[int, str] = {}
    n_dirs = len(d_path)
    next_chunk = 0
    next_target = 0
    for i in range(n):
        d, name, kind, nch = e_dir[i], names[i], kinds[i], nchunks[i]
        chunk_start.append(next_chunk)
        if type(nch) is not int or nch < 0 or next_chunk + nch > nc:
            raise _bad(f"entry {i}: chunk count does not fit the chunk table")
        next_chunk += nch
        if kind == SYMLINK:
            target = target_list[next_target]
            next_target += 1
        if type(d) is not int or not 0 <= d < n_dirs:
            paths.append("")
            entry_area.append(0)
            refused[i] = "names no directory row"
            continue
        dpath = d_path[d]
        entry_area.append(area_of_dir[d])
        paths.append(f"{dpath}/{name}" if dpath else name if type(name) is str else "")
        why = dir_ok[d]
        if why is not None:
            refused[i] = why
        elif not _name_ok(name):
            refused[i] = f"bad name {name!r}"
        elif type(mt := mtimes[i]) is not int or not MIN_MTIME <= mt <= MAX_MTIME:
            refused[i] = "mtime_ns out of range"
        elif kind == FILE:
            m, sz = modes[i], sizes[i]
            if type(m) is not int or not 0 <= m <= MAX_MODE:
                refused[i] = "mode out of range"
            elif type(sz) is not int or not 0 <= sz <= MAX_SIZE:
                refused[i] = "size out of range"
            elif (sz == 0) != (nch == 0):
                refused[i] = "chunk count does not match the size"
            elif nch == 1:
                k = next_chunk - 1
                if not chunk_ok[k] or c_len[k] != sz:
                    refused[i] = "bad chunk reference"
            elif nch:
                s = next_chunk - nch
                if not all(chunk_ok[s:next_chunk]) or sum(c_len[s:next_chunk]) != sz:
                    refused[i] = "bad chunk references (or their lengths do not add up to the size)"
        elif kind == DIR:
            m = modes[i]
            if type(m) is not int or not 0 <= m <= MAX_MODE:
                refused[i] = "mode out of range"
            elif nch or sizes[i] != 0:
                refused[i] = "a directory has no content"
        elif kind == SYMLINK:
            if type(target) is not str or not target or "\x00" in target or (
                    len(target) > 1024 and len(target.encode("utf-8", "surrogateescape")) > MAX_TARGET_BYTES):
                refused[i] = "bad symlink target"
            elif nch or sizes[i] != 0:
                refused[i] = "a symlink has no content"
            else:
                targets[i] = target
        else:
            refused[i] = f"unknown kind {kind!r}"
    if next_chunk != nc:
        raise _bad(f"entries use {next_chunk} chunks, the chunk table has {nc}")

    _refuse_duplicates_and_shadowed(paths, entry_area, kinds, names, e_dir, area_of_dir, d_path, refused)
    header = Header(seq, created, node, parent)
    return Manifest2(header, areas, packs, paths, entry_area, kinds, modes, sizes, mtimes, chunk_start, nchunks,
                     targets, sqlite, c_pack, c_off, c_len, c_sha, refused)


def _refuse_duplicates_and_shadowed(paths: list[str], entry_area: list[int], kinds: str, names: list[Any],
                                    e_dir: list[Any], d_area: list[Any], d_path: list[Any],
                                    refused: dict[int, str]) -> None:
    """As in v1: every copy of a path that appears twice is refused, and so is everything below a path the
    manifest records as a file or symlink (restoring it would write through that file or link).

    Both checks avoid a per-entry set insert (the costliest part of decoding otherwise): writers emit entries
    sorted by ``(area index, path)``, so copies are neighbours; only an unsorted manifest pays for a dict.
    A file can only shadow a directory row if its name is one of the (few) components of directory paths.
    """
    ordered = True
    for i in range(1, len(paths)):
        a, b = entry_area[i - 1], entry_area[i]
        if a < b:
            continue
        if a > b or paths[i - 1] > paths[i]:
            ordered = False
            break
        if paths[i - 1] == paths[i]:
            refused[i] = refused[i - 1] = "path appears more than once"
    if not ordered:
        first: dict[tuple[int, str], int] = {}
        for i, key in enumerate(zip(entry_area, paths)):
            j = first.setdefault(key, i)
            if j != i:
                refused[i] = refused[j] = "path appears more than once"

    prefixes: set[tuple[Any, str]] = set()
    components: set[str] = set()
    for a, p in zip(d_area, d_path):
        if type(p) is str and p:
            parts = p.split("/")
            components.update(parts)
            prefixes.update((a, "/".join(parts[:k])) for k in range(1, len(parts) + 1))
    if not components:
        return
    blocked = {(entry_area[i], paths[i]) for i, name in enumerate(names)
               if kinds[i] != DIR and name in components and (entry_area[i], paths[i]) in prefixes}
    if not blocked:
        return
    shadowed = set()
    for d, (a, p) in enumerate(zip(d_area, d_path)):
        if type(p) is str and p:
            parts = p.split("/")
            if any((a, "/".join(parts[:k])) in blocked for k in range(1, len(parts) + 1)):
                shadowed.add(d)
    for i, d in enumerate(e_dir):
        if d in shadowed:
            refused.setdefault(i, "below a path recorded as a file or symlink")
