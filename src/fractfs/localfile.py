"""Node-local files: replacing a small one (stat cache, status, bundle list, journals) all at once,
removing one that may already be gone, and hashing one.

Everything fractfs keeps on the node holds app data or its hashes (the stat cache has every file's SHA-256: a
PIN in a 0600 file was recovered from it), so it is private *from creation*: files 0600 and directories 0700,
made with that mode by the syscall that creates them, never chmod-ed afterwards (another local user who opens
the file in between keeps reading it). The umask can only take bits away from these.
"""
from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

#: Modes of what fractfs creates on the node for itself (docs/security.md).
PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def create_private(path: str | os.PathLike[str]) -> int:
    """Create the new file ``path`` (it must not exist, nor be a symlink) readable by its owner only; an fd."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC, PRIVATE_FILE)


def private_dir(path: str | os.PathLike[str]) -> None:
    """``mkdir -p path``, every directory it creates 0700 (existing ones are left as they are).

    A directory made inside a set-gid one inherits the set-gid bit on Linux (and the parent's group with it);
    that bit is taken off again, which exposes nothing: the directory is still empty and 0700.
    """
    p = os.path.abspath(os.fspath(path))
    missing: list[str] = []
    while not os.path.isdir(p):
        missing.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    for d in reversed(missing):
        try:
            os.mkdir(d, PRIVATE_DIR)
        except FileExistsError:
            if not os.path.isdir(d):
                raise
            continue
        st = os.lstat(d)
        if st.st_mode & (stat.S_ISGID | stat.S_ISVTX):
            os.chmod(d, stat.S_IMODE(st.st_mode) & 0o777)


def write_replace(path: Path, *chunks: bytes, durable: bool = False) -> None:
    """Write ``chunks`` to ``path`` through a temp file beside it and a rename (see :func:`replacing`)."""
    with replacing(path, durable=durable) as f:
        for chunk in chunks:
            f.write(chunk)


@contextmanager
def replacing(path: Path, *, durable: bool = False) -> Iterator[BinaryIO]:
    """A new private file that replaces ``path`` when the ``with`` block ends without an exception.

    Readers (another process, a restart) see the old content or the new, never part of it: the bytes go to a
    temp file beside ``path``, renamed over it at the end. The file is private (0600) from its creation on. If
    anything fails, the temp file is removed: on a full disk a partial copy would only take the room the next
    attempt needs. The temp name carries the process and thread, so concurrent writers never share one.
    ``durable`` fsyncs the bytes before the rename (for records a crash must not lose, not for caches).
    """
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}-{threading.get_ident()}")
    try:
        unlink_if_present(tmp)  # a leftover of a crashed writer with this pid and thread: O_EXCL needs it gone
        with os.fdopen(create_private(tmp), "wb") as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        unlink_if_present(tmp)
        raise


def unlink_if_present(path: str | os.PathLike[str]) -> None:
    """Remove ``path``; already gone is fine, any other failure is raised."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


#: Read size for hashing: large enough that the per-call overhead vanishes, small enough to stay in cache.
HASH_CHUNK = 1 << 20


def hash_file(path: str | os.PathLike[str]) -> tuple[str, int]:
    """The sha256 (hex) of the file at ``path`` and the number of bytes read. Errors are raised as OSError."""
    h = hashlib.sha256()
    n = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            b = f.read(HASH_CHUNK)
            if not b:
                break
            h.update(b)
            n += len(b)
    return h.hexdigest(), n
