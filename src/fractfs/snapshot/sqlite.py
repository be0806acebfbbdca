"""Consistent copies of live SQLite databases.

A raw copy of a database that is being written can mix pages of two transactions (seen in the field), and a
WAL-mode database keeps committed transactions in its -wal file. The online backup API reads a consistent
snapshot of everything committed, WAL included, under a read lock, so that is the only way we copy them.
"""
from __future__ import annotations

import errno
import logging
import os
import sqlite3
import time
import urllib.parse

from ..localfile import create_private, unlink_if_present

log = logging.getLogger("fractfs")

_SQLITE_FULL = 13  # SQLITE_FULL: "database or disk is full"


class SqliteBusy(Exception):
    """No consistent read could be taken within the time allowed (a writer kept the database locked)."""


class SqliteUnreadable(Exception):
    """The file starts like a SQLite database but SQLite cannot read it; the caller copies it as plain bytes."""


class _OutOfTime(Exception):
    pass


def _uri(path: str, params: str) -> str:
    return "file:" + urllib.parse.quote(os.path.abspath(path)) + "?" + params


def backup(src: str, dest: str, timeout: float) -> None:
    """Write a consistent copy of database ``src`` to the new file ``dest``.

    Raises SqliteBusy after ``timeout`` seconds without a consistent read (never waits forever: CPython's
    backup loop retries BUSY without end unless its progress callback stops it), SqliteUnreadable when the
    file is not a usable database.
    """
    stop_at = time.monotonic() + max(timeout, 0.1)

    def progress(_status: int, _remaining: int, _total: int) -> None:
        if time.monotonic() > stop_at:
            raise _OutOfTime

    last: Exception = SqliteUnreadable(src)
    # Read-only first, so taking a checkpoint can never modify the app's database. If that cannot open it
    # (a WAL db whose -shm is missing after a crash needs a writer to recover), use a normal connection,
    # which does exactly what the app's next open would do anyway.
    for params in ("mode=ro", "mode=rw"):
        try:
            con = sqlite3.connect(_uri(src, params), uri=True, timeout=max(timeout, 0.1))
        except sqlite3.Error as exc:
            last = exc
            continue
        try:
            # the copy is the app's data: private before SQLite writes a page into it (SQLite itself would
            # create it 0644, and keeps an existing file's mode; its journal follows the file's mode)
            if not os.path.exists(dest):
                os.close(create_private(dest))
            dst = sqlite3.connect(dest)
            try:
                # pages=-1: one step under one read lock, so the copy is one point in time
                con.backup(dst, pages=-1, progress=progress, sleep=0.05)
            finally:
                dst.close()
            return
        except _OutOfTime:
            raise SqliteBusy(f"{src}: still locked by a writer after {timeout:.1f}s") from None
        except sqlite3.OperationalError as exc:
            last = exc
            if "locked" in str(exc) or "busy" in str(exc):
                raise SqliteBusy(f"{src}: {exc}") from None
            if getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL or "disk is full" in str(exc):
                # our copy ran out of room: the database is fine, and must not fall back to a raw copy
                unlink_if_present(dest)
                raise OSError(errno.ENOSPC, f"no room in {os.path.dirname(dest)} for a consistent copy of "
                              f"{src}") from None
            log.debug("sqlite backup of %s with %s failed: %s", src, params, exc)
        except sqlite3.Error as exc:
            last = exc
            log.debug("sqlite backup of %s with %s failed: %s", src, params, exc)
        finally:
            con.close()
        unlink_if_present(dest)
    raise SqliteUnreadable(f"{src}: {last}")
