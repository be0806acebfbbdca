"""One reader and one writer for manifests of every format version (docs/format.md).

Readers of a snapshot (restore, checkpoint's base, verify, prune, the CLI) see one model: a
:class:`~.format.Manifest` of :class:`~.format.Entry` rows. A version 2 file of one chunk becomes an entry with
``pack``/``offset``/``sha256``, exactly like a v1 packed file; a file of several chunks carries them in
``Entry.chunks`` with its content id in ``sha256``. So the code that serves one-slice files serves both
versions, and only chunked files need their own path.

Checkpoints write version 2 (:func:`encode`). Entries that only v1 can express (a file in ``objects/``) must
have been re-chunked before; :func:`encode` refuses them rather than write a manifest that loses a file.
"""
from __future__ import annotations

import hashlib
from typing import Any

from ..errors import FractfsError
from . import manifest2
from .format import (
    DIR,
    FILE,
    MAX_ENTRIES_V2,
    MAX_MANIFEST_BYTES,
    SYMLINK,
    ChunkRef,
    Entry,
    Manifest,
    SnapName,
    manifest_from_v1,
    read_doc,
)

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_KIND_TO_V2 = {FILE: manifest2.FILE, SYMLINK: manifest2.SYMLINK, DIR: manifest2.DIR}
_NEW = tuple.__new__


def decode(name: SnapName, data: bytes) -> Manifest:
    """Verify and parse a stored manifest of any version this fractfs reads.

    Raises CorruptCheckpointError when damaged, UnknownFormatError for a version it does not read."""
    doc = read_doc(name, data)
    if doc["version"] == 1:
        return manifest_from_v1(name, doc)
    return _from_v2(name, manifest2.decode_doc(doc, name.seq))


def _from_v2(name: SnapName, m2: manifest2.Manifest2) -> Manifest:
    """The v2 columns as entries (one tuple per entry, made without NamedTuple's keyword machinery: a cold
    start converts one per file). Refused entries become ``bad`` messages, as in v1."""
    areas, paths, kinds, sizes, mtimes = m2.areas, m2.paths, m2.kinds, m2.sizes, m2.mtimes
    # json makes an int object per number, and entries keep theirs: one object per distinct mode (a tree has a
    # few) instead of one per entry saves 32 bytes a file (a cold start of a million files holds them all)
    shared: dict[Any, Any] = {}
    modes = [shared.setdefault(x, x) for x in m2.modes]
    e_area, start, nch = m2.entry_area, m2.chunk_start, m2.nchunks
    packs, c_pack, c_off, c_sha = m2.packs, m2.c_pack, m2.c_off, m2.c_sha
    refused, sqlite, targets = m2.refused, m2.sqlite, m2.targets
    entries: list[Entry] = []
    bad: list[str] = []
    append = entries.append
    for i in range(len(paths)):
        area = areas[e_area[i]] if areas else ""
        if i in refused:
            bad.append(f"{area}:{paths[i]}: {refused[i]}")
            continue
        kind = kinds[i]
        if kind == manifest2.FILE:
            n = nch[i]
            if n == 1:
                k = start[i]
                append(_NEW(Entry, (area, paths[i], FILE, modes[i], sizes[i], mtimes[i], c_sha[64 * k:64 * k + 64],
                                    packs[c_pack[k]], c_off[k], "", "", i in sqlite, ())))
            elif n == 0:
                append(_NEW(Entry, (area, paths[i], FILE, modes[i], 0, mtimes[i], EMPTY_SHA256, "", 0, "", "",
                                    i in sqlite, ())))
            else:
                chunks = m2.chunks_of(i)
                append(_NEW(Entry, (area, paths[i], FILE, modes[i], sizes[i], mtimes[i],
                                    manifest2.content_id(chunks), "", 0, "", "", i in sqlite, chunks)))
        elif kind == manifest2.DIR:
            append(Entry(area, paths[i], DIR, mode=modes[i]))
        else:
            append(Entry(area, paths[i], SYMLINK, mtime_ns=mtimes[i], target=targets[i]))
    h = m2.header
    return Manifest(seq=h.seq, created_ns=h.created_ns, node=h.node, parent=h.parent, entries=entries, bad=bad,
                    version=manifest2.VERSION, name=name)


def expressible(e: Entry) -> bool:
    """Whether a v2 manifest can describe ``e``: not a file in a v1 object, nor in a v1 pack slice longer than a
    chunk may be (docs/format.md). Such a file must be chunked first."""
    return e.type != FILE or (not e.object and (not e.pack or e.size <= manifest2.MAX_CHUNK))


def _to_v2(e: Entry) -> manifest2.Entry2:
    if e.type == FILE:
        refs = e.refs()
        if not expressible(e) or any(c.length > manifest2.MAX_CHUNK for c in refs):
            # a v1 object, or a v1 pack slice longer than a chunk: v2 cannot point at it (docs/format.md)
            raise ValueError(f"{e.label}: stored in a v1 form v2 cannot reference; it must be chunked first")
        return manifest2.Entry2(e.area, e.path, manifest2.FILE, e.mode, e.size, e.mtime_ns, None, e.sqlite, refs)
    if e.type == SYMLINK:
        return manifest2.Entry2(e.area, e.path, manifest2.SYMLINK, 0, 0, e.mtime_ns, e.target)
    return manifest2.Entry2(e.area, e.path, _KIND_TO_V2[e.type], e.mode)


def encode(m: Manifest) -> tuple[SnapName, bytes]:
    """Serialize ``m`` as a version 2 manifest; returns its name (carrying the SHA-256 of the bytes) and the
    bytes. Raises FractfsError when no node could read the result back (over the limits of docs/format.md)."""
    if len(m.entries) > MAX_ENTRIES_V2:
        raise FractfsError(f"a snapshot of {len(m.entries)} files, directories and links is over the limit of "
                           f"{MAX_ENTRIES_V2} entries (docs/format.md), so no node could restore it; exclude "
                           "generated or cache trees with [ignore] or put them under [dirs]")
    data = manifest2.encode(manifest2.Header(m.seq, m.created_ns, m.node, m.parent), map(_to_v2, m.entries))
    if len(data) > MAX_MANIFEST_BYTES:
        raise FractfsError(f"this snapshot's manifest would be {len(data)} bytes, over the limit of "
                           f"{MAX_MANIFEST_BYTES} (docs/format.md), so no node could restore it; exclude "
                           "generated or cache trees with [ignore] or put them under [dirs]")
    return SnapName(m.seq, hashlib.sha256(data).hexdigest()), data


def chunk_index(entries: Any) -> dict[str, ChunkRef]:
    """SHA-256 -> stored slice, for every chunk (and one-slice file) of ``entries`` a v2 checkpoint may point at
    without uploading: v2 chunks, and v1 pack slices no longer than a chunk may be (docs/format.md)."""
    out: dict[str, ChunkRef] = {}
    limit = manifest2.MAX_CHUNK
    for e in entries:
        if e.type != FILE:
            continue
        if e.chunks:
            for c in e.chunks:
                out.setdefault(c.sha256, c)
        elif e.pack and 0 < e.size <= limit:
            out.setdefault(e.sha256, ChunkRef(e.pack, e.offset, e.size, e.sha256))
    return out
