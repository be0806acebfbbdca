"""Where checkpoints go: one small :class:`Store` protocol and its backends.

``open_store(location)`` picks the backend from the location's shape: a URL (``s3://``, ``gs://``,
``memory://``, ``file://`` ...) goes through fsspec, a plain path is a mounted directory (local disk,
tmpfs, or a FUSE mount such as rclone or Databricks ``/Volumes``).
"""
from __future__ import annotations

import logging
import os

from .base import BatchStore, Store, check_key, check_prefix
from .fsspec import FsspecStore
from .posix import PosixStore
from .transfer import get_many, parallel_map, put_many, retry

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


def open_store(location: str, *, backend: str | None = None, transfers: int = 16,
               fast_path: bool = True) -> Store:
    """The store for ``location``.

    ``backend`` is the configured backend name (``volumes``/``local``/``s3``/``databricks``):

    - ``databricks`` (or a ``dbfs:`` location) → the Files API (:class:`DatabricksFilesStore`);
    - ``volumes`` with a ``/Volumes/...`` path that is not mounted here → the Files API as well: a Databricks
      App container reaches Unity Catalog Volumes over REST, not necessarily through a FUSE mount;
    - otherwise the location decides: ``scheme://...`` → :class:`FsspecStore`, a path → :class:`PosixStore`.

    ``fast_path`` is ``Config.s3_fast_path``, handed to :class:`FsspecStore` (it matters for S3 only).
    """
    if not location:
        raise ValueError("open_store: empty location; set fractfs_VOLUME_ROOT (a mounted path or a URL)")
    if backend == "databricks" or (backend is None and location.startswith("dbfs:")):
        return _files_api(location, transfers, "backend 'databricks'")
    if backend == "volumes" and location.startswith("/Volumes/") and not _mounted_volume(location):
        return _files_api(location, transfers, "/Volumes is not mounted here")
    if "://" in location:
        return FsspecStore(location, fast_path=fast_path)
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
