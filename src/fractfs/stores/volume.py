"""Is the Volume still the one we started with? A store wrapper that checks before every call.

A mounted Volume can go away under a running app: unmounted, its FUSE daemon restarted, the directory renamed.
What is left at its path is then an empty mountpoint on the node's own disk, and a store that simply writes
there turns "durable" checkpoints into files that vanish with the node. Worse, once the Volume comes back its
real contents are hidden behind whatever was written meanwhile.

So the checkpoint area carries an identity marker, ``volume.id`` (random bytes, created exclusively on first
use), and :class:`VolumeGuard` checks before each store call that the Volume directory exists and that the
marker is still there with the same bytes. The check is a ``stat`` of each, repeated at most every ``ttl``
seconds while all is well (the marker is only read again when its stat changes); once it fails, every call
re-checks, so the store works again as soon as the same Volume is back. While it fails, every call raises
:class:`~fractfs.errors.VolumeNotMounted` or :class:`~fractfs.errors.VolumeChanged` and nothing is written.

Only stores on a mounted path (:class:`PosixStore`) need this: an object store or the Files API has no local
mountpoint to fall back onto, a Volume that is gone there fails the requests themselves.
"""
from __future__ import annotations

import builtins
import logging
import os
import secrets
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import AlreadyExists, StoreError, StoreNotFound, VolumeChanged, VolumeNotMounted
from .base import Parts, Store, get_range_into, put_parts, reads_like, writes_like
from .posix import PosixStore

log = logging.getLogger("fractfs")

#: Key of the identity marker, at the top of the checkpoint area.
MARKER_KEY = "volume.id"
#: How long a successful check is trusted, in seconds. A stat or two per second costs nothing next to a
#: checkpoint; a window this short means at most a second of calls can pass after the Volume went away
#: (and PosixStore itself refuses to recreate a checkpoint area that vanished, so even those write nothing).
DEFAULT_TTL = 1.0

_MISSING = (FileNotFoundError, NotADirectoryError)


def new_marker() -> bytes:
    """Content of a fresh marker: one line of JSON with a random id (the bytes as a whole are the identity)."""
    return (f'{{"format": "fractfs-volume", "version": 1, "id": "{secrets.token_hex(16)}", '
            f'"created": {time.time():.3f}}}\n').encode()


