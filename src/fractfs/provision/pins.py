"""Which back-symlinks (pins) the ``[local]``/``[ignore]`` patterns need inside the ``[dirs]`` dirs.

A pin is ``VOL/<relpath> -> SCRATCH/<relpath>``: a path inside a Volume directory that the config says must
stay node-local. Each pattern line is read by :class:`fractfs.patterns.GitPattern`, the parser the tier
resolver uses, so a line means the same thing to both (trailing spaces, escapes, comments); every candidate
is then re-checked with the resolver, so a pin exists only where the final tier is LOCAL or IGNORE.
"""
from __future__ import annotations

import fnmatch
import logging
import os
import posixpath
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..config import Config
from ..patterns import GitPattern, is_rule
from ..tiers import Tier
from .fsops import OWN_PREFIX

__all__ = ["DEFAULT_SCAN_LIMIT", "Pin", "PinPlan", "Resolver", "plan_pins"]

log = logging.getLogger("fractfs")

#: How many existing subdirectories of each Volume dir are looked at for unanchored exact-name pins. Every
#: directory is one listing over FUSE (tens of ms on a real Volume), so the scan is bounded: pins deep in a
#: huge tree are a nicety, not a promise (the README promises the top level of each [dirs] dir).
DEFAULT_SCAN_LIMIT = 64


class Resolver(Protocol):
    """What provisioning needs from :class:`fractfs.tiers.TierResolver`."""

    def resolve(self, relpath: str, is_dir: bool = False) -> Tier: ...

    def dir_of(self, relpath: str) -> str | None: ...


@dataclass(frozen=True)
class Pin:
    """One back-symlink: ``VOL/<relpath> -> SCRATCH/<relpath>``."""

    relpath: str      #: app-relative POSIX path, inside ``dir`` (e.g. "data/blobs/manifest.json")
    dir: str          #: the [dirs] entry holding it
    is_dir: bool      #: a directory pin (whole subtree node-local) rather than one file
    tier: Tier        #: LOCAL or IGNORE, as the resolver decided for this exact path
    pattern: str      #: the pattern that asked for it

    @property
    def label(self) -> str:
        return self.relpath + "/" if self.is_dir else self.relpath

    def volume_path(self, config: Config) -> Path:
        # pins are planned only for a config with [dirs] on a Volume, where load_config sets dirs_root
        assert config.dirs_root is not None
        return config.dirs_root / self.relpath

    def scratch_path(self, config: Config) -> Path:
        return config.scratch / self.relpath


@dataclass
class PinPlan:
    pins: list[Pin] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "pins": [{"path": p.label, "dir": p.dir, "tier": p.tier.value, "pattern": p.pattern}
                     for p in self.pins],
            "warnings": list(self.warnings),
        }


