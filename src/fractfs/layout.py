"""The ``[dirs]`` links and pins as they are on disk right now, against what provisioning wants.

Read-only: the ``fractfs`` command (status, explain, doctor) looks with these; only ``init()`` changes the
layout (fractfs.provision).
"""
from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional, TypedDict

from .provision import Pin
from .tiers import Tier

if TYPE_CHECKING:
    from .config import Config
    from .tiers import TierResolver


class DirStatus(TypedDict):
    """One ``[dirs]`` entry in ``status()["dirs"]``: where it is, where it should point, whether it does."""

    tier: str
    local_path: str
    target: Optional[str]
    linked: bool


class DirView(DirStatus, total=False):
    """:class:`DirStatus` plus what the operator sees on disk (:func:`dir_state`)."""

    #: missing | linked | dangling | elsewhere | empty-dir | real-dir | file | kept-local | error
    state: str
    detail: str
    points_to: str


def dir_state(config: Config, resolver: TierResolver, d: str) -> DirView:
    """What ``root/<d>`` is right now, against what provisioning wants it to be."""
    local = config.root / d
    target = (config.dirs_root / d) if config.dirs_root is not None else None
    out: DirView = {"tier": Tier.DIRS.value, "local_path": str(local),
                    "target": str(target) if target else None, "linked": False}
    own = resolver.explain(d, is_dir=True)
    if own.tier in (Tier.LOCAL, Tier.IGNORE):
        out.update({"tier": own.tier.value, "state": "kept-local",
                   "detail": f"matches [{own.table}] {own.rule!r}, which takes precedence: not linked"})
        return out
    try:
        st = os.lstat(local)
    except FileNotFoundError:
        out.update({"state": "missing", "detail": "no link yet: init() creates it"})
        return out
    except OSError as exc:
        out.update({"state": "error", "detail": str(exc)})
        return out
    if stat.S_ISLNK(st.st_mode):
        link = os.readlink(local)
        out["points_to"] = link
        resolved = link if os.path.isabs(link) else os.path.join(str(local.parent), link)
        if target is not None and os.path.normpath(resolved) == os.path.normpath(str(target)):
            out["linked"] = True
            if os.path.isdir(target):
                out.update({"state": "linked", "detail": f"-> {target}"})
            else:
                out.update({"state": "dangling", "detail": f"-> {target}, which does not exist (Volume not mounted?)"})
        else:
            out.update({"state": "elsewhere", "detail": f"-> {link}, not {target}"})
        return out
    if stat.S_ISDIR(st.st_mode):
        with os.scandir(local) as it:
            empty = next(it, None) is None
        if empty:
            out.update({"state": "empty-dir", "detail": "an empty real directory: init() replaces it with the link"})
        else:
            out.update({"state": "real-dir", "detail": "a non-empty real directory is in the way"})
        return out
    out.update({"state": "file", "detail": "a file is in the way of the directory link"})
    return out


def pin_for(pins: Sequence[Pin], rel: str) -> Optional[Pin]:
    """The pin that makes ``rel`` node-local (the pinned path itself, or inside a pinned directory)."""
    for p in pins:
        if rel == p.relpath or (p.is_dir and rel.startswith(p.relpath + "/")):
            return p
    return None


def pin_in_place(config: Config, pin: Pin) -> bool:
    """Whether the pin's back-symlink on the Volume exists and points at its scratch path."""
    vol = pin.volume_path(config)
    try:
        link = os.readlink(vol)
    except OSError:
        return False
    return os.path.normpath(link) == os.path.normpath(str(pin.scratch_path(config)))
