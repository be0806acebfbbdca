"""Store on any mounted path: a plain directory, tmpfs, or a FUSE mount of an object store.

FUSE mounts of object stores are weak: rclone returns EIO for hard links and symlinks, delta-rs saw
ENOSYS for rename on Databricks Volumes. So rename is only an optimisation here. Writes go to a
``<key>.tmp-<hex>`` sibling and are renamed into place when the filesystem allows; when it refuses, the
object is written under its final name directly. That is still safe for fractfs because objects are
content-addressed and verified on read, and manifests carry their own checksum: a torn object left by a
crash is detected, never trusted.
"""
from __future__ import annotations

import builtins
import contextlib
import errno
import logging
import os
import secrets
import stat
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Callable

from ..errors import AlreadyExists, ObjectTooLarge, StoreError, StoreFull, StoreNotFound, VolumeNotMounted
from .base import TEMP_SUFFIX_RE, Parts, check_key, check_prefix, reads_like, writes_like
from .transfer import parallel_map

log = logging.getLogger("fractfs")

CHUNK = 4 * 1024 * 1024
#: get_range reads up to this much in one pread: CPython allocates the result and the kernel fills it with the
#: GIL released, where reading in CHUNK pieces and joining them held the GIL for the copy (12 ms of a 16 MiB
#: pack range on tmpfs, stalling the thread that writes the restored files). Larger requests (a restore's
#: ranges are bounded well below this) are read in pieces of this size.
READ_AT_ONCE = 64 * 1024 * 1024
SENDFILE_CHUNK = 16 * 1024 * 1024
_HAVE_PREADV = hasattr(os, "preadv")
_HAVE_SENDFILE = hasattr(os, "sendfile") and os.uname().sysname == "Linux"  # file-to-file needs Linux >= 2.6.33

# rename()/link() errors that mean "this filesystem cannot do that", after which writing in place is the
# right move. The first group is permanent for a mount (remembered); EIO/EACCES/EBUSY are what some FUSE
# daemons return for the same thing, but can also be one-off, so they only divert the current write.
_UNSUPPORTED = {errno.ENOSYS, errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK}
_MAYBE_UNSUPPORTED = {errno.EIO, errno.EACCES, errno.EBUSY, errno.EINVAL}
# fsync errors that only say "not implemented here" (FUSE, some network filesystems).
_FSYNC_UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EBADF}

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_MISSING = (FileNotFoundError, NotADirectoryError, IsADirectoryError)

Writer = Callable[[int], None]


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


#: Buffers per writev(2) call (IOV_MAX on Linux).
_IOV_MAX = 1024


def _writev_all(fd: int, parts: Parts) -> None:
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    i = 0
    while i < len(views):
        n = os.writev(fd, views[i:i + _IOV_MAX])
        while n:  # skip what was written; a short write leaves the rest of one part
            if n >= len(views[i]):
                n -= len(views[i])
                i += 1
            else:
                views[i] = views[i][n:]
                n = 0


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class _LocalSideError(Exception):
    """Wraps an OSError of the caller's local file so it is not reported as a store failure."""

    def __init__(self, exc: OSError) -> None:
        super().__init__(exc)
        self.exc = exc


