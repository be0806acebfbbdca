"""Where checkpoints go: one small :class:`Store` protocol and its backends.

``open_store(location)`` picks the backend from the location's shape: a URL (``s3://``, ``gs://``,
``memory://``, ``file://`` ...) goes through fsspec, a plain path is a mounted directory (local disk,
tmpfs, or a FUSE mount such as rclone or Databricks ``/Volumes``).
"""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from .base import BatchStore, Store, check_key, check_prefix
from .posix import PosixStore
from .transfer import get_many, parallel_map, put_many, retry

if TYPE_CHECKING:
    from .fsspec import FsspecStore

log = logging.getLogger("fractfs")

__all__ = [
    "BatchStore",
    "FsspecStore",
    "PosixStore",
    "Store",
    "check_key",
    "check_prefix",
    "get_many",
    "open_store",
    "parallel_map",
    "put_many",
    "retry",
]


def __getattr__(name: str) -> Any:
    # FsspecStore is imported on first use: with its S3 client it pulls in asyncio, ssl, http and xml (~40 ms
    # of a cold start), which a node whose Volume is a mounted path never needs.
    if name == "FsspecStore":
        from .fsspec import FsspecStore

        return FsspecStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_store(location: str, *, backend: str | None = None, transfers: int = 16) -> Store:
    """The store for ``location``.

    ``backend`` is the configured backend name (``volumes``/``local``/``s3``/``databricks``):

    - ``databricks`` (or a ``dbfs:`` location) → the Files API (:class:`DatabricksFilesStore`);
    - ``volumes`` with a ``/Volumes/...`` path that is not mounted here → the Files API as well: a Databricks
      App container reaches Unity Catalog Volumes over REST, not necessarily through a FUSE mount;
    - otherwise the location decides: ``scheme://...`` → :class:`FsspecStore`, a path → :class:`PosixStore`.
    """
    if not location:
        raise ValueError("open_store: empty location; set fractfs_VOLUME_ROOT (a mounted path or a URL)")
    if backend == "databricks" or (backend is None and location.startswith("dbfs:")):
        return _files_api(location, transfers, "backend 'databricks'")
    if backend == "volumes" and location.startswith("/Volumes/") and not _mounted_volume(location):
        return _files_api(location, transfers, "/Volumes is not mounted here")
    if "://" in location:
        from .fsspec import FsspecStore

        return FsspecStore(location)
    return PosixStore(location)


def _mounted_volume(location: str) -> bool:
    """True when the Volume part of ``/Volumes/<catalog>/<schema>/<volume>/...`` exists as a directory."""
    parts = location.strip("/").split("/")
    return os.path.isdir("/" + "/".join(parts[:4]))


def _files_api(location: str, transfers: int, why: str) -> Store:
    from .databricks import DatabricksFilesStore  # optional dependency (databricks-sdk)

    log.info("fractfs: using the Databricks Files API for %s (%s)", location, why)
    store: Store = DatabricksFilesStore(location, transfers=transfers)
    return store
