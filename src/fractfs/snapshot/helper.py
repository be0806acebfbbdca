"""A second process that writes small files during a large restore, so that a cold start uses two cores.

Writing a small file is about 25 microseconds of Python (hash, five system calls), and the GIL runs that on
one core whatever the number of threads (more writing threads were slower: every system call handed the GIL
over through a futex). So a restore of many small files sends batches of them, bytes included, over a pipe to
a helper interpreter (``_helper_main.py``, standard library only, started with ``-I -S``) that verifies and
writes them exactly as the restorer does, while this process writes other batches itself. A batch goes to
the helper only while it has fewer than two unanswered ones; the rest is written here, so the split follows
whichever side is faster at the moment.

The helper only writes into directories the restore made, which stay under a temporary name until the
restore renames them into place, and only after the last answer has arrived. Nothing it does is visible
before that. If it cannot be started (no usable interpreter: an embedded or frozen Python, a pid limit), or
it dies, every batch it did not answer is written here: its half-written files are in those private
directories and are removed first. Measured on 20 000 files of 1-8 KiB on tmpfs: the write phase goes from
0.44 s to 0.23 s (benchmarks/cold_start.py).
"""
from __future__ import annotations

import logging
import marshal
import os
import select
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Optional

from .format import Entry

log = logging.getLogger("fractfs")

#: Fewer small files than this are written in this process alone: starting an interpreter (about 20 ms here)
#: costs more than it saves below a few thousand files. ``fractfs_RESTORE_HELPER_MIN_FILES`` overrides it
#: (the tests set 1, so that their restores, crash torture included, go through the helper).
MIN_FILES = 4096
MIN_FILES_ENV = "fractfs_RESTORE_HELPER_MIN_FILES"
#: A batch: this many files, or this many bytes (or half the pipe, if it cannot hold two), whichever comes first.
BATCH_FILES = 256
BATCH_BYTES = 512 << 10
#: Batches sent and not yet answered. Two keep the helper busy (one being written, one waiting in the pipe)
#: and bound the answers waiting in the other pipe to well under its buffer: neither side can block the other.
_MAX_OUT = 2
_SCRIPT = Path(__file__).with_name("_helper_main.py")
_F_SETPIPE_SZ = 1031  # Linux; fcntl.F_SETPIPE_SZ from Python 3.10 (returns the size it set)

#: (entry, final path, bytes) of one file sent to the helper.
Item = tuple[Entry, str, Any]
#: The helper's answer for one file: stat facts, None (bytes did not match), or (errno, strerror).
Answer = Any


def min_files() -> int:
    """The threshold in force (:data:`MIN_FILES`, or the environment's; a value that is not a number is
    ignored: a tuning knob must never fail a restore)."""
    try:
        return int(os.environ.get(MIN_FILES_ENV, MIN_FILES))
    except ValueError:
        return MIN_FILES


def _interpreter() -> str | None:
    """The interpreter to start the helper with, or None when there is no plain one (frozen apps, embedded
    interpreters such as uWSGI, whose sys.executable is the server) or no script file to give it (fractfs
    imported from a zip archive)."""
    exe = sys.executable
    if getattr(sys, "frozen", False) or not exe or not os.path.basename(exe).startswith("python"):
        return None
    if not _SCRIPT.is_file():
        return None
    return exe if os.access(exe, os.X_OK) else None


def _grow_pipe(fd: int) -> int:
    """Make the pipe to the helper hold a whole batch, if the system allows; its size in bytes.

    Of a batch larger than the pipe, the rest waits here until the helper has read the start, which it only
    does after the batch before; meanwhile it counts as busy, so fewer batches go to it (with a 64 KiB pipe
    and 1 MiB batches this process waited in write() and the two took turns instead of working at once)."""
    size = 64 << 10  # Linux's default
    if sys.platform.startswith("linux"):
        import fcntl

        try:
            with open("/proc/sys/fs/pipe-max-size") as f:
                cap = int(f.read())
            size = fcntl.fcntl(fd, _F_SETPIPE_SZ, min(cap, 2 * BATCH_BYTES))
        except (OSError, ValueError):  # the default then
            pass
    return size


