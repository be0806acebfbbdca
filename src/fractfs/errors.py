"""Exception hierarchy. Every message names the file/key/path at fault and what to do."""
from __future__ import annotations

from typing import Any

from .redact import redact


class FractfsError(Exception):
    """Base class for every error fractfs raises on purpose.

    Its text never carries URL credentials: messages often quote a store URL or wrap a botocore/aiohttp error
    that names the endpoint, so the one constructor every fractfs error goes through redacts them.
    """

    def __init__(self, *args: Any) -> None:
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class ConfigError(FractfsError, ValueError):
    """`.fractfs.toml` or a `fractfs_*` environment variable is invalid. Raised before anything on disk changes."""


class ClobberError(FractfsError):
    """Provisioning would replace a non-empty real directory; nothing was touched."""


class ProvisionError(FractfsError):
    """The symlink layout could not be set up (permissions, a file in the way, ...)."""


class StoreError(FractfsError):
    """The durable store is unreachable or refused an operation."""


class StoreNotFound(StoreError, KeyError):
    """A key does not exist in the store."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "not found"


class AlreadyExists(StoreError):
    """An exclusive create found the key already present."""


class CorruptCheckpointError(FractfsError):
    """A manifest or object failed verification (hash mismatch, truncation, bad format)."""


class RestoreError(FractfsError):
    """A restore could not complete (disk full, permission denied, ...); nothing half-written is left."""
