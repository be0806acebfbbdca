"""Small filesystem steps every part of provisioning uses: durable unlink/rename bookkeeping, atomic links.

Local disks make a new or removed directory entry durable only after the directory itself is fsynced; FUSE
mounts often refuse that, so it is best effort here and never an error.
"""
from __future__ import annotations

import errno
import logging
import os
import secrets
from pathlib import Path

from ..errors import ProvisionError

log = logging.getLogger("fractfs")

#: Prefix of every name fractfs creates for its own bookkeeping on the Volume or in the app tree.
OWN_PREFIX = ".fractfs-"


def atomic_symlink(target: str, path: Path, *, use_rename: bool) -> None:
    """Make ``path`` a symlink to ``target`` without a moment where ``path`` is missing (when rename works)."""
    if use_rename:
        tmp = path.with_name(f".{path.name}{OWN_PREFIX}link-{secrets.token_hex(4)}")
        os.symlink(target, tmp)
        try:
            os.replace(tmp, path)
        except OSError:
            unlink_quietly(tmp)
            raise
    else:
        # No rename on this Volume: replacing an existing link needs a brief gap; creating one does not.
        if os.path.islink(path):
            os.unlink(path)
        os.symlink(target, path)
    fsync_dir(path.parent)


def remove_empty_tree(top: Path, *, keep_top: bool = False) -> None:
    """rmdir every empty directory under ``top`` bottom-up (and ``top`` itself unless ``keep_top``)."""
    for dirpath, _dirnames, _filenames in os.walk(top, topdown=False):
        if keep_top and Path(dirpath) == top:
            continue
        try:
            os.rmdir(dirpath)
        except OSError as exc:
            raise ProvisionError(f"Could not remove {dirpath} after moving its contents: "
                                 f"{describe(exc)}. Something may still be writing there; retry.") from exc


def mkdirs(path: Path) -> None:
    os.makedirs(path, exist_ok=True)


def unlink_synced(path: Path) -> None:
    os.unlink(path)
    fsync_dir(path.parent)


def unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.debug("fractfs: could not remove %s: %s", path, describe(exc))


def fsync_dir(path: Path) -> None:
    # Makes the new/removed entry itself durable on local disks; many FUSE mounts refuse it, which is fine.
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def describe(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno, "") if exc.errno is not None else ""
    text = exc.strerror or str(exc)
    return f"{name}: {text}" if name else text
