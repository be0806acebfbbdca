"""One writer process per app root on a node: ``flock`` on files in the node-local state dir.

The checkpoint lease (lease.py) decides which *node* writes a store. On one node several processes can call
``init()`` on the same root (``gunicorn -w 2``, a supervisor starting two workers): they share the root and the
state dir, so only one of them may restore, detect the deploy bundle and commit; the others are *standbys*.

- ``writer.lock``: held (``LOCK_EX``) by the writer process for its whole life. The kernel drops it when that
  process ends, however it ends, so a standby waiting on it takes over at once after a crash too.
- ``start.lock``: held while a process decides its role and, for the writer, until its restore is done. A
  process that starts while another restores waits here, so it never sees half-restored files as its own
  (and never counts the writer's files as deploy bundle).

``flock`` locks belong to the open file description, which a ``fork()`` shares: a child would keep the
writer's lock alive after the writer died. So the descriptors are close-on-exec, and :meth:`NodeLock.forget`
(called in a forked child) closes the child's copies without unlocking the parent's.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
from pathlib import Path
from typing import Optional

from .errors import ProvisionError

log = logging.getLogger("fractfs")

WRITER_LOCK = "writer.lock"
START_LOCK = "start.lock"


def _open(path: Path, where: str) -> int:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)  # node-local state is private (docs/security.md)
    except OSError as exc:
        raise ProvisionError(
            f"cannot create {path} ({exc.strerror or exc}): the state dir {path.parent} inside scratch "
            f"({where}) must be a writable node-local directory; point fractfs_SCRATCH at one") from exc


class NodeLock:
    """The writer lock of one state dir (see the module docstring). ``where`` names the scratch setting."""

    def __init__(self, state_dir: Path, where: str = "fractfs_SCRATCH"):
        self.state_dir = state_dir
        self.where = where
        self._fd: Optional[int] = None
        self._start_fd: Optional[int] = None
        self._mutex = threading.Lock()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def begin_start(self) -> None:
        """Wait for any other process's start-up (its role decision and restore) to finish, then hold the
        start lock until :meth:`end_start`."""
        fd = _open(self.state_dir / START_LOCK, self.where)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._start_fd = fd

    def end_start(self) -> None:
        fd, self._start_fd = self._start_fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor drops the flock

    def try_acquire(self) -> bool:
        """Take the writer lock if no other process holds it (never blocks)."""
        return self._acquire(blocking=False)

    def wait(self) -> bool:
        """Block until the writer lock is ours (the writer process ended). False if :meth:`forget` was called
        meanwhile."""
        return self._acquire(blocking=True)

    def _acquire(self, *, blocking: bool) -> bool:
        with self._mutex:
            if self._fd is not None:
                return True
        fd = _open(self.state_dir / WRITER_LOCK, self.where)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EINTR):
                return False
            raise ProvisionError(f"cannot lock {self.state_dir / WRITER_LOCK}: {exc.strerror or exc}") from exc
        with self._mutex:
            self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())  # for humans: which process writes
        except OSError:
            pass
        return True

    def release(self) -> None:
        with self._mutex:
            fd, self._fd = self._fd, None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def forget(self) -> None:
        """In a forked child: close this process's copies of the descriptors without unlocking them (the
        lock is shared with the parent, which still holds it)."""
        for fd in (self._fd, self._start_fd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._fd = self._start_fd = None
        self._mutex = threading.Lock()  # another thread may have held it at fork time


def holder_pid(state_dir: Path) -> Optional[int]:
    """The pid written into ``writer.lock`` by its holder (a hint for messages; None when unknown)."""
    try:
        text = (state_dir / WRITER_LOCK).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
