"""Putting file content on the store as format v2 chunks in packs (docs/format.md §A3).

Content arrives as chunks that already carry their SHA-256 (:mod:`.capture` cut and hashed them while reading
the file, each byte once). :meth:`Packer.put` places one chunk: a chunk the snapshot being extended already
stores (:class:`Known`) or one this checkpoint already placed is only referenced; a new one is appended to the
pack being filled. A pack is sealed at ``pack_size``, its id taken from its index (40 bytes per member, never
a second pass over its bytes), and uploaded on the upload pool while reading goes on. Reading waits while
:func:`inflight_bound` bytes of sealed packs are waiting for the store (two packs per transfer, at most
:data:`.xfer.MAX_INFLIGHT_BYTES`), so a file of any size is never held in memory.

A file is committed only when every pack holding one of its new chunks was stored (:meth:`Packer.outcome`):
a pack the store refused (:class:`~fractfs.errors.ObjectRejected`) leaves every file with a chunk in it out,
and under a cutoff (the bounded final checkpoint) so does a pack still uploading. Packs are sealed at
:data:`DEADLINE_PACK` bytes then, so that what finished before the cutoff is really finished.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from typing import Any, NamedTuple, Union

from ..errors import ObjectRejected
from ..stores.base import Store
from .chunker import MIB
from .format import FILE, ChunkRef, Entry, pack_key
from .manifest2 import MAX_CHUNK
from .pack2 import RECORD, TRAILER, Bytes, PackWriter
from .xfer import MAX_INFLIGHT_BYTES, Uploader, store_parts

log = logging.getLogger("fractfs")

#: Pack size under a cutoff: small enough that packs keep landing while the final checkpoint runs.
DEADLINE_PACK = 4 * MIB


def inflight_bound(transfers: int, pack_size: int) -> int:
    """Bytes of sealed packs that may wait for the store before reading pauses: enough for every transfer to
    have one pack uploading and one ready, never more than MAX_INFLIGHT_BYTES."""
    return min(MAX_INFLIGHT_BYTES, max(4, 2 * transfers) * pack_size)


class Pack:
    """A pack of this checkpoint: filled, then sealed (its id known) and uploaded (``future``)."""

    def __init__(self) -> None:
        self.writer: PackWriter | None = PackWriter()
        self.id = ""
        self.future: Future[Any] | None = None


class Slot(NamedTuple):
    """One chunk of a file: in a pack of this checkpoint, or in a stored pack (``where`` is then its id)."""

    where: Union[Pack, str]
    offset: int
    length: int
    sha256: str

    def ref(self) -> ChunkRef:
        """The chunk as a manifest records it (for a pack of this checkpoint: once sealed)."""
        w = self.where
        return ChunkRef(w if isinstance(w, str) else w.id, self.offset, self.length, self.sha256)


class Known:
    """The chunks a checkpoint may reference without uploading: those the snapshot it extends stores, by
    SHA-256 (the same set as :func:`.manifests.chunk_index`). A file stored as one slice is found through the
    base's per-file index (``dedup``, by the file's SHA-256, which is its chunk's), so only files of several
    chunks need an index of their own: a base of a million small files costs no second million-entry dict."""

    def __init__(self, entries: Iterable[Entry], dedup: Mapping[str, Entry]) -> None:
        self.dedup = dedup
        self.chunks: dict[str, ChunkRef] = {}
        for e in entries:
            if e.chunks:
                for c in e.chunks:
                    self.chunks.setdefault(c.sha256, c)

    def get(self, sha: str) -> ChunkRef | None:
        c = self.chunks.get(sha)
        if c is not None:
            return c
        e = self.dedup.get(sha)
        # a v1 object, or a v1 slice longer than a chunk, cannot be pointed at by v2 (docs/format.md §A5)
        if e is not None and e.type == FILE and e.pack and not e.chunks and 0 < e.size <= MAX_CHUNK:
            return ChunkRef(e.pack, e.offset, e.size, sha)
        return None


#: Outcomes of :meth:`Packer.outcome`.
STORED, MISSED, REJECTED = "stored", "missed", "rejected"


class Packer:
    """One checkpoint's chunks: each new one into a pack once, in the order they come."""

    def __init__(self, store: Store, transfers: int, pack_size: int, known: Known | None = None,
                 until: float | None = None):
        self.store = store
        self.pack_size = max(pack_size if until is None else min(pack_size, DEADLINE_PACK), 1)
        self.up = Uploader(store, transfers, until=until, max_inflight=inflight_bound(transfers, self.pack_size))
        #: the store's largest object (a Files API request, lowered in tests): packs stay under it, so only a
        #: chunk that is larger by itself is refused, not the small files that would share its pack
        limit = getattr(store, "max_object_size", None)
        self.max_object = limit if isinstance(limit, int) and limit > 0 else None
        self.known = known
        self.pack = Pack()
        self.placed: dict[str, Slot] = {}  # sha256 -> where this checkpoint put it
        self.uploaded = 0  # bytes handed to the store so far
        self.new_chunks = 0

    def has(self, digest: bytes) -> bool:
        """Whether a chunk with this digest is already placed or stored (:meth:`put` would not add it)."""
        sha = digest.hex()
        return sha in self.placed or (self.known is not None and self.known.get(sha) is not None)

    def put(self, digest: bytes, data: Bytes, copy: bool = False) -> Slot:
        """Place one chunk (``data``, whose SHA-256 is ``digest``) and say where it is. ``copy``: ``data`` is a
        view into a buffer that will be reused (the streaming chunker's), so a new chunk's bytes are copied;
        otherwise the pack keeps the view until it is stored."""
        sha = digest.hex()
        slot = self.placed.get(sha)
        if slot is not None:
            return slot
        ref = self.known.get(sha) if self.known is not None else None
        if ref is not None:
            slot = Slot(ref.pack, ref.offset, ref.length, sha)
        else:
            if self.max_object is not None and self._over_limit(len(data)):
                self.seal()
            pack = self.pack
            assert pack.writer is not None
            slot = Slot(pack, pack.writer.add(digest, bytes(data) if copy else data), len(data), sha)
            self.new_chunks += 1
            if pack.writer.size >= self.pack_size:
                self.seal()
        self.placed[sha] = slot
        return slot

    def _over_limit(self, n: int) -> bool:
        """Whether a member of ``n`` bytes would take the current (non-empty) pack over the store's limit."""
        w = self.pack.writer
        assert w is not None and self.max_object is not None
        return bool(len(w)) and w.size + n + (len(w) + 1) * RECORD.size + TRAILER.size > self.max_object

    def put_copy(self, digest: bytes, data: Bytes) -> Slot:
        """:meth:`put` of a chunk whose buffer the caller reuses (the streaming chunker's)."""
        return self.put(digest, data, copy=True)

    def seal(self) -> None:
        """Send the current pack (if it has members) and start a new one."""
        pack = self.pack
        writer = pack.writer
        if writer is None or not len(writer):
            return
        self.pack, pack.writer = Pack(), None
        pack.id, parts = writer.seal()
        size = sum(len(p) for p in parts)
        self.uploaded += size
        store, key = self.store, pack_key(pack.id)
        # written on the upload pool while the reading thread goes on (as parts: see store_parts)
        pack.future = self.up.submit(lambda: store_parts(store, key, parts), size)

    def finish(self) -> None:
        """Seal the last pack and wait for every upload (under a cutoff: until then); raises the first failure
        that concerns the store rather than one pack (see :class:`~.xfer.Uploader`)."""
        self.seal()
        self.up.wait()

    def close(self, *, wait: bool = True) -> None:
        self.up.close(wait=wait)

    @staticmethod
    def outcome(slots: Iterable[Slot]) -> tuple[str, str]:
        """Whether a file whose chunks are ``slots`` is on the store, after :meth:`finish`: (STORED, ""),
        (MISSED, "") when a pack of it had not finished by the cutoff, or (REJECTED, the store's reason)."""
        seen: set[int] = set()
        for s in slots:
            pack = s.where
            if isinstance(pack, str) or id(pack) in seen:
                continue
            seen.add(id(pack))
            fut = pack.future
            if fut is None or not fut.done() or fut.cancelled():
                return MISSED, ""
            exc = fut.exception()
            if isinstance(exc, ObjectRejected):
                return REJECTED, str(exc)
            if exc is not None:
                raise exc  # Packer.finish raises these first; kept for safety
        return STORED, ""
