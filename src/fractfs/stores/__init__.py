"""Where checkpoints go: one small :class:`Store` protocol and its backends.

``open_store(location)`` picks the backend from the location's shape: a URL (``s3://``, ``gs://``,
``memory://``, ``file://`` ...) goes through fsspec, a plain path is a mounted directory (local disk,
tmpfs, or a FUSE mount such as rclone or Databricks ``/Volumes``). Opening the store of a whole config
(backend choice plus the unmounted-Volume check) is :func:`fractfs.stores.open.open_store`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import BatchStore, Store, check_key, check_prefix
from .open import open_location as open_store
from .posix import PosixStore
from .transfer import get_many, parallel_map, put_many, retry

if TYPE_CHECKING:
    from .fsspec import FsspecStore

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

