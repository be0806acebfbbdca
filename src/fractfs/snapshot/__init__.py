"""Checkpoints as snapshots: content-addressed packs and objects, a checksummed manifest per generation.

The on-store format is specified in docs/format.md. Entry points:

- :func:`checkpoint` — snapshot the selected files of some areas if anything changed
- :func:`restore` — bring a snapshot back (default: newest valid, only files missing locally)
- :func:`list_snapshots`, :func:`latest_paths`, :func:`prune`, :func:`verify`
"""
from __future__ import annotations

from .engine import CheckpointResult, checkpoint
from .format import FORMAT_VERSION, Entry
from .maint import PruneResult, SnapshotInfo, VerifyResult, latest_paths, list_snapshots, prune, verify
from .restorer import RestoreResult, restore
from .scan import Want

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
