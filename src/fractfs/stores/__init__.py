"""Where checkpoints go: one small :class:`Store` protocol and its backends.

``open_store(location)`` picks the backend from the location's shape: a URL (``s3://``, ``gs://``,
``memory://``, ``file://`` ...) goes through fsspec, a plain path is a mounted directory (local disk,
tmpfs, or a FUSE mount such as rclone or Databricks ``/Volumes``).
"""
from __future__ import annotations

from .base import BatchStore, Store, check_key, check_prefix
from .fsspec import FsspecStore
from .posix import PosixStore
from .transfer import get_many, parallel_map, put_many, retry

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


def open_store(location: str, *, backend: str | None = None) -> Store:
    """The store for ``location``.

    ``backend`` is the configured backend name (``volumes``/``local``/``s3``/``databricks``); only
    ``databricks`` changes the choice (the Files API instead of a mount). Otherwise the location decides:
    ``scheme://...`` → :class:`FsspecStore`, anything else → :class:`PosixStore`.
    """
    if not location:
        raise ValueError("open_store: empty location; set fractfs_VOLUME_ROOT (a mounted path or a URL)")
    if backend == "databricks" or (backend is None and location.startswith("dbfs:")):
        from .databricks import DatabricksFilesStore  # optional dependency (databricks-sdk)

        store: Store = DatabricksFilesStore(location)
        return store
    if "://" in location:
        return FsspecStore(location)
    return PosixStore(location)