class Helper:
    """One helper process and the batches it has not answered yet."""

    def __init__(self, proc: subprocess.Popen[bytes]):
        self.proc = proc
        assert proc.stdin is not None and proc.stdout is not None
        self.wfd = proc.stdin.fileno()
        self.rfd = proc.stdout.fileno()
        os.set_blocking(self.rfd, False)
        # Writes do not block either: what the pipe cannot take yet waits in ``outbuf`` and the helper counts
        # as busy until it is gone, so this process writes files itself instead of waiting.
        os.set_blocking(self.wfd, False)
        self.outbuf: list[memoryview] = []  # a message's length, then its body: never copied into one
        #: bytes of file data per batch: a batch and its paths fit in the pipe (see _grow_pipe)
        self.batch_bytes = max(4096, min(BATCH_BYTES, _grow_pipe(self.wfd) // 2 - 64 * BATCH_FILES))
        self.pending: dict[int, list[Item]] = {}
        self.next_id = 0
        self.inbuf = bytearray()
        self.dead = False
        self.reaper: threading.Thread | None = None  # see stop()

    @classmethod
    def start(cls) -> Optional[Helper]:
        exe = _interpreter()
        if exe is None:
            return None
        try:
            proc = subprocess.Popen([exe, "-I", "-S", os.fspath(_SCRIPT)], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0, close_fds=True)
        except (OSError, subprocess.SubprocessError) as exc:
            log.debug("fractfs: restore: no helper process (%s); writing in this process alone", exc)
            return None
        return cls(proc)

    def busy(self) -> bool:
        if self.outbuf:
            self._flush()
        return self.dead or bool(self.outbuf) or len(self.pending) >= _MAX_OUT

    def _flush(self) -> None:
        """Write what the pipe takes of ``outbuf`` without waiting."""
        out = self.outbuf
        try:
            while out:
                n = os.write(self.wfd, out[0])
                out[0] = out[0][n:]
                if not out[0]:
                    del out[0]
        except BlockingIOError:
            pass
        except OSError as exc:  # BrokenPipeError: it died
            self._died(f"cannot write to it: {exc}")

    def send(self, items: list[Item], wire: list[tuple[Any, ...]], base: int, blob: memoryview | bytes) -> bool:
        """Hand a batch over: ``wire`` is what the helper needs of each of ``items`` (in the same order, with
        the file's offset and size in ``blob``, whose first byte is at offset ``base``). False when the
        helper is gone (the batch is then among those :meth:`finish` gives back).

        The blob goes to the pipe straight from the caller's buffer: marshalling the bytes of each file
        made a fresh copy of every batch (2-5 us a file). What the pipe cannot take yet is copied before
        this returns, because the caller reuses its buffer."""
        assert not self.outbuf, "send() while busy()"
        bid = self.next_id
        self.next_id += 1
        self.pending[bid] = items
        if self.dead:
            return False
        body = marshal.dumps((bid, base, wire), 4)
        head = len(body).to_bytes(8, "little") + len(blob).to_bytes(8, "little")
        self.outbuf = [memoryview(head), memoryview(body), memoryview(blob)]
        self._flush()
        if self.outbuf:
            self.outbuf = [memoryview(bytes(part)) for part in self.outbuf]
        return not self.dead

    def answers(self, *, block: bool) -> list[tuple[list[Item], list[Answer]]]:
        """Batches answered since the last call; with ``block``, wait for at least one while any is out."""
        done: list[tuple[list[Item], list[Answer]]] = []
        while not self.dead:
            self._parse(done)
            if done or not block or not self.pending:
                break
            select.select([self.rfd], [self.wfd] if self.outbuf else [], [], 1.0)
            self._flush()
        return done

    def _read(self) -> None:
        while True:
            try:
                b = os.read(self.rfd, 1 << 20)
            except BlockingIOError:
                return
            except OSError as exc:
                self._died(f"cannot read from it: {exc}")
                return
            if not b:
                self._died("it exited")
                return
            self.inbuf += b

    def _parse(self, done: list[tuple[list[Item], list[Answer]]]) -> None:
        self._read()
        while len(self.inbuf) >= 8:
            n = int.from_bytes(self.inbuf[:8], "little")
            if len(self.inbuf) < 8 + n:
                return
            try:
                bid, answers = marshal.loads(bytes(self.inbuf[8:8 + n]))
                items = self.pending.pop(bid)
            except (ValueError, EOFError, TypeError, KeyError) as exc:
                self._died(f"garbled answer ({exc})")
                return
            del self.inbuf[:8 + n]
            if not isinstance(answers, list) or len(answers) != len(items):
                self._died("an answer of the wrong length")
                self.pending[bid] = items  # written here again, like every unanswered batch
                return
            done.append((items, answers))

    def _died(self, why: str) -> None:
        if not self.dead:
            self.dead = True
            log.warning("fractfs: restore: the helper process stopped (%s); this process writes the %d batches "
                        "it had not finished", why, len(self.pending))

    def finish(self) -> tuple[list[tuple[list[Item], list[Answer]]], list[Item]]:
        """Wait for every answer: (answered batches, items of batches the helper never answered)."""
        done: list[tuple[list[Item], list[Answer]]] = []
        while self.pending and not self.dead:
            done.extend(self.answers(block=True))
        left = [it for items in self.pending.values() for it in items]
        self.pending.clear()
        return done, left

    def stop(self) -> None:
        """End the helper and reap it. One that answered every batch ends by itself at the end of its input,
        and a thread reaps it (``reaper``): the restore does not wait for an interpreter to shut down (7-16 ms
        here). Any other is killed at once (whatever it still writes is in directories the restore discards)
        and reaped here."""
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
        if self.pending or self.dead or self.outbuf:
            self.proc.kill()
        elif self.reaper is None:
            self.reaper = threading.Thread(target=self._reap, name="fractfs-helper-reaper", daemon=True)
            self.reaper.start()
            return
        self._reap()

    def _reap(self) -> None:
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
