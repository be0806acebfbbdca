"""Node-local files: replacing a small one (stat cache, status, bundle list, journals) all at once,
removing one that may already be gone, and hashing one."""
from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path


def write_replace(path: Path, *chunks: bytes, durable: bool = False) -> None:
    """Write ``chunks`` to ``path`` through a temp file beside it and a rename.

    Readers (another process, a restart) see the old content or the new, never part of it. If anything fails,
    the temp file is removed: on a full disk a partial copy would only take the room the next attempt needs.
    The temp name carries the process and thread, so concurrent writers never share one. ``durable`` fsyncs
    the bytes before the rename (for records a crash must not lose, not for caches).
    """
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}-{threading.get_ident()}")
    try:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
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
