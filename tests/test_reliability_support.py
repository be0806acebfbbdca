"""Helpers shared by the reliability tests (no tests here): an app node run in fresh processes, a snapshot of a
whole directory tree for "nothing else changed" checks, and a writer of hand-made (hostile) snapshots."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import stat
import textwrap
from pathlib import Path
from typing import Any

from helpers import run_py

from fractfs.snapshot.format import FORMAT_NAME, SnapName, object_key, pack_key


class Node:
    """An app root and scratch on 'node-local' disk, a Volume, and app code run in fresh interpreters."""

    def __init__(self, base: Path, volume: str | Path, config: str = "", *, bundle: dict[str, str] | None = None,
                 env: dict[str, str] | None = None):
        self.base = base
        self.root = base / "app"
        self.scratch = base / "scratch"
        self.volume = str(volume)
        self.config = config
        self.bundle = bundle or {}
        self.extra_env = env or {}
        self.deploy()

    def deploy(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / ".fractfs.toml").write_text(self.config)
        for rel, content in self.bundle.items():
            p = self.root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            if content.startswith("->"):
                os.symlink(content[2:], p)
            else:
                p.write_text(content)

    def wipe(self) -> None:
        """A cold restart: node-local disk is gone, the bundle is deployed again."""
        shutil.rmtree(self.root)
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.deploy()

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.lower().startswith("fractfs_")}
        env.update({
            "fractfs_VOLUME_ROOT": self.volume,
            "fractfs_SCRATCH": str(self.scratch),
            "fractfs_SYNC_INTERVAL": "3600",
            "fractfs_SYNC_MODE": "interval",  # checkpoints when the test says so (or by interval), not on change
            "fractfs_LEASE_TIMEOUT": "2",
        })
        if "://" in self.volume:
            env["fractfs_BACKEND"] = "s3"
        env.update(self.extra_env)
        env.update(extra)
        return env

    def run(self, body: str, *, check: bool = True, timeout: float = 120, **extra: str) -> Any:
        """Run ``body`` (after ``import json, os, sys, fractfs``) in the app root; returns the last JSON line
        it printed (or the CompletedProcess when ``check`` is False)."""
        code = "import json, os, sys, fractfs\n" + textwrap.dedent(body)
        proc = run_py(code, env=self.env(**extra), cwd=self.root, check=check, timeout=timeout)
        if not check:
            return proc
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("{", "["))]
        return json.loads(lines[-1]) if lines else None


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
    """Restore temp files (``.fractfs-tmp-*``) left anywhere under ``tops``."""
    found = []
    for top in tops:
        for dirpath, _dirs, files in os.walk(top):
            found += [os.path.join(dirpath, f) for f in files if f.startswith(".fractfs-tmp-")]
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
