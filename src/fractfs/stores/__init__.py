"""Where checkpoints go: one small :class:`Store` protocol and its backends.

``open_store(location)`` picks the backend from the location's shape: a URL (``s3://``, ``gs://``,
``memory://``, ``file://`` ...) goes through fsspec, a plain path is a mounted directory (local disk,
tmpfs, or a FUSE mount such as rclone or Databricks ``/Volumes``). Opening the store of a whole config
(backend choice plus the unmounted-Volume check) is :func:`fractfs.stores.open.open_store`.
"""
from __future__ import annotations

from .base import BatchStore, Store, check_key, check_prefix
from .fsspec import FsspecStore
from .open import open_location as open_store
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
