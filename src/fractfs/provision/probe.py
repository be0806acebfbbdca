"""What the Volume directory can do, measured with a handful of syscalls rather than assumed.

FUSE object-store mounts may refuse symlinks (EIO) and may lack rename, and the Volume is usually another
filesystem than the app (rename gives EXDEV): provisioning and ``fractfs status`` both ask this module.
"""
from __future__ import annotations

import dataclasses
import errno
import logging
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ProvisionError
from .fsops import OWN_PREFIX, describe, unlink_quietly

__all__ = ["Capabilities", "probe_volume"]

log = logging.getLogger("fractfs")

#: errnos that mean "this filesystem has no symlinks" rather than "something is broken". Only used to pick
#: the log level: any failure of the probe counts as "no symlinks", because a pin that cannot be created
#: is a pin that cannot be honoured whatever the reason.
_NO_SYMLINK_ERRNOS = {errno.EIO, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EACCES}


@dataclass(frozen=True)
class Capabilities:
    """What the Volume directory can do, measured (not assumed) at provisioning time."""

    path: str                     #: the directory probed
    exists: bool                  #: reachable and a directory
    writable: bool                #: a temp file could be created, fsynced and removed
    symlinks: bool                #: ``os.symlink`` works there (False on FUSE object-store mounts)
    rename: bool                  #: ``os.rename`` within the Volume works
    cross_device: bool            #: on another filesystem than the app root (moves must copy)
    fs_type: str | None        #: from /proc/mounts, e.g. "ext4", "tmpfs", "fuse.rclone"
    free_bytes: int | None     #: available to unprivileged users, None when unknown
    error: str | None = None   #: why ``exists``/``writable`` is False

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def probe_volume(path: Path, *, app_root: Path | None = None, strict: bool = True) -> Capabilities:
    """Measure what the Volume directory ``path`` supports, with a handful of syscalls.

    ``cross_device`` compares against ``app_root`` (default: the current directory). Every temp name made
    here (``.fractfs-probe-<random>``) is removed again. With ``strict`` (the default) an unreachable or
    unwritable directory raises :class:`ProvisionError`; with ``strict=False`` it is reported in the result
    (``exists``/``writable`` False, ``error`` set), which is what ``status()`` wants.
    """
    vol = Path(os.path.abspath(path))
    fs_type = _fs_type(str(vol))

    def unusable(exists: bool, problem: str, advice: str) -> Capabilities:
        message = f"Volume directory {vol} {problem}. {advice}"
        if strict:
            raise ProvisionError(message)
        return Capabilities(str(vol), exists, False, False, False, False, fs_type, None, message)

    try:
        st = os.stat(vol)
    except OSError as exc:
        return unusable(False, f"is not reachable ({describe(exc)})",
                        "Check that the Volume is mounted and that fractfs_VOLUME_ROOT points at it.")
    if not stat.S_ISDIR(st.st_mode):
        return unusable(False, "is not a directory", "Point fractfs_VOLUME_ROOT at the Volume's directory.")

    reference = Path(app_root) if app_root is not None else Path.cwd()
    try:
        cross_device = os.stat(reference).st_dev != st.st_dev
    except OSError:
        # Unknown means "assume the worst": moves then copy instead of renaming, which is always correct.
        cross_device = True

    token = secrets.token_hex(6)
    probe = vol / f"{OWN_PREFIX}probe-{token}"
    moved = vol / f"{OWN_PREFIX}probe-{token}.renamed"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"fractfs probe\n")
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        unlink_quietly(probe)
        return unusable(True, f"is not writable ({describe(exc)})",
                        "Check the mount's permissions for this user / service principal, or point "
                        "fractfs_VOLUME_ROOT at a writable location.")
    try:
        rename_ok = False
        try:
            os.rename(probe, moved)
            rename_ok = os.path.lexists(moved) and not os.path.lexists(probe)
        except OSError as exc:
            log.debug("fractfs: rename probe failed in %s: %s", vol, describe(exc))
        symlinks_ok = _probe_symlink(vol, token)
    finally:
        unlink_quietly(probe)
        unlink_quietly(moved)

    try:
        sv = os.statvfs(vol)
        free: int | None = sv.f_bavail * sv.f_frsize
    except OSError:
        free = None
    caps = Capabilities(str(vol), True, True, symlinks_ok, rename_ok, cross_device, fs_type, free)
    log.debug("fractfs: volume capabilities %s", caps.as_dict())
    return caps


def _probe_symlink(directory: Path, token: str) -> bool:
    # The target is deliberately missing: pins are dangling links until the app first writes the file, so
    # that is exactly the case that has to work.
    link = directory / f"{OWN_PREFIX}probe-{token}.lnk"
    target = f"{OWN_PREFIX}probe-{token}.target"
    try:
        os.symlink(target, link)
        return os.readlink(link) == target
    except OSError as exc:
        level = logging.DEBUG if exc.errno in _NO_SYMLINK_ERRNOS else logging.WARNING
        log.log(level, "fractfs: symlink probe failed in %s: %s", directory, describe(exc))
        return False
    finally:
        unlink_quietly(link)


def _fs_type(path: str) -> str | None:
    """Filesystem type of the longest /proc/mounts mount point containing ``path`` (None off Linux)."""
    try:
        with open("/proc/mounts", encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    real = os.path.realpath(path)
    best, best_type = "", None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount_point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])
        inside = real == mount_point or real.startswith(mount_point.rstrip("/") + "/")
        # ">=": a later line for the same mount point is a mount stacked on top of the earlier one.
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, fields[2]
    return best_type
