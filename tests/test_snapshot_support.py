"""Helpers shared by the snapshot tests (no tests here). Import as ``from test_snapshot_support import ...``."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from fractfs.stores import PosixStore

Tree = dict[str, tuple]


def everything(_area: str, _rel: str, _is_dir: bool) -> bool:
    return True


def make_store(tmp_path: Path, name: str = "store") -> PosixStore:
    return PosixStore(tmp_path / name)


def write(
    root: Path,
    rel: str,
    data: bytes | str,
    *,
    mode: int | None = None,
    mtime_ns: int | None = None,
) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    if mode is not None:
        os.chmod(p, mode)
    if mtime_ns is not None:
        os.utime(p, ns=(mtime_ns, mtime_ns))
    return p


def tree(root: Path, *, mtimes: bool = False) -> Tree:
    """Everything under ``root`` as {relpath: (kind, content-or-target, mode[, mtime_ns])}."""
    out: Tree = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                row: tuple = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                row = ("dir", None, stat.S_IMODE(st.st_mode))
            else:
                row = ("file", p.read_bytes(), stat.S_IMODE(st.st_mode))
                if mtimes:
                    row = row + (st.st_mtime_ns,)
            out[rel] = row
    return out


def store_keys(store: PosixStore, prefix: str = "") -> set[str]:
    return {k for k, _ in store.list(prefix)}


def temp_leftovers(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if ".fractfs-tmp-" in p.name or ".tmp-" in p.name]
