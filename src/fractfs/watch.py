"""Change notification for the checkpointed trees: Linux inotify through ctypes, no extra dependency.

Only directories a checkpoint would walk are watched (the app root minus ``[dirs]`` symlinks, ignored
directories and fractfs' own state; the pinned directories in scratch), so writes to the Volume or to ignored
paths never wake us. New directories are watched as they appear (watch first, then list, so nothing created in
between is missed). The reader thread blocks in ``poll()``: an idle app costs no CPU.

inotify is per-node and not recursive; on other platforms, or when the kernel refuses (no inotify, watch limit
reached), :class:`WatchUnavailable` is raised or the watcher reports itself ``degraded`` and the interval timer
remains the safety net.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import select
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

log = logging.getLogger("fractfs")

Want = Callable[[str, str, bool], bool]

IN_ACCESS = 0x001
IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = getattr(os, "O_CLOEXEC", 0o2000000)

# What changes a checkpoint: content (MODIFY/CLOSE_WRITE), names (CREATE/DELETE/MOVED_*), mode and mtime
# (ATTRIB). Not ACCESS/OPEN/CLOSE_NOWRITE: our own reads during a checkpoint must not wake us again.
MASK = (IN_MODIFY | IN_CLOSE_WRITE | IN_ATTRIB | IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO
        | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW | IN_EXCL_UNLINK)
_EVENT = struct.Struct("iIII")
#: After handling a batch, pause this long before reading again: the kernel merges identical queued events
#: meanwhile, so a file written in a tight loop costs a few wake-ups per second, not one per write().
COALESCE = 0.05
#: SQLite's shared-memory index changes when a *reader* (our own backup during a checkpoint) opens a WAL
#: database; it is never checkpointed, so its events would only make checkpoints trigger themselves.
_NEVER_INTERESTING = ("-shm",)


class WatchUnavailable(RuntimeError):
    """inotify cannot be used here (not Linux, no libc symbol, or the kernel refused)."""


_libc: Any = None


def _lib() -> Any:
    global _libc
    if _libc is None:
        if not sys.platform.startswith("linux"):
            raise WatchUnavailable(f"inotify is Linux-only (this is {sys.platform})")
        name = ctypes.util.find_library("c") or "libc.so.6"
        try:
            lib = ctypes.CDLL(name, use_errno=True)
            init1 = lib.inotify_init1
            add = lib.inotify_add_watch
            rm = lib.inotify_rm_watch
        except (OSError, AttributeError) as exc:
            raise WatchUnavailable(f"inotify is not available from {name}: {exc}") from None
        init1.argtypes, init1.restype = [ctypes.c_int], ctypes.c_int
        add.argtypes, add.restype = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32], ctypes.c_int
        rm.argtypes, rm.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        _libc = lib
    return _libc


def available() -> Optional[str]:
    """None when inotify works here, else why not (for the fallback warning)."""
    try:
        lib = _lib()
    except WatchUnavailable as exc:
        return str(exc)
    fd = lib.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        return f"inotify_init1 failed: {os.strerror(err)}"
    os.close(fd)
    return None


class TreeWatcher:
    """Watches ``trees`` (area name → directory) and calls ``on_change()`` when a wanted path changes.

    ``want(area, relpath, is_dir)`` is the checkpoint's own selection, so exactly what a checkpoint would
    walk is watched. ``on_change`` runs on the watcher thread and must be quick (the daemon just notes it).
    """

    def __init__(self, trees: dict[str, Path], want: Want, on_change: Callable[[], None]):
        self.trees = {area: Path(os.path.abspath(p)) for area, p in trees.items()}
        # plain strings for the per-directory calls: a Path made and turned back into a string per directory
        # was half of the time it took to start watching a freshly restored tree
        self._tops = {area: str(p) for area, p in self.trees.items()}
        self.want = want
        self.on_change = on_change
        self._fd = -1
        self._wake_r = -1
        self._wake_w = -1
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._wd: dict[int, tuple[str, str]] = {}     # watch descriptor → (area, relative dir)
        self._by_path: dict[tuple[str, str], int] = {}
        self.events = 0            # wanted changes seen
        self.overflows = 0
        self.last_event: Optional[float] = None
        self.degraded: Optional[str] = None  # why some directories are not watched (watch limit, ...)

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self, *, background: bool = False) -> None:
        """Watch every wanted directory, then report changes from a thread of its own.

        ``background``: list and watch the directories on that thread, not before returning (init() does
        this: at 20 000 files, 600 directories took 20-30 ms of a cold start). A change made meanwhile in a
        directory not watched yet would go unseen, so once every watch is in place the watcher reports one
        change: the checkpoint it triggers walks the trees and finds whatever changed."""
        lib = _lib()
        fd = lib.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise WatchUnavailable(f"inotify_init1 failed: {os.strerror(ctypes.get_errno())}")
        self._fd = fd
        self._wake_r, self._wake_w = os.pipe()
        if not background:
            self._rescan()
            log.debug("fractfs: watching %d directories for changes", len(self._wd))
        self._thread = threading.Thread(target=self._run, args=(background,), name="fractfs-watch", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._thread = None
        for fd in (self._fd, self._wake_r, self._wake_w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._fd = self._wake_r = self._wake_w = -1
        self._wd.clear()
        self._by_path.clear()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def watched(self) -> int:
        return len(self._wd)

    def describe(self) -> dict[str, Any]:
        return {"watched_dirs": self.watched, "events": self.events, "overflows": self.overflows,
                "last_event": self.last_event, "degraded": self.degraded, "running": self.running}

    # -- watches ---------------------------------------------------------------------------------------
    def _abs(self, area: str, rel: str) -> str:
        top = self._tops[area]
        return f"{top}/{rel}" if rel else top

    def _add_one(self, area: str, rel: str) -> bool:
        path = os.fsencode(self._abs(area, rel))
        wd = _lib().inotify_add_watch(self._fd, path, MASK)
        if wd < 0:
            err = ctypes.get_errno()
            if err == errno.ENOSPC:
                if self.degraded is None:
                    self.degraded = ("the inotify watch limit is reached (fs.inotify.max_user_watches); "
                                     "directories beyond it are checkpointed by the interval timer only")
                    log.warning("fractfs: %s", self.degraded)
            elif err not in (errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.ELOOP):
                log.debug("fractfs: cannot watch %s: %s", path, os.strerror(err))
            return False
        old = self._wd.get(wd)
        if old is not None and old != (area, rel):
            self._by_path.pop(old, None)  # same directory under a new name (moved): follow it
        self._wd[wd] = (area, rel)
        self._by_path[(area, rel)] = wd
        return True

    def _add_tree(self, area: str, rel: str) -> None:
        """Watch ``rel`` and every wanted directory below it. Watch first, list second: a subdirectory made
        after the listing is reported by the parent's watch, one made before is in the listing."""
        stack = [rel]
        while stack:
            cur = stack.pop()
            if not self._add_one(area, cur):
                continue
            try:
                with os.scandir(self._abs(area, cur)) as it:
                    for entry in it:
                        try:
                            if not entry.is_dir(follow_symlinks=False):
                                continue
                        except OSError:
                            continue
                        child = f"{cur}/{entry.name}" if cur else entry.name
                        if self.want(area, child, True):
                            stack.append(child)
            except OSError:
                continue

    def _forget_tree(self, area: str, rel: str) -> None:
        prefix = rel + "/"
        for key in [k for k in self._by_path if k[0] == area and (k[1] == rel or k[1].startswith(prefix))]:
            wd = self._by_path.pop(key)
            if self._wd.get(wd) == key:
                del self._wd[wd]

    def _rescan(self) -> None:
        for area, top in self.trees.items():
            if top.is_dir():
                self._add_tree(area, "")

    # -- events ----------------------------------------------------------------------------------------
    def _run(self, setup: bool = False) -> None:
        if setup:
            try:
                self._rescan()
                log.debug("fractfs: watching %d directories for changes", len(self._wd))
                if not self._stop.is_set():
                    self.on_change()  # whatever changed while the watches were being set up (see start)
            except Exception:  # noqa: BLE001 - as in the loop below: noticed, and the timer goes on
                log.exception("fractfs: change watcher failed; the interval timer keeps checkpointing")
                self.degraded = "the change watcher stopped after an internal error"
                return
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._stop.is_set():
            try:
                ready = poller.poll()
            except InterruptedError:
                continue
            if self._stop.is_set():
                break
            if not any(fd == self._fd for fd, _ in ready):
                continue
            try:
                changed = self._drain()
            except Exception:  # noqa: BLE001 - a watcher bug must not go unnoticed, nor kill the app
                log.exception("fractfs: change watcher failed; the interval timer keeps checkpointing")
                self.degraded = "the change watcher stopped after an internal error"
                return
            if changed:
                self.last_event = time.time()
                try:
                    self.on_change()
                except Exception:  # noqa: BLE001
                    log.exception("fractfs: change callback failed")
            self._stop.wait(COALESCE)

    def _drain(self) -> bool:
        changed = False
        while True:
            try:
                buf = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                return changed
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            if not buf:
                return changed
            changed = self._handle(buf) or changed

    def _handle(self, buf: bytes) -> bool:
        changed = False
        pos = 0
        new_dirs: list[tuple[str, str]] = []
        while pos + _EVENT.size <= len(buf):
            wd, mask, _cookie, length = _EVENT.unpack_from(buf, pos)
            raw = buf[pos + _EVENT.size: pos + _EVENT.size + length].rstrip(b"\0")
            pos += _EVENT.size + length
            if mask & IN_Q_OVERFLOW:
                # events were dropped: assume something changed and pick up directories we may have missed
                self.overflows += 1
                changed = True
                self._rescan()
                continue
            where = self._wd.get(wd)
            if mask & IN_IGNORED:
                if where is not None:
                    self._wd.pop(wd, None)
                    if self._by_path.get(where) == wd:
                        del self._by_path[where]
                continue
            if where is None:
                continue  # a watch we already forgot (moved away)
            area, base = where
            if not raw:
                # about the directory itself: its mode changed, or it was deleted/moved (parent reports it)
                if mask & IN_ATTRIB:
                    changed = True
                continue
            name = os.fsdecode(raw)
            rel = f"{base}/{name}" if base else name
            is_dir = bool(mask & IN_ISDIR)
            if name.endswith(_NEVER_INTERESTING):
                continue
            if not self.want(area, rel, is_dir):
                continue
            self.events += 1
            changed = True
            if is_dir:
                if mask & IN_MOVED_FROM or mask & IN_DELETE:
                    self._forget_tree(area, rel)
                if mask & (IN_CREATE | IN_MOVED_TO):
                    new_dirs.append((area, rel))
        for area, rel in new_dirs:
            self._add_tree(area, rel)
        return changed