class PosixStore:
    """Objects as files under ``root``; keys map to relative paths."""

    def __init__(self, root: Path | str) -> None:
        # The root is not created here: if a Volume is not mounted, making its directory would silently
        # put "durable" data on the node's ephemeral disk. It is created on the first write instead,
        # after whoever configured it had the chance to check the mount - and only once: a root that
        # this store has seen and that is gone later means its Volume went away (unmounted, renamed), and
        # recreating it would write the checkpoint into the empty mountpoint on local disk.
        self.root = Path(root)
        self._root = os.fspath(self.root).rstrip("/") or "/"
        self.url = self._root
        self._known_dirs: set[str] = set()
        self._root_seen = False
        self._root_lock = threading.Lock()
        self._rename_ok = True
        self._link_ok = True
        self._dir_fsync_ok = True

    def __repr__(self) -> str:
        return f"PosixStore({self._root!r})"

    # -- paths & errors ---------------------------------------------------------------------------
    def _path(self, key: str) -> str:
        return self._root + "/" + check_key(key)

    def _error(self, action: str, path: str, exc: OSError, key: str = "") -> StoreError:
        code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        why = exc.strerror or str(exc)
        err: StoreError
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            err = StoreFull(f"volume full: cannot {action} {path}: no space left on device ({code}); "
                            f"free space on {self._root} or give it a larger volume", key=key)
            err.__cause__ = exc
            return err
        if exc.errno == errno.EFBIG:
            err = ObjectTooLarge(f"cannot {action} {path}: the file system at {self._root} does not take a file "
                                 f"this large ({code}); store it elsewhere or use a volume without that limit",
                                 key=key)
            err.__cause__ = exc
            return err
        if exc.errno == errno.EROFS:
            msg = f"cannot {action} {path}: {self._root} is mounted read-only ({code})"
        elif exc.errno == errno.ENOTCONN:
            msg = (f"cannot {action} {path}: the mount at {self._root} is gone ({why}, {code}); "
                   "its FUSE daemon died: remount it")
        elif exc.errno in (errno.EACCES, errno.EPERM):
            msg = f"cannot {action} {path}: permission denied ({code})"
        else:
            msg = f"cannot {action} {path}: {why} ({code})"
        err = StoreError(msg)
        err.__cause__ = exc
        return err

    # -- low-level write helpers --------------------------------------------------------------------
    def _vanished(self) -> VolumeNotMounted:
        return VolumeNotMounted(
            f"the checkpoint area {self._root} is gone: the Volume it was on is no longer mounted here (or was "
            "renamed); fractfs does not recreate it on local disk. Mount the Volume again; checkpoints resume "
            "by themselves")

    def _check_root(self) -> bool:
        """Whether the root exists now; VolumeNotMounted when it existed before and does not any more."""
        # Read the flag before looking: another thread may create the root (and set the flag) in between, and
        # only a root seen before this look and missing in it has vanished.
        seen = self._root_seen
        if os.path.isdir(self._root):
            self._root_seen = True
            return True
        if seen:
            self._known_dirs.clear()
            raise self._vanished()
        return False

    def _ensure_dir(self, d: str, *, again: bool = True) -> None:
        """mkdir -p below the root, remembered: on FUSE every mkdir is a round trip to the daemon.

        The root itself is created at most once (see __init__); the levels below it one by one with mkdir,
        so a root that vanished is noticed (ENOENT) instead of being made again as a side effect.
        """
        if d in self._known_dirs:
            return
        if self._root not in self._known_dirs:
            with self._root_lock:  # writers in other threads must not take our fresh root for a vanished one
                if not self._check_root():
                    try:
                        os.makedirs(self._root, exist_ok=True)
                    except OSError as exc:
                        raise self._error("create directory", self._root, exc) from exc
                    self._root_seen = True
                self._known_dirs.add(self._root)
        if d == self._root:
            return
        cur = self._root
        for part in d[len(self._root) + 1:].split("/"):
            cur = cur + "/" + part
            if cur in self._known_dirs:
                continue
            try:
                os.mkdir(cur)
            except FileExistsError:
                pass
            except FileNotFoundError as exc:
                # A level we remembered is gone: the root (the Volume went away) or a directory pruned since.
                self._known_dirs.clear()
                if not self._check_root():
                    raise self._vanished() from exc
                if not again:
                    raise self._error("create directory", cur, exc) from exc
                self._known_dirs.add(self._root)
                self._ensure_dir(d, again=False)  # once more from the root down, nothing remembered
                return
            except OSError as exc:
                raise self._error("create directory", cur, exc) from exc
            self._known_dirs.add(cur)

    def _fsync_dir(self, d: str) -> None:
        if not self._dir_fsync_ok:
            return
        try:
            fd = os.open(d, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
        except OSError as exc:
            if exc.errno in _FSYNC_UNSUPPORTED | {errno.EACCES, errno.EPERM}:
                self._dir_fsync_ok = False
                return
            raise self._error("open directory", d, exc) from exc
        try:
            os.fsync(fd)
        except OSError as exc:
            if exc.errno not in _FSYNC_UNSUPPORTED:
                raise self._error("fsync directory", d, exc) from exc
            # Directory fsync is not implemented on many FUSE mounts; the file's own fsync still ran.
            log.debug("fractfs: directory fsync unsupported on %s (%s)", self._root, exc)
            self._dir_fsync_ok = False
        finally:
            os.close(fd)

    def _write_new(self, path: str, writer: Writer, *, exclusive: bool) -> None:
        """Create ``path``, fill it via ``writer``, fsync, close. On failure nothing is left at ``path``
        (when we created it)."""
        flags = os.O_WRONLY | os.O_CREAT | _O_CLOEXEC | (os.O_EXCL if exclusive else os.O_TRUNC)
        fd = os.open(path, flags, 0o666)  # EEXIST propagates for the caller to interpret
        try:
            writer(fd)
            try:
                os.fsync(fd)
            except OSError as exc:
                if exc.errno not in _FSYNC_UNSUPPORTED:
                    raise
        except BaseException:
            os.close(fd)
            _unlink_quiet(path)
            raise
        os.close(fd)  # close can report a deferred write error (NFS, FUSE): let it raise

    def _store_object(self, key: str, writer: Writer, *, exclusive: bool) -> None:
        path = self._path(key)
        parent = path.rsplit("/", 1)[0]
        self._ensure_dir(parent)
        try:
            if exclusive:
                self._store_exclusive(key, path, writer)
            else:
                self._store_replace(path, writer)
        except FileNotFoundError as exc:
            # The directory vanished under us (pruned, or made by someone else and removed): retry once.
            self._known_dirs.discard(parent)
            self._ensure_dir(parent)
            try:
                if exclusive:
                    self._store_exclusive(key, path, writer)
                else:
                    self._store_replace(path, writer)
            except FileNotFoundError as exc2:
                self._check_root()  # a Volume that went away mid-write is named as such
                raise self._error("write", path, exc2, key) from exc
            except OSError as exc2:
                raise self._error("write", path, exc2, key) from exc
        except OSError as exc:
            raise self._error("write", path, exc, key) from exc
        self._fsync_dir(parent)

    def _store_replace(self, path: str, writer: Writer) -> None:
        if self._rename_ok:
            tmp = f"{path}.tmp-{secrets.token_hex(6)}"
            self._write_new(tmp, writer, exclusive=True)
            try:
                os.replace(tmp, path)
                return
            except OSError as exc:
                _unlink_quiet(tmp)
                if exc.errno in _UNSUPPORTED:
                    self._rename_ok = False
                    log.warning("fractfs: rename is not supported on %s (%s); writing objects in place "
                                "(safe: objects are verified on read)", self._root, exc.strerror)
                elif exc.errno not in _MAYBE_UNSUPPORTED:
                    raise
                else:
                    log.info("fractfs: rename into %s failed (%s); writing in place", path, exc.strerror)
        self._write_new(path, writer, exclusive=False)

    def _store_exclusive(self, key: str, path: str, writer: Writer) -> None:
        # Preferred: write a temp file, then link() it to the final name. link fails with EEXIST
        # atomically, and readers never see a half-written object under the final key.
        if self._link_ok:
            tmp = f"{path}.tmp-{secrets.token_hex(6)}"
            self._write_new(tmp, writer, exclusive=True)
            try:
                os.link(tmp, path)
                return
            except FileExistsError:
                raise AlreadyExists(f"{key} already exists in {self._root}") from None
            except OSError as exc:
                if exc.errno in _UNSUPPORTED or exc.errno in _MAYBE_UNSUPPORTED:
                    # rclone answers EIO, others EPERM/ENOSYS: no hard links on this mount.
                    self._link_ok = False
                    log.debug("fractfs: link() unsupported on %s (%s); exclusive writes use O_EXCL",
                              self._root, exc.strerror)
                else:
                    raise
            finally:
                _unlink_quiet(tmp)
        # Fallback: O_EXCL on the final name. Still exclusive; a crash mid-write can leave a short file,
        # which the reader's checksum rejects.
        try:
            self._write_new(path, writer, exclusive=True)
        except FileExistsError:
            raise AlreadyExists(f"{key} already exists in {self._root}") from None

    # -- Store protocol -----------------------------------------------------------------------------
    def put(self, key: str, data: bytes, *, exclusive: bool = False) -> None:
        self._store_object(key, lambda fd: _write_all(fd, data), exclusive=exclusive)

    @writes_like(put)
    def put_parts(self, key: str, parts: Parts, *, exclusive: bool = False) -> None:
        """:meth:`put` of ``b"".join(parts)``, written with writev(2) (see :func:`.base.put_parts`)."""
        self._store_object(key, lambda fd: _writev_all(fd, parts), exclusive=exclusive)

    def put_file(self, key: str, path: Path) -> None:
        check_key(key)
        # Open the source first: a missing or unreadable local file is the caller's problem (OSError),
        # not the store's.
        with open(os.fspath(path), "rb", buffering=0) as src:

            def copy(fd: int) -> None:
                # sendfile(2) copies inside the kernel, without a trip through a Python buffer (large files
                # come through here). It does not say which side an error came from, so on any error (or
                # where it is not supported) the read/write loop below goes on from where it stopped and
                # meets the same error on the side it belongs to.
                off = 0
                if _HAVE_SENDFILE:
                    src_fd = src.fileno()
                    while True:
                        try:
                            n = os.sendfile(fd, src_fd, off, SENDFILE_CHUNK)
                        except OSError:
                            break
                        if not n:
                            return
                        off += n
                    src.seek(off)
                buf = bytearray(CHUNK)
                view = memoryview(buf)
                while True:
                    try:
                        n = src.readinto(buf)
                    except OSError as exc:
                        raise _LocalSideError(exc) from exc
                    if not n:
                        break
                    _write_all(fd, view[:n])

            try:
                self._store_object(key, copy, exclusive=False)
            except _LocalSideError as e:
                raise e.exc from None

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            with open(path, "rb", buffering=0) as f:
                return f.read()
        except _MISSING:
            raise StoreNotFound(f"{key} not found in {self._root}") from None
        except OSError as exc:
            raise self._error("read", path, exc) from exc

    def get_range(self, key: str, start: int, length: int) -> bytes:
        if start < 0 or length < 0:
            raise ValueError(f"get_range({key!r}, {start}, {length}): start and length must be >= 0")
        with self._reading(key) as fd:
            parts: list[bytes] = []
            off, left = start, length
            while left > 0:
                chunk = os.pread(fd, min(left, READ_AT_ONCE), off)
                if not chunk:
                    break
                parts.append(chunk)
                off += len(chunk)
                left -= len(chunk)
            return parts[0] if len(parts) == 1 else b"".join(parts)

    @reads_like(get_range)
    def get_range_into(self, key: str, start: int, into: memoryview) -> int:
        """:meth:`get_range` of ``len(into)`` bytes, read into ``into`` (see :func:`.base.reads_into`): the
        number of bytes read."""
        if start < 0:
            raise ValueError(f"get_range_into({key!r}, {start}): start must be >= 0")
        with self._reading(key) as fd:
            got = 0
            while got < len(into):
                if _HAVE_PREADV:
                    n = os.preadv(fd, [into[got:]], start + got)
                else:
                    data = os.pread(fd, len(into) - got, start + got)
                    n = len(data)
                    into[got:got + n] = data
                if not n:
                    break
                got += n
            return got

    @contextlib.contextmanager
    def _reading(self, key: str) -> Iterator[int]:
        """An fd of ``key`` open for reading, with a store's errors for a missing key or a failed read."""
        fd, path = self._open_for_reading(key)
        try:
            yield fd
        except IsADirectoryError:
            raise StoreNotFound(f"{key} not found in {self._root}") from None
        except OSError as exc:
            raise self._error("read", path, exc) from exc
        finally:
            os.close(fd)

    def _open_for_reading(self, key: str) -> tuple[int, str]:
        path = self._path(key)
        try:
            return os.open(path, os.O_RDONLY | _O_CLOEXEC), path
        except _MISSING:
            raise StoreNotFound(f"{key} not found in {self._root}") from None
        except OSError as exc:
            raise self._error("open", path, exc) from exc

    def get_file(self, key: str, path: Path) -> None:
        src, src_path = self._open_for_reading(key)
        try:
            # Errors on the destination (local disk full, permissions) are the caller's: plain OSError.
            with open(os.fspath(path), "wb", buffering=0) as dst:
                buf = bytearray(CHUNK)
                view = memoryview(buf)
                while True:
                    try:
                        n = os.readv(src, [buf])
                    except IsADirectoryError:
                        raise StoreNotFound(f"{key} not found in {self._root}") from None
                    except OSError as exc:
                        raise self._error("read", src_path, exc) from exc
                    if not n:
                        break
                    # an unbuffered write may be short (e.g. a nearly full disk): loop until it all landed
                    done = 0
                    while done < n:
                        done += dst.write(view[done:n]) or 0
        finally:
            os.close(src)

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        prefix = check_prefix(prefix)
        # Start the walk at the deepest directory the prefix names, so listing "packs/ab" does not
        # scan every other subtree.
        if "/" in prefix:
            rel = prefix.rsplit("/", 1)[0] + "/"
            start = self._root + "/" + rel[:-1]
        else:
            rel, start = "", self._root
        # A missing root lists as empty (nothing written yet), unless this store saw it before: then the
        # Volume went away, and "no snapshots" would make a restore start from nothing.
        self._check_root()
        return self._walk(start, rel, prefix)

    def _walk(self, start: str, rel0: str, prefix: str) -> Iterator[tuple[str, int]]:
        stack: list[tuple[str, str]] = [(start, rel0)]
        while stack:
            d, rel = stack.pop()
            try:
                it = os.scandir(d)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                raise self._error("list", d, exc) from exc
            with it:
                try:
                    for entry in it:
                        name = entry.name
                        if TEMP_SUFFIX_RE.search(name):
                            continue  # in-flight or crashed write: not an object
                        key = rel + name
                        if entry.is_dir(follow_symlinks=False):
                            sub = key + "/"
                            if sub.startswith(prefix) or prefix.startswith(sub):
                                stack.append((entry.path, sub))
                        elif key.startswith(prefix) and entry.is_file(follow_symlinks=False):
                            try:
                                size = entry.stat(follow_symlinks=False).st_size
                            except FileNotFoundError:
                                continue  # deleted while we listed
                            yield key, size
                except OSError as exc:
                    raise self._error("list", d, exc) from exc

    def size(self, key: str) -> int | None:
        path = self._path(key)
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise self._error("stat", path, exc) from exc
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            # Missing is fine; a directory is not an object (keys below it are deleted one by one).
            return
        except OSError as exc:
            raise self._error("delete", path, exc) from exc

    # -- optional batch fast paths (BatchStore) ------------------------------------------------------
    def put_many(self, items: Sequence[tuple[str, bytes]], *, workers: int = 32) -> None:
        # Each put is mostly waiting on fsync (or on the FUSE daemon): threads overlap that well.
        parallel_map(lambda kv: self.put(kv[0], kv[1]), items, workers)

    def get_many(self, keys: Sequence[str], *, workers: int = 32) -> builtins.list[bytes]:
        return parallel_map(self.get, keys, workers)
