"""Helpers shared by the reliability tests (no tests here): a snapshot of a whole directory tree for "nothing
else changed" checks, and a writer of hand-made (hostile) snapshots. The app node is ``helpers.Node``."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any


from fractfs.snapshot.format import FORMAT_NAME, SnapName, object_key, pack_key


def snapshot_tree(top: Path, *, skip: tuple[Path, ...] = ()) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``top`` (not following symlinks) with its kind, mode and content/target."""
    out: dict[str, tuple[Any, ...]] = {}
    skipped = {os.fspath(s) for s in skip}
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skipped]
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            if p in skipped:
                continue
            st = os.lstat(p)
            rel = os.path.relpath(p, top)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    out[rel] = ("file", stat.S_IMODE(st.st_mode), hashlib.sha256(f.read()).hexdigest())
            else:
                out[rel] = ("other", st.st_mode)
    return out


def temp_files(*tops: Path) -> list[str]:
    """Restore temp files and directory trees (``.fractfs-tmp-*``) left anywhere under ``tops``."""
    found = []
    for top in tops:
        for dirpath, dirs, files in os.walk(top):
            found += [os.path.join(dirpath, f) for f in files + dirs if f.startswith(".fractfs-tmp-")]
    return found


# -- hand-made snapshots (the attacker can write to the store) -----------------------------------------------

def put_pack(store: Any, blobs: list[bytes]) -> tuple[str, list[tuple[int, int, str]]]:
    """Store ``blobs`` as one pack; returns its id and (offset, length, sha256) for each blob."""
    data = b"".join(blobs)
    pid = hashlib.sha256(data).hexdigest()
    store.put(pack_key(pid), data)
    out, off = [], 0
    for b in blobs:
        out.append((off, len(b), hashlib.sha256(b).hexdigest()))
        off += len(b)
    return pid, out


def put_object(store: Any, data: bytes) -> str:
    oid = hashlib.sha256(data).hexdigest()
    store.put(object_key(oid), data)
    return oid


def file_entry(path: str, pid: str, loc: tuple[int, int, str], area: str = "root", **kw: Any) -> dict[str, Any]:
    off, n, sha = loc
    d: dict[str, Any] = {"area": area, "path": path, "type": "file", "mode": 0o644, "size": n, "mtime_ns": 1,
                         "sha256": sha, "pack": pid, "offset": off, "length": n}
    d.update(kw)
    return d


def raw_manifest(store: Any, seq: int, entries: list[Any], *, version: int = 1, data: bytes | None = None,
                 **extra: Any) -> SnapName:
    """Write a manifest exactly as given, under a name whose checksum matches (nothing else is checked)."""
    if data is None:
        doc = {"format": FORMAT_NAME, "version": version, "seq": seq, "created_ns": 1, "node": "attacker",
               "parent": None, "entries": entries, **extra}
        data = gzip.compress(json.dumps(doc).encode(), mtime=0)
    name = SnapName(seq, hashlib.sha256(data).hexdigest())
    store.put(name.key, data)
    return name


def newest_seq(store: Any) -> int:
    from fractfs.snapshot import list_snapshots

    snaps = list_snapshots(store)
    return snaps[-1].seq if snaps else 0
