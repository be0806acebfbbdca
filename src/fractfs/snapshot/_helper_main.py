"""The restore helper process (see :mod:`.helper`): run by path as ``python -I -S _helper_main.py``.

It imports nothing of fractfs and nothing outside the standard library, so it starts in a few tens of
milliseconds and behaves the same whatever the app's environment. It reads batches of small files from
stdin, verifies each against its sha256 and writes it exactly as the restore's own writer does in a
directory the restore made (open exclusive without following links, write, mode, mtime, fstat, close), then
answers with one result per file. It stops at the end of its input: when the restoring process goes away,
so does it.

A batch is a 16-byte header (two little-endian 8-byte lengths: the marshal part, the blob), then a marshal
payload ``(batch_id, base, [(dir_path, name, create_mode, chmod, mtime_ns, sha256_hex, offset, size), ...])``,
then the blob: the bytes of the batch's files, one file's being ``blob[offset - base:][:size]``. ``chmod``
is the mode to set after creating the file, or -1 when the umask left ``create_mode`` intact. The blob is read
into one buffer reused for every batch, and files are written from slices of it: no copy per file, and no
fresh memory per batch (see helper.py).
A reply is an 8-byte little-endian length and a marshal payload ``(batch_id, [result, ...])`` with per file:
the stat facts
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


def _read_into(fd: int, view: memoryview) -> bool:
    got = 0
    while got < len(view):
        n = os.readv(fd, [view[got:]])
        if not n:
            return False
        got += n
    return True


def write_batch(items: list[tuple[Any, ...]], base: int, blob: memoryview) -> list[Any]:
    out: list[Any] = []
    sha256 = hashlib.sha256
    o_open, o_write, o_close, o_utime, o_fstat = os.open, os.write, os.close, os.utime, os.fstat
    dfd = -1
    dpath = ""
    try:
        for dir_path, name, create_mode, chmod, mtime_ns, digest, offset, size in items:
            data = blob[offset - base:offset - base + size] if offset >= base else b""
            if len(data) != size or sha256(data).hexdigest() != digest:
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
    buf = bytearray()
    while True:
        head = _read_exact(rfd, 16)
        if head is None:
            return 0
        body = _read_exact(rfd, int.from_bytes(head[:8], "little"))
        if body is None:
            return 0
        nblob = int.from_bytes(head[8:], "little")
        if nblob > len(buf):
            buf = bytearray(nblob)  # a new one, not a resize: no view of the old one is alive here anyway
        with memoryview(buf) as view:
            blob = view[:nblob]
            if not _read_into(rfd, blob):
                return 0
            batch_id, base, items = marshal.loads(body)
            reply = marshal.dumps((batch_id, write_batch(items, base, blob)), 4)
            blob.release()
        write_all(wfd, len(reply).to_bytes(8, "little") + reply)


if __name__ == "__main__":
    sys.exit(main())