def plan_pins(config: Config, resolver: Resolver, *, scan_limit: int = DEFAULT_SCAN_LIMIT) -> PinPlan:
    """Decide which back-symlinks the ``[local]``/``[ignore]`` patterns need inside the ``[dirs]`` dirs.

    * Exact names (``manifest.json``, ``.locks/``, ``sp\\ ace``) pin ``<dir>/<name>`` at the top of every
      [dirs] dir, and deeper down wherever that name already exists (on the Volume, or in a local tree about
      to be migrated; at most ``scan_limit`` directories are listed per [dirs] dir). Anchored paths
      (``data/blobs/manifest.json``) pin exactly that path when it lies inside a [dirs] dir.
    * A trailing ``/`` makes it a directory pin: the whole subtree is node-local.
    * Globs cannot be pinned before the file exists: they produce a warning instead.
    * Negated patterns pin nothing, and every candidate is re-checked with the resolver so a pin exists
      only where the final tier (after precedence and negations) is LOCAL or IGNORE.
    """
    plan = PinPlan()
    dirs = tuple(config.dirs)
    if not dirs:
        return plan
    rules = [(table, GitPattern(raw))
             for table, raws in (("ignore", config.ignore_patterns), ("local", config.local_patterns))
             for raw in raws if is_rule(raw)]
    names = frozenset(g.literal for _table, g in rules
                      if g.literal is not None and not (g.negated or g.anchored))
    # Deeper pins only where the name already exists: pre-creating dangling links in every subdirectory of
    # a big partitioned tree would litter the Volume (other readers globbing it would trip over them).
    nested = {d: _existing_nested(config, d, names, scan_limit) for d in dirs} if names else {}
    candidates: dict[str, Pin] = {}

    def consider(relpath: str, is_dir: bool, g: GitPattern) -> None:
        owner = resolver.dir_of(relpath)
        if owner is None or relpath == owner:
            return
        tier = resolver.resolve(relpath, is_dir=is_dir)
        if tier not in (Tier.LOCAL, Tier.IGNORE):
            log.debug("fractfs: not pinning %s: it resolves to %s", relpath, tier.value)
            return
        existing = candidates.get(relpath)
        # "foo" and "foo/" both naming one path: the directory pin wins, since it also keeps everything the
        # app creates below that name node-local.
        if existing is None or (is_dir and not existing.is_dir):
            candidates[relpath] = Pin(relpath, owner, is_dir, tier, g.text)

    for table, g in rules:
        if g.negated or g.regex is None:
            continue  # a negation pins nothing; a pattern that can never match has nothing to pin
        path = g.literal
        if path is None:
            affected = [d for d in dirs if _glob_may_match_inside(g, d)]
            if affected:
                plan.warnings.append(_glob_warning(table, g, affected))
            continue
        if ".." in path.split("/") or posixpath.normpath(path) != path:
            continue  # cannot name a path inside the app root
        if g.anchored:
            consider(path, g.dir_only, g)
            continue
        for d in dirs:
            consider(f"{d}/{path}", g.dir_only, g)
            for sub, is_dir in nested.get(d, {}).items():
                # gitignore: "foo/" matches only directories; "foo" matches files and directories alike.
                if sub.rsplit("/", 1)[-1] == path and (is_dir or not g.dir_only):
                    consider(f"{d}/{sub}", is_dir, g)

    # A pin inside a directory pin is already node-local through its parent's link.
    dir_pins = [p.relpath for p in candidates.values() if p.is_dir]
    for relpath in sorted(candidates):
        if any(relpath.startswith(d + "/") for d in dir_pins):
            continue
        plan.pins.append(candidates[relpath])
    return plan


def _glob_may_match_inside(g: GitPattern, d: str) -> bool:
    if not g.anchored:
        return True  # matched at any depth, so also directly inside the dir
    parts = g.body.split("/")
    dparts = d.split("/")
    for i, dpart in enumerate(dparts):
        if i >= len(parts):
            return False
        if parts[i] == "**":
            return True
        if not fnmatch.fnmatchcase(dpart, parts[i]):
            return False
    return len(parts) > len(dparts)


def _glob_warning(table: str, g: GitPattern, affected: list[str]) -> str:
    where = ", ".join(affected)
    consequence = ("durable but neither node-local nor checkpointed" if table == "local"
                   else "durable, not node-local")
    return (f"[{table}] pattern {g.text!r} is a glob, so fractfs cannot pre-pin it inside the [dirs] "
            f"dir(s) {where}: a matching file created directly in them lands on the Volume ({consequence}). "
            f"To keep such files node-local, write them into a pinned subdirectory (a directory pattern such "
            f"as \".locks/\") or keep them outside [dirs].")


def _existing_nested(config: Config, d: str, names: frozenset[str], limit: int) -> dict[str, bool]:
    """Entries named in ``names`` below the top level of ``VOL/<d>`` and of a real local ``root/<d>``.

    Returns ``{"sub/name": is_dir}`` relative to ``d``. Breadth first, listing at most ``limit`` directories
    in total: every listing is a round trip on a FUSE Volume, so deep trees are only partly covered.
    """
    bases = []
    if config.dirs_root is not None:
        bases.append(config.dirs_root / d)
    local = config.root / d
    if os.path.isdir(local) and not os.path.islink(local):
        bases.append(local)  # about to be migrated: its pinned names must be routed to scratch
    found: dict[str, bool] = {}
    listed = 0
    for base in bases:
        queue: deque[str] = deque([""])
        while queue:
            if listed >= limit:
                log.debug("fractfs: pin scan of [dirs] %r stopped after %d directories", d, limit)
                return found
            rel = queue.popleft()
            listed += 1
            try:
                with os.scandir(base / rel if rel else base) as it:
                    entries = sorted(it, key=lambda e: e.name)
                    kinds = [(e.name, e.is_dir(follow_symlinks=False), _is_dir_quietly(e)) for e in entries]
            except OSError:
                continue
            for name, real_dir, is_dir in kinds:
                sub = f"{rel}/{name}" if rel else name
                if name in names:
                    if rel:
                        found.setdefault(sub, is_dir)
                elif real_dir and not name.startswith(OWN_PREFIX):
                    queue.append(sub)
    return found


def _is_dir_quietly(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()  # follows our own links: a directory pin's link leads to a directory
    except OSError:
        return False