class VolumeGuard:
    """``inner`` (rooted at the checkpoint area on ``volume_path``), refusing every call while the Volume is
    missing or replaced. See the module docstring; build it with :func:`guard`."""

    def __init__(self, inner: PosixStore, volume_path: Path | str, *, ttl: float = DEFAULT_TTL) -> None:
        self.inner = inner
        self.url = inner.url
        self.volume_path = os.path.abspath(os.fspath(volume_path))
        self.marker_path = os.fspath(inner.root).rstrip("/") + "/" + MARKER_KEY
        self.ttl = ttl
        self._lock = threading.Lock()
        self._identity: bytes | None = None      # the marker's bytes, once seen
        self._marker_stat: tuple[int, ...] | None = None
        self._ok_until = 0.0
        self._unmarked = False                   # the marker could not be created (read-only Volume)
        #: Why the last check failed (None while the Volume is fine): for status() and monitoring.
        self.problem: str | None = None

    def __repr__(self) -> str:
        return f"VolumeGuard({self.inner!r}, {self.volume_path!r})"

    @property
    def identity(self) -> bytes | None:
        """The marker bytes this guard holds the Volume to (None before the first check)."""
        return self._identity

    # -- the check --------------------------------------------------------------------------------------------
    def invalidate(self) -> None:
        """Forget the last good check, so the next call looks at the Volume again (a call just failed in a way
        that says the Volume went away within the ``ttl``)."""
        self._ok_until = 0.0

    def check(self) -> None:
        """Raise VolumeNotMounted/VolumeChanged unless the Volume is present and still the same one."""
        if time.monotonic() < self._ok_until:
            return
        with self._lock:
            if time.monotonic() < self._ok_until:
                return
            try:
                self._check_now()
            except StoreError as exc:
                if self.problem is None:
                    log.error("fractfs: %s", exc)
                self.problem = str(exc)
                raise
            if self.problem is not None:
                log.warning("fractfs: the Volume %s is back (same identity); store calls resume", self.volume_path)
                self.problem = None
            self._ok_until = time.monotonic() + self.ttl

    def _check_now(self) -> None:
        vol = self.volume_path
        try:
            vst = os.stat(vol)
        except _MISSING:
            raise VolumeNotMounted(
                f"the Volume {vol} does not exist (unmounted or renamed); fractfs writes nothing until it is "
                "back: mount it again at that path") from None
        except OSError as exc:
            raise VolumeNotMounted(f"the Volume {vol} cannot be reached ({exc.strerror or exc}); remount it "
                                   "(a FUSE mount whose daemon died answers like this)") from exc
        if not stat.S_ISDIR(vst.st_mode):
            raise VolumeNotMounted(f"the Volume {vol} is not a directory any more; mount the Volume there again")
        try:
            mst = os.stat(self.marker_path)
        except _MISSING:
            mst = None
        except OSError as exc:
            raise VolumeNotMounted(f"the Volume {vol} cannot be reached: stat {self.marker_path}: "
                                   f"{exc.strerror or exc}; remount it") from exc
        if mst is None:
            self._no_marker()
            return
        sig = (mst.st_dev, mst.st_ino, mst.st_size, mst.st_mtime_ns)
        if sig == self._marker_stat:
            return
        try:
            seen = self.inner.get(MARKER_KEY)
        except StoreNotFound:
            self._no_marker()
            return
        if self._identity is None:
            self._identity = seen
            self._unmarked = False
        elif seen != self._identity:
            raise VolumeChanged(
                f"the Volume at {vol} is not the one this process was using: its identity marker "
                f"{self.marker_path} holds other bytes (another Volume mounted there, or the checkpoint area "
                "replaced). fractfs writes nothing to it; mount the original Volume again, or restart the app "
                "to adopt this one")
        self._marker_stat = sig

    def _no_marker(self) -> None:
        if self._identity is not None:
            raise VolumeNotMounted(
                f"the Volume {self.volume_path} is not mounted any more: its identity marker {self.marker_path} "
                "is gone (an empty mountpoint is left on local disk). fractfs writes nothing there; mount the "
                "Volume again and checkpoints resume by themselves")
        if self._unmarked:
            return
        # First use of this checkpoint area (or one written before markers existed): give it an identity.
        # Exclusive, so two nodes starting together end up with the same marker.
        try:
            self.inner.put(MARKER_KEY, new_marker(), exclusive=True)
        except AlreadyExists:
            pass
        except StoreError as exc:
            # A read-only Volume (restore --to, status) still works; only the identity check is lost.
            log.warning("fractfs: cannot create the Volume identity marker %s (%s); the Volume is checked for "
                        "presence only", self.marker_path, exc)
            self._unmarked = True
            return
        self._identity = self.inner.get(MARKER_KEY)
        try:
            mst = os.stat(self.marker_path)
            self._marker_stat = (mst.st_dev, mst.st_ino, mst.st_size, mst.st_mtime_ns)
        except OSError:
            self._marker_stat = None  # read again next time

    # -- Store protocol -------------------------------------------------------------------------------------
    def put(self, key: str, data: bytes, *, exclusive: bool = False) -> None:
        self.check()
        self.inner.put(key, data, exclusive=exclusive)

    @writes_like(put)
    def put_parts(self, key: str, parts: Parts, *, exclusive: bool = False) -> None:
        self.check()
        put_parts(self.inner, key, parts, exclusive=exclusive)

    def put_file(self, key: str, path: Path) -> None:
        self.check()
        self.inner.put_file(key, path)

    def get(self, key: str) -> bytes:
        self.check()
        return self.inner.get(key)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        self.check()
        return self.inner.get_range(key, start, length)

    @reads_like(get_range)
    def get_range_into(self, key: str, start: int, into: memoryview) -> int:
        self.check()
        return get_range_into(self.inner, key, start, into)

    def get_file(self, key: str, path: Path) -> None:
        self.check()
        self.inner.get_file(key, path)

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        self.check()
        return self.inner.list(prefix)

    def size(self, key: str) -> int | None:
        self.check()
        return self.inner.size(key)

    def delete(self, key: str) -> None:
        self.check()
        self.inner.delete(key)

    def put_many(self, items: Sequence[tuple[str, bytes]], *, workers: int = 32) -> None:
        self.check()
        self.inner.put_many(items, workers=workers)

    def get_many(self, keys: Sequence[str], *, workers: int = 32) -> builtins.list[bytes]:
        self.check()
        return self.inner.get_many(keys, workers=workers)

    def __getattr__(self, name: str) -> Any:
        # Informational attributes of the backend (root, ...) stay reachable; "inner" itself is always set.
        if name.startswith("__") or name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def guard(store: Store, volume_path: Path | str | None, *, ttl: float = DEFAULT_TTL) -> Store:
    """``store`` wrapped in a :class:`VolumeGuard` when it lives on a mounted path, else ``store`` itself.

    ``volume_path`` is the Volume's directory (the configured ``volume_root``); the store is expected to be
    rooted at the checkpoint area inside it. None (no local Volume) or a store that is not a PosixStore is
    returned unchanged.
    """
    if volume_path is None or not isinstance(store, PosixStore):
        return store
    return VolumeGuard(store, volume_path, ttl=ttl)
