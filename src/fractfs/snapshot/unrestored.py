"""Entries a restore could not write, kept in later snapshots until the app decides about their paths.

A file missing after a restore was never seen by the app, so its absence is not a deletion. Without this
record the next checkpoint would compare the disk with the restored snapshot, find the file gone and commit a
snapshot without it: one damaged pack, one full disk or one permission error at restore time would turn into
silent loss of the file's last good reference a few checkpoints later (once the older snapshots are trimmed).

The record is a small JSON file in the node-local state directory. A checkpoint keeps an entry from it
(pointing at the same stored bytes as before) while:

- nothing exists at its path (if the app writes a file there, the app's version wins);
- its parent directory still exists (an app that removes the directory removes what was in it);
- it is still wanted (its tier did not become ``[ignore]`` or ``[dirs]``);
- the snapshot being extended still holds it with the same content.

It is dropped as soon as one of these stops holding, and a later restore that writes the file drops it too.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterable

from .format import DIR, FILE, Entry
from ..localfile import unlink_if_present, write_replace

log = logging.getLogger("fractfs")

RECORD_FILE = "unrestored.json"
Key = tuple[str, str]


def fingerprint(e: Entry) -> str:
    """What must still match for the entry to be kept: a file's content hash, a symlink's target."""
    return e.sha256 if e.type == FILE else f"{e.type}->{e.target}"


def record(state_dir: Path, snapshot_id: str, entries: Iterable[Entry]) -> None:
    """Replace the record with ``entries`` of ``snapshot_id`` (removes the file when there are none)."""
    items = sorted({(e.area, e.path): fingerprint(e) for e in entries if e.type != DIR}.items())
    path = state_dir / RECORD_FILE
    if not items:
        unlink_if_present(path)
        return
    doc = {"snapshot": snapshot_id, "entries": [[a, r, sha] for (a, r), sha in items]}
    write_replace(path, json.dumps(doc).encode(), durable=True)


def load(state_dir: Path) -> dict[Key, str]:
    """(area, path) → fingerprint of the entries still waiting; {} when there is no (readable) record."""
    path = state_dir / RECORD_FILE
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        return {(str(a), str(r)): str(sha) for a, r, sha in doc["entries"]}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        # losing the record only means the next checkpoint treats those files as deleted, as before it existed;
        # say so loudly rather than failing every checkpoint on a damaged node-local file
        log.warning("fractfs: cannot read %s (%s); files a restore could not write are no longer kept in new "
                    "snapshots", path, exc)
        return {}
