"""fractfs: big files on durable storage, hot state on node-local disk, checkpointed and restored at start.

Public API: :func:`init`, :func:`sync_now`, :func:`status`, :func:`shutdown`, :func:`resolve`, :class:`Tier`,
:class:`Config` and the exceptions in :mod:`fractfs.errors`.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Any, Optional, Union

from .config import Config, load_config
from .errors import (
    AlreadyExists,
    ClobberError,
    ConfigError,
    CorruptCheckpointError,
    FractfsError,
    ProvisionError,
    RestoreError,
    StoreError,
    StoreNotFound,
)
from .redact import RedactingFilter
from .tiers import Tier, TierResolver

from ._version import __version__ as __version__
__all__ = [
    "init", "sync_now", "status", "shutdown", "resolve", "Tier", "Config", "load_config",
    "FractfsError", "ConfigError", "ClobberError", "ProvisionError", "StoreError", "StoreNotFound",
    "AlreadyExists", "CorruptCheckpointError", "RestoreError", "__version__",
]

logging.getLogger("fractfs").addHandler(logging.NullHandler())
# nothing fractfs logs carries URL credentials, whatever handler the app attaches
logging.getLogger("fractfs").addFilter(RedactingFilter())

_PathLike = Union[str, "os.PathLike[str]"]
_lock = threading.RLock()
_runtime: Any = None  # fractfs.runtime.Runtime once init() has run


def init(root: Optional[_PathLike] = None, *, force: bool = False, start_daemon: bool = True,
         restore: bool = True) -> dict[str, Any]:
    """Load the config, provision the [dirs] symlinks and pins, restore the last checkpoint, start syncing.

    Blocks until the restore is complete, so the app never reads cold state. Raises ConfigError (nothing on
    disk touched) or ClobberError (a non-empty real directory is in the way; ``force=True`` migrates it to
    the Volume). Calling it again shuts the previous instance down first (with a final checkpoint).
    Returns :func:`status`.
    """
    global _runtime
    from .runtime import Runtime, load

    with _lock:
        config = load(root)
        if _runtime is not None:
            _runtime.shutdown(final_sync=True)
            _runtime = None
        rt = Runtime(config)
        rt.start(force=force, restore=restore, start_daemon=start_daemon)
        _runtime = rt
        return rt.status()


def sync_now() -> list[str]:
    """Checkpoint now; returns the app-relative paths of the files this snapshot holds new content for.

    That is every file that is new or whose bytes changed since the previous snapshot, whether they were
    uploaded now or were already in the store (identical content is stored once). Deleted files, directories,
    symlinks and changes of mtime or mode alone are not listed. Empty in passthrough mode, when nothing changed
    and when another node holds the checkpoint lease.
    """
    with _lock:
        rt = _runtime
    if rt is None:
        raise FractfsError("fractfs.sync_now(): call fractfs.init() first")
    if rt.closed:
        raise FractfsError("fractfs.sync_now(): fractfs was shut down; call fractfs.init() again")
    return list(rt.checkpoint())


def status() -> dict[str, Any]:
    """JSON-serialisable state: tiers of the [dirs] paths, store, last sync, bundle, warnings, ..."""
    with _lock:
        rt = _runtime
    if rt is None:
        return {"initialized": False, "daemon_running": False, "warnings": []}
    st: dict[str, Any] = rt.status()
    st["initialized"] = not rt.closed
    return st


def shutdown(final_sync: bool = True) -> None:
    """Stop the sync daemon, after a final checkpoint unless ``final_sync=False``. Idempotent."""
    global _runtime
    with _lock:
        rt = _runtime
    if rt is not None:
        rt.shutdown(final_sync=final_sync)


def resolve(path: _PathLike) -> Tier:
    """The tier of ``path`` (relative to the app root, or absolute inside it)."""
    from .config import relpath_for
    from .runtime import load

    with _lock:
        rt = _runtime
    config = rt.config if rt is not None else load(None)
    resolver = rt.resolver if rt is not None else TierResolver(config)
    rel = relpath_for(config, path)
    is_dir = (config.root / rel).is_dir() if rel else True
    return resolver.resolve(rel, is_dir)
