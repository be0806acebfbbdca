"""Checkpoints as snapshots: content-addressed packs and objects, a checksummed manifest per generation.

The on-store format is specified in docs/format.md. Entry points:

- :func:`checkpoint` — snapshot the selected files of some areas if anything changed
- :func:`restore` — bring a snapshot back (default: newest valid, only files missing locally)
- :func:`list_snapshots`, :func:`latest_paths`, :func:`prune`, :func:`verify`
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .format import FORMAT_VERSION, Entry
from .scan import Want

if TYPE_CHECKING:
    from .engine import CheckpointResult, checkpoint
    from .maint import PruneResult, SnapshotInfo, VerifyResult, latest_paths, list_snapshots, prune, verify
    from .restorer import RestoreResult, restore

# The rest is imported on first use: a cold start imports the restorer, never the checkpoint engine with its
# capture and chunker (about 20 ms), which only the first checkpoint needs, after init() has returned.
_LAZY = {
    "CheckpointResult": "engine", "checkpoint": "engine",
    "PruneResult": "maint", "SnapshotInfo": "maint", "VerifyResult": "maint", "latest_paths": "maint",
    "list_snapshots": "maint", "prune": "maint", "verify": "maint",
    "RestoreResult": "restorer", "restore": "restorer",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "FORMAT_VERSION",
    "CheckpointResult",
    "Entry",
    "PruneResult",
    "RestoreResult",
    "SnapshotInfo",
    "VerifyResult",
    "Want",
    "checkpoint",
    "latest_paths",
    "list_snapshots",
    "prune",
    "restore",
    "verify",
]
