"""Node-local directories only this user controls.

fractfs keeps state in scratch (default ``/tmp/fractfs``): the stat cache, the restore's temp files, pinned
files the app writes through a back-symlink, the provisioning lock. In a shared ``/tmp`` another local user
can create that directory first, or put a symlink there, and so read the app's files, plant files a restore
keeps and the next checkpoint saves as the app's own, redirect writes through symlinks, or hold the lock.
ssh, git and systemd answer this the same way, and so does :func:`ensure_private_dir`: the directory must be
owned by this user and writable by nobody else, and every directory above it must be owned by this user or
root and, where others may write to it, carry the sticky bit (so they cannot rename our directory away).
A directory fractfs creates is 0700 from the start.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import ProvisionError

_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH


def _problem(st: os.stat_result, uid: int, *, leaf: bool) -> str | None:
    """Why a directory with this stat cannot be trusted, or None."""
    if leaf:
        if st.st_uid != uid:
            return f"is owned by uid {st.st_uid}, not by this user (uid {uid})"
        if st.st_mode & _OTHERS_WRITE:
            return f"is writable by other users (mode {stat.S_IMODE(st.st_mode):04o})"
        return None
    if st.st_uid not in (uid, 0):
        return f"lies under a directory owned by uid {st.st_uid} (neither this user nor root)"
    if st.st_mode & _OTHERS_WRITE and not st.st_mode & stat.S_ISVTX:
        return f"lies under a directory others may write to without the sticky bit (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _check_chain(path: Path, uid: int, where: str, *, leaf: bool) -> None:
    """Walk from / down to ``path``: symlinks on the way are followed only when this user or root owns them
    (a symlink another user planted in /tmp is exactly the attack), and every directory is judged by
    :func:`_problem` - ``path`` itself as the private directory when ``leaf``, else as an ancestor of one."""
    current = Path("/")
    parts = list(path.parts[1:])
    hops = 0
    while parts:
        name = parts.pop(0)
        nxt = current / name
        st = os.lstat(nxt)
        if stat.S_ISLNK(st.st_mode):
            if st.st_uid not in (uid, 0):
                raise ProvisionError(
                    f"{where} = {path}: {nxt} is a symbolic link owned by uid {st.st_uid}, another user; fractfs "
                    f"does not follow it (it could redirect the app's state). Remove it, or set {where} to a "
                    "directory of your own (e.g. under $HOME or the app's data disk)")
            hops += 1
            if hops > 40:
                raise ProvisionError(f"{where} = {path}: too many symbolic links")
            target = Path(os.readlink(nxt))
            rest = list(target.parts[1:] if target.is_absolute() else target.parts)
            current = Path("/") if target.is_absolute() else current
            parts = [p for p in rest if p not in ("", ".")] + parts
            continue
        if name == "..":
            current = current.parent
            continue
        why = _problem(st, uid, leaf=leaf and not parts)
        if why is not None:
            raise ProvisionError(
                f"{where} = {path}: {nxt} {why}. fractfs keeps the app's state and temp files there, so another "
                f"user could read or replace them. Set {where} to a directory only you can write to (e.g. under "
                f"$HOME or the app's data disk), or fix it with `chown {uid} {nxt} && chmod go-w {nxt}`")
        current = nxt


def ensure_private_dir(path: Path, where: str) -> None:
    """Create ``path`` (mode 0700, parents as needed) or accept an existing one only this user controls.

    ``where`` names the setting the path came from (e.g. ``fractfs_SCRATCH``) for the error message.
    Raises :class:`ProvisionError` and changes nothing when the directory or a directory above it could be
    controlled by another user.
    """
    path = Path(os.path.abspath(path))
    uid = os.geteuid()
    missing: list[Path] = []
    probe = path
    while not os.path.lexists(probe):
        missing.append(probe)
        probe = probe.parent
    if missing:  # judge what exists before creating anything beneath it
        _check_chain(probe, uid, where, leaf=False)
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass  # created concurrently: judged below like any existing directory
        except OSError as exc:
            raise ProvisionError(f"{where} = {path}: cannot create {d}: {exc.strerror}") from exc
    _check_chain(path, uid, where, leaf=True)
    if not os.path.isdir(path):
        raise ProvisionError(f"{where} = {path} is not a directory")
