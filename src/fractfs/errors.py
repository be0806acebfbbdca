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


class VolumeChanged(StoreError):
    """A different Volume is mounted where this process's Volume was (its identity marker differs)."""


class ObjectRejected(StoreError):
    """The store refused one object for a reason that concerns that object (its size), not the store as a whole.

    ``key`` is the store key that was refused. A checkpoint can leave the file behind such an object out and
    still commit the rest.
    """

    def __init__(self, message: str, *, key: str = "") -> None:
        super().__init__(message)
        self.key = key


class StoreFull(ObjectRejected):
    """No space left on the store for this object (ENOSPC/EDQUOT)."""


class ObjectTooLarge(ObjectRejected):
    """The object is larger than the store takes in one object (EFBIG, the Files API's 5 GiB per request)."""


class CheckpointAborted(FractfsError):
    """A checkpoint was cut short because fractfs is stopping; the previous snapshot stays the checkpoint."""


class LeaseLost(FractfsError):
    """This node no longer holds (or cannot confirm) the checkpoint lease, so it must not commit."""


class LeaseHeld(FractfsError):
    """Another node holds the checkpoint lease, so this one may not write checkpoints (or prune) now."""


class SnapshotNotFound(CorruptCheckpointError, LookupError):
    """A snapshot id (full id, sequence number, hash prefix or short form) matches no snapshot, or several.

    Not damage: it subclasses CorruptCheckpointError only because ``restore(snapshot_id=...)`` and
    ``verify`` raised that type for an unknown id before this class existed, and callers' except clauses
    must keep catching it.
    """


class VolumeNotMounted(ProvisionError, StoreError):
    """The Volume is not there: not mounted, renamed, an empty mountpoint, or a wrong path.

    Raised before anything reads or writes it, because an unmounted Volume looks like an empty directory:
    a restore would find nothing and checkpoints would land on node-local disk while claiming durability.
    A ProvisionError (what ``init()`` raised for it) and a StoreError (what the ``fractfs`` command raised),
    so existing except clauses of either kind still catch it.
    """
