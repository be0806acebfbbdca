"""Putting captured files on the store: small ones into packs, large ones streamed as their own object.

Identical content is stored once per checkpoint (:meth:`Packer.place` returns the location already chosen for
the same sha256). Packs are joined, hashed and written on the upload pool; a large file is streamed straight
from its path (or from the SQLite copy) and reports whether its source provably did not change meanwhile.

Every upload has its own future (:meth:`NewLoc.upload`): the engine decides per file what made it to the
store. Under a cutoff (the bounded final checkpoint) the work comes in bounded pieces, so what is finished
when time runs out is really finished: packs are sealed at :data:`DEADLINE_PACK` bytes, and large objects are
streamed one at a time in the order they were placed (the engine places the most recently modified first).
"""
from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..localfile import unlink_if_present
from ..stores.base import Store
from .capture import MiB, Captured
from .format import object_key, pack_key
from .statcache import stat_facts
from .xfer import Uploader, check_stored, store_blob

log = logging.getLogger("fractfs")


class Pack:
    """A pack being filled. Its id (the sha256 of its bytes) is known once sealed."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.id = ""
        #: the upload, once sealed
        self.future: Future[Any] | None = None

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
class NewLoc:
    """Where this checkpoint put (or is putting) one content."""

    pack: Pack | None = None
    offset: int = 0
    object: str = ""
    #: For streamed large files: resolves to True when the upload finished and the source was unchanged.
    future: Future[bool] | None = None

    def upload(self) -> Future[Any] | None:
        """The upload this location depends on (the pack's, or the object's stream)."""
        return self.pack.future if self.pack is not None else self.future


#: Pack size under a cutoff: small enough that packs keep landing while the final checkpoint runs.
DEADLINE_PACK = 4 * MiB


class Packer:
    """One checkpoint's uploads: packs filled in the checkpoint loop's order, large files streamed."""

    def __init__(self, store: Store, transfers: int, pack_size: int, until: float | None = None):
        self.store = store
        self.up = Uploader(store, transfers, until=until, large_lanes=None if until is None else 1)
        self.pack_size = max(pack_size if until is None else min(pack_size, DEADLINE_PACK), 1)
        self.pack = Pack()
        self.pending: dict[str, NewLoc] = {}  # sha256 -> where this run put it
        self.uploaded = 0  # bytes handed to the store so far (packs and objects)

    def place(self, cap: Captured) -> NewLoc:
        """Queue ``cap``'s content for the store (once per content) and say where it will be."""
        loc = self.pending.get(cap.sha)
        if loc is not None:
            if cap.temp and cap.upload_path:
                unlink_if_present(cap.upload_path)
            return loc
        if cap.data is not None:
            loc = NewLoc(pack=self.pack, offset=self.pack.add(cap.data))
            if self.pack.size >= self.pack_size:
                self.seal()
        else:
            assert cap.upload_path is not None
            fut: Future[bool] = self.up.submit(streamer(self.store, object_key(cap.sha), cap), cap.size,
                                               large=True)
            loc = NewLoc(object=cap.sha, future=fut)
            self.uploaded += cap.size
        self.pending[cap.sha] = loc
        return loc

    def seal(self) -> None:
        """Send the current pack (if any) and start a new one."""
        if not self.pack.parts:
            return
        sealed, self.pack = self.pack, Pack()
        self.uploaded += sealed.size
        # joined, hashed and stored on the upload pool: on a big checkpoint, hashing every pack a second
        # time in this thread kept the readers waiting for a third of the run. Its id is read after finish().
        sealed.future = self.up.submit(lambda: sealed.store(self.store), sealed.size)

    def finish(self) -> None:
        """Seal the last pack and wait for every upload (under a cutoff: until then); raises the first failure
        that concerns the store rather than one object (see :class:`~.xfer.Uploader`)."""
        self.seal()
        self.up.wait()

    def close(self, *, wait: bool = True) -> None:
        self.up.close(wait=wait)


def streamer(store: Store, key: str, cap: Captured) -> Callable[[], bool]:
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
                    if before is None or stat_facts(os.lstat(path)) != before:
                        return False
                except OSError:
                    return False
                raise
            try:
                unchanged = before is not None and stat_facts(os.lstat(path)) == before
            except OSError:
                unchanged = False
            if not present:
                if unchanged:
                    check_stored(store, key, cap.size)
                else:
                    _drop(store, key)
            return unchanged
        finally:
            if cap.temp:
                unlink_if_present(path)

    return run


def _drop(store: Store, key: str) -> None:
    """Remove an object streamed from a source that changed under the upload: its bytes may not be the content
    its name promises, and a later checkpoint finding a complete-looking copy would reference it unread."""
    try:
        store.delete(key)
    except Exception as exc:  # noqa: BLE001 - left for prune; a later upload of this content replaces it
        log.debug("fractfs: could not remove %s after its source changed: %s", key, exc)
