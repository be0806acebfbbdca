"""The restore helper process (see :mod:`.helper`): run by path as ``python -I -S _helper_main.py``.

It imports nothing of fractfs and nothing outside the standard library, so it starts in a few tens of
milliseconds and behaves the same whatever the app's environment. It reads batches of small files from
stdin, verifies each against its sha256 and writes it exactly as the restore's own writer does in a
directory the restore made (open exclusive without following links, write, mode, mtime, fstat, close), then
answers with one result per file. It stops at the end of its input: when the restoring process goes away,
so does it.

Messages in both directions are an 8-byte little-endian length followed by a marshal payload.
A batch is ``(batch_id, [(dir_path, name, create_mode, chmod, mtime_ns, sha256_hex, data), ...])``, where
``chmod`` is the mode to set after creating the file, or -1 when the umask left ``create_mode`` intact.
A reply is ``(batch_id, [result, ...])`` with per file: the stat facts
``(st_mode, st_size, st_mtime_ns, st_ino, st_ctime_ns)`` when written, ``None`` when the bytes did not match
their sha256 (nothing was created: the parent reads them again), or ``(errno, strerror)`` when a system call
failed (nothing is left behind).
"""
from __future__ import annotations

import hashlib
import marshal
import os
import sys
from typing import Any

_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _read_exact(fd: int, n: int) -> bytes | None:
    parts = []
    while n:
        b = os.read(fd, min(n, 1 << 20))
        if not b:
            return None
        parts.append(b)
        n -= len(b)
    return b"".join(parts)


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_batch(items: list[tuple[Any, ...]]) -> list[Any]:
    out: list[Any] = []
    sha256 = hashlib.sha256
    o_open, o_write, o_close, o_utime, o_fstat = os.open, os.write, os.close, os.utime, os.fstat
    dfd = -1
    dpath = ""
    try:
        for dir_path, name, create_mode, chmod, mtime_ns, digest, data in items:
            if sha256(data).hexdigest() != digest:
                out.append(None)
                continue
            fd = -1
            try:
                if dir_path != dpath:
                    if dfd >= 0:
                        o_close(dfd)
                        dfd = -1
                    dpath = ""
                    dfd = o_open(dir_path, _DIR_FLAGS)
                    dpath = dir_path
                fd = o_open(name, _NEW_FILE, create_mode, dir_fd=dfd)
                if data:
                    n = o_write(fd, data)
                    if n < len(data):
                        write_all(fd, data[n:])
                if chmod >= 0:
                    os.fchmod(fd, chmod)
                o_utime(fd, ns=(mtime_ns, mtime_ns))
                st = o_fstat(fd)
                o_close(fd)
                fd = -1
            except OSError as exc:
                if fd >= 0:
                    o_close(fd)
                    try:
                        os.unlink(name, dir_fd=dfd)
                    except OSError:
                        pass
                out.append((exc.errno or 0, exc.strerror or str(exc)))
                continue
            out.append((st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns))
    finally:
        if dfd >= 0:
            o_close(dfd)
    return out


def main() -> int:
    rfd, wfd = sys.stdin.fileno(), sys.stdout.fileno()
    while True:
        head = _read_exact(rfd, 8)
        if head is None:
            return 0
        body = _read_exact(rfd, int.from_bytes(head, "little"))
        if body is None:
            return 0
        batch_id, items = marshal.loads(body)
        reply = marshal.dumps((batch_id, write_batch(items)), 4)
        write_all(wfd, len(reply).to_bytes(8, "little") + reply)


if __name__ == "__main__":
    sys.exit(main())
