"""Provisioning: the ``[dirs]`` symlink layout, back-symlink pins, Volume capability probes and migration.

Layout produced for every ``[dirs]`` entry ``D`` (``VOL`` is ``config.dirs_root``, ``SCRATCH`` is
``config.scratch``)::

    ROOT/D                 -> VOL/D                 (local directory symlink: works on any Volume)
    VOL/D/manifest.json    -> SCRATCH/D/manifest.json   (exact-name pin, may dangle)
    VOL/D/.locks           -> SCRATCH/D/.locks          (directory pin)

Rules that shape this module (see DESIGN.md):

* The Volume is usually another filesystem (rename gives EXDEV), so moves between local disk and the Volume
  are copy → fsync → verify (size + sha256 of both sides) → remove, each step safe to interrupt and re-run.
  A plain rename is used only when both ends turn out to share a filesystem.
* FUSE object-store mounts may refuse symlinks (EIO) and may lack rename, so both are probed, never assumed.
  Without symlinks the pins cannot exist; the app still runs and one warning names every pin that is not
  honoured.
* :func:`provision` checks everything before it changes anything, and converges: calling it again on a
  provisioned tree changes nothing.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import fnmatch
import hashlib
import json
import logging
import os
import posixpath
import re
import secrets
import stat
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .errors import ClobberError, ProvisionError
from .localfile import private_dir, write_replace
from .tiers import Tier

if TYPE_CHECKING:
    from .config import Config

__all__ = [
    "Capabilities",
    "Pin",
    "PinPlan",
    "ProvisionReport",
    "plan_pins",
    "probe_volume",
    "provision",
]

log = logging.getLogger("fractfs")

#: Prefix of every name fractfs creates for its own bookkeeping on the Volume or in the app tree.
_OWN_PREFIX = ".fractfs-"
#: Suffix (plus ``-<n>``) of the second copy kept when two different versions of one file meet.
CONFLICT_SUFFIX = ".fractfs-conflict"
_PARTIAL_SUFFIX = ".fractfs-partial"
_CHUNK = 1024 * 1024
#: errnos that mean "this filesystem has no symlinks" rather than "something is broken". Only used to pick
#: the log level: any failure of the probe counts as "no symlinks", because a pin that cannot be created
#: is a pin that cannot be honoured whatever the reason.
_NO_SYMLINK_ERRNOS = {errno.EIO, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EACCES}
_GLOB_CHARS = frozenset("*?[")
#: How many existing subdirectories of each Volume dir are looked at for unanchored exact-name pins. Every
#: directory is one listing over FUSE (tens of ms on a real Volume), so the scan is bounded: pins deep in a
#: huge tree are a nicety, not a promise (the README promises the top level of each [dirs] dir).
DEFAULT_SCAN_LIMIT = 64


class Resolver(Protocol):
    """What provisioning needs from :class:`fractfs.tiers.TierResolver`."""

    def resolve(self, relpath: str, is_dir: bool = False) -> Tier: ...

    def dir_of(self, relpath: str) -> str | None: ...


# --------------------------------------------------------------------------------------------------------
# Capability probe
# --------------------------------------------------------------------------------------------------------


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
        return unusable(False, f"is not reachable ({_describe(exc)})",
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
    probe = vol / f"{_OWN_PREFIX}probe-{token}"
    moved = vol / f"{_OWN_PREFIX}probe-{token}.renamed"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"fractfs probe\n")
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        _unlink_quietly(probe)
        return unusable(True, f"is not writable ({_describe(exc)})",
                        "Check the mount's permissions for this user / service principal, or point "
                        "fractfs_VOLUME_ROOT at a writable location.")
    try:
        rename_ok = False
        try:
            os.rename(probe, moved)
            rename_ok = os.path.lexists(moved) and not os.path.lexists(probe)
        except OSError as exc:
            log.debug("fractfs: rename probe failed in %s: %s", vol, _describe(exc))
        symlinks_ok = _probe_symlink(vol, token)
    finally:
        _unlink_quietly(probe)
        _unlink_quietly(moved)

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
    link = directory / f"{_OWN_PREFIX}probe-{token}.lnk"
    target = f"{_OWN_PREFIX}probe-{token}.target"
    try:
        os.symlink(target, link)
        return os.readlink(link) == target
    except OSError as exc:
        level = logging.DEBUG if exc.errno in _NO_SYMLINK_ERRNOS else logging.WARNING
        log.log(level, "fractfs: symlink probe failed in %s: %s", directory, _describe(exc))
        return False
    finally:
        _unlink_quietly(link)


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


# --------------------------------------------------------------------------------------------------------
# Pin planning
# --------------------------------------------------------------------------------------------------------


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
        return _dirs_root(config) / self.relpath

    def scratch_path(self, config: Config) -> Path:
        return _scratch(config) / self.relpath


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


@dataclass(frozen=True)
class _Pattern:
    raw: str
    table: str         # "local" or "ignore"
    body: str          # without "!", leading "/" and trailing "/"
    negated: bool
    dir_only: bool
    anchored: bool
    glob: bool


def _parse_pattern(raw: str, table: str) -> _Pattern | None:
    text = raw.rstrip("\r\n")
    # gitignore drops trailing spaces unless the last one is escaped.
    if not text.endswith("\\ "):
        text = text.rstrip(" \t")
    if not text or text.startswith("#"):
        return None
    negated = text.startswith("!")
    if negated:
        text = text[1:]
    dir_only = text.endswith("/")
    text = text.rstrip("/")
    # gitignore: a slash at the start or in the middle anchors the pattern to the root.
    anchored = "/" in text
    text = text.lstrip("/")
    if not text:
        return None
    # A backslash escape is treated like a glob: the literal name is ambiguous enough that guessing it and
    # pinning the wrong path would be worse than saying it cannot be pinned.
    glob = any(c in _GLOB_CHARS for c in text) or "\\" in text
    return _Pattern(raw, table, text, negated, dir_only, anchored, glob)


def plan_pins(config: Config, resolver: Resolver, *, scan_limit: int = DEFAULT_SCAN_LIMIT) -> PinPlan:
    """Decide which back-symlinks the ``[local]``/``[ignore]`` patterns need inside the ``[dirs]`` dirs.

    * Exact names (``manifest.json``, ``.locks/``) pin ``<dir>/<name>`` at the top of every [dirs] dir, and
      deeper down wherever that name already exists (on the Volume, or in a local tree about to be
      migrated; at most ``scan_limit`` directories are listed per [dirs] dir). Anchored paths
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
    patterns = [p for table, raws in (("ignore", config.ignore_patterns), ("local", config.local_patterns))
                for p in (_parse_pattern(r, table) for r in raws) if p is not None]
    names = frozenset(p.body for p in patterns if not (p.negated or p.glob or p.anchored))
    # Deeper pins only where the name already exists: pre-creating dangling links in every subdirectory of
    # a big partitioned tree would litter the Volume (other readers globbing it would trip over them).
    nested = {d: _existing_nested(config, d, names, scan_limit) for d in dirs} if names else {}
    candidates: dict[str, Pin] = {}

    def consider(relpath: str, is_dir: bool, pat: _Pattern) -> None:
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
            candidates[relpath] = Pin(relpath, owner, is_dir, tier, pat.raw)

    for pat in patterns:
        if pat.negated:
            continue
        if pat.glob:
            affected = [d for d in dirs if _glob_may_match_inside(pat, d)]
            if affected:
                plan.warnings.append(_glob_warning(pat, affected))
            continue
        if ".." in pat.body.split("/") or posixpath.normpath(pat.body) != pat.body:
            continue  # cannot name a path inside the app root
        if pat.anchored:
            consider(pat.body, pat.dir_only, pat)
            continue
        for d in dirs:
            consider(f"{d}/{pat.body}", pat.dir_only, pat)
            for sub, is_dir in nested.get(d, {}).items():
                # gitignore: "foo/" matches only directories; "foo" matches files and directories alike.
                if sub.rsplit("/", 1)[-1] == pat.body and (is_dir or not pat.dir_only):
                    consider(f"{d}/{sub}", is_dir, pat)

    # A pin inside a directory pin is already node-local through its parent's link.
    dir_pins = [p.relpath for p in candidates.values() if p.is_dir]
    for relpath in sorted(candidates):
        if any(relpath.startswith(d + "/") for d in dir_pins):
            continue
        plan.pins.append(candidates[relpath])
    return plan


def _glob_may_match_inside(pat: _Pattern, d: str) -> bool:
    if not pat.anchored:
        return True  # matched at any depth, so also directly inside the dir
    parts = pat.body.split("/")
    dparts = d.split("/")
    for i, dpart in enumerate(dparts):
        if i >= len(parts):
            return False
        if parts[i] == "**":
            return True
        if not fnmatch.fnmatchcase(dpart, parts[i]):
            return False
    return len(parts) > len(dparts)


def _glob_warning(pat: _Pattern, affected: list[str]) -> str:
    where = ", ".join(affected)
    consequence = ("durable but neither node-local nor checkpointed" if pat.table == "local"
                   else "durable, not node-local")
    return (f"[{pat.table}] pattern {pat.raw!r} is a glob, so fractfs cannot pre-pin it inside the [dirs] "
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
        bases.append(_dirs_root(config) / d)
    local = Path(os.path.abspath(config.root)) / d
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
                elif real_dir and not name.startswith(_OWN_PREFIX):
                    queue.append(sub)
    return found


def _is_dir_quietly(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()  # follows our own links: a directory pin's link leads to a directory
    except OSError:
        return False


# --------------------------------------------------------------------------------------------------------
# Provisioning
# --------------------------------------------------------------------------------------------------------


@dataclass
class ProvisionReport:
    """What :func:`provision` found and did. Lists name app-relative paths unless stated otherwise."""

    capabilities: Capabilities | None = None
    warnings: list[str] = field(default_factory=list)
    linked: list[str] = field(default_factory=list)      #: [dirs] links created or repaired by this call
    migrated: list[str] = field(default_factory=list)    #: files/links moved out of a local [dirs] tree
    pins: list[str] = field(default_factory=list)        #: every pin in effect afterwards ("x/" = dir)
    unpinned: list[str] = field(default_factory=list)    #: planned pins that could not be honoured
    new_pins: list[str] = field(default_factory=list)    #: pins created or repaired by this call
    moved_down: list[str] = field(default_factory=list)  #: Volume files moved to scratch for a pin
    conflicts: list[str] = field(default_factory=list)   #: absolute paths of kept second versions

    @property
    def changed(self) -> bool:
        return bool(self.linked or self.migrated or self.new_pins or self.moved_down or self.conflicts)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {f.name: list(getattr(self, f.name)) for f in dataclasses.fields(self)
                               if f.name != "capabilities"}
        out["capabilities"] = self.capabilities.as_dict() if self.capabilities is not None else None
        return out


@dataclass
class _DirAction:
    dir: str
    local: Path
    volume: Path
    kind: str                       # ok | create | relink | replace_empty | migrate
    old_target: str | None = None


def provision(config: Config, resolver: Resolver, *, force: bool = False,
              scan_limit: int = DEFAULT_SCAN_LIMIT) -> ProvisionReport:
    """Create (or converge to) the symlink layout for ``config``; idempotent.

    Checks everything first and raises :class:`ClobberError` / :class:`ProvisionError` before changing
    anything. With ``force`` a non-empty real local [dirs] directory is migrated to the Volume (pinned
    files to scratch) with copy → fsync → verify → remove, resumable after an interruption.
    """
    report = ProvisionReport()
    if not config.dirs:
        return report
    if config.dirs_root is None:
        raise ProvisionError(
            f"[dirs] {list(config.dirs)} need a POSIX Volume directory to link to, but backend "
            f"{config.backend!r} with fractfs_VOLUME_ROOT={config.volume_root!r} has none. Mount the store "
            f"and set fractfs_VOLUME_ROOT to the mount path, or move these paths out of [dirs] "
            f"(they would otherwise be written to ephemeral local disk without being checkpointed).")
    root = Path(os.path.abspath(config.root))
    vol_root = _dirs_root(config)
    scratch = _scratch(config)
    _check_layout(config, root, vol_root, scratch)

    with _provision_lock(config):
        actions: list[_DirAction] = []
        clobbered: list[str] = []   # non-empty real directories: force migrates them
        in_the_way: list[str] = []  # files where a directory link must go: force cannot help
        for d in config.dirs:
            own_tier = resolver.resolve(d, is_dir=True)
            if own_tier in (Tier.LOCAL, Tier.IGNORE):
                # Precedence says this path stays on the node; redirecting it would contradict the config.
                msg = (f"[dirs] entry {d!r} itself matches a [{own_tier.value}] pattern, which takes "
                       f"precedence: it is left on local disk and not linked to the Volume. Remove one of "
                       f"the two rules.")
                _warn(report, msg)
                continue
            action = _inspect_dir(root, vol_root, d, force)
            if action is not None:
                actions.append(action)
            elif os.path.isdir(root / d):
                clobbered.append(str(root / d))
            else:
                in_the_way.append(str(root / d))
        if clobbered or in_the_way:
            parts = []
            if clobbered:
                parts.append(f"non-empty local director{'y' if len(clobbered) == 1 else 'ies'} "
                             f"{', '.join(clobbered)}: move the data away, or call fractfs.init(force=True) "
                             f"to migrate it to the Volume first")
            if in_the_way:
                parts.append(f"file(s) {', '.join(in_the_way)} where a [dirs] directory belongs: move or "
                             f"delete them (force=True only migrates directories)")
            raise ClobberError("fractfs will not replace these with symlinks to the Volume: "
                               + "; ".join(parts) + ". Nothing was changed.")

        _ensure_dirs_root(config, vol_root)
        caps = probe_volume(vol_root, app_root=root)
        report.capabilities = caps

        # Without symlinks no pin can be placed, so the subdirectory scan (one FUSE listing per directory)
        # would only lengthen the list of unhonoured pins: skip it.
        plan = plan_pins(config, resolver, scan_limit=scan_limit if caps.symlinks else 0)
        for w in plan.warnings:
            _warn(report, w)
        active_dirs = {a.dir for a in actions}
        pins = [p for p in plan.pins if p.dir in active_dirs]
        honoured = pins if caps.symlinks else []
        if pins and not caps.symlinks:
            report.unpinned = [p.label for p in pins]
            _warn(report,
                  f"The Volume at {vol_root} does not support symlinks ({caps.fs_type or 'unknown'} "
                  f"filesystem), so {len(pins)} [local]/[ignore] pin(s) cannot be honoured: "
                  f"{', '.join(report.unpinned)}. These files will live on the Volume instead of node-local "
                  f"scratch (durable, but not checkpointed and slower to write). Keep such state outside "
                  f"[dirs] (plain local disk, checkpointed) if it must be node-local.")
        router = _Router(config, honoured)

        migrations = {a.dir: _scan_migration(a, root, router, caps) for a in actions if a.kind == "migrate"}

        # ---- every check passed: from here on we change things ------------------------------------------
        journal = _Inflight(_state_dir(config) / "inflight.json")
        mover = _Mover(caps, vol_root, journal, report)
        for action in actions:
            _mkdirs(action.volume)
            for pin in honoured:
                if pin.dir == action.dir:
                    _place_pin(pin, config, caps, mover, report)
            if action.kind == "migrate":
                _migrate(action, migrations[action.dir], root, router, mover, report)
            _link_dir(action, report)
        journal.end()  # everything converged: no half-written copy is left for the record to vouch for
    return report


def _check_layout(config: Config, root: Path, vol_root: Path, scratch: Path) -> None:
    """Layouts that would loop data back onto itself; refused before anything is touched."""
    for d in config.dirs:
        local = root / d
        if _is_within(scratch, local) or _is_within(scratch, vol_root / d):
            raise ProvisionError(
                f"fractfs_SCRATCH={scratch} lies inside the [dirs] directory {d!r}: back-symlinks would "
                f"point into the Volume. Set fractfs_SCRATCH to a node-local directory outside [dirs].")
        if _is_within(vol_root / d, local) or _is_within(local, vol_root / d):
            raise ProvisionError(
                f"[dirs] entry {d!r}: the Volume directory {vol_root / d} and the local path {local} "
                f"overlap. Point fractfs_VOLUME_ROOT outside the app root.")
    vr = config.volume_root
    if vr is not None and "://" not in vr and Path(vr) == vol_root:
        first = {d.split("/")[0] for d in config.dirs}
        if config.checkpoint_subdir in first:
            raise ProvisionError(
                f"[dirs] entry {config.checkpoint_subdir!r} collides with the checkpoint area "
                f"{vol_root / config.checkpoint_subdir}. Rename the directory or set "
                f"fractfs_CHECKPOINT_SUBDIR.")


def _inspect_dir(root: Path, vol_root: Path, d: str, force: bool) -> _DirAction | None:
    """Read-only: what has to happen to ``root/d``. None means it would clobber data."""
    local = root / d
    volume = vol_root / d
    # Something that is not a directory where a directory must go cannot be fixed by linking.
    for ancestor in reversed(local.parents):
        if _is_within(ancestor, root) and ancestor != root and os.path.islink(ancestor):
            # the link would be made wherever this symlink points: possibly outside the app root
            raise ProvisionError(f"Cannot provision [dirs] {d!r}: {ancestor} is a symlink (to "
                                 f"{os.readlink(ancestor)!r}). A [dirs] path must go through real directories.")
        if _is_within(ancestor, root) and ancestor != root and os.path.lexists(ancestor) \
                and not os.path.isdir(ancestor):
            raise ProvisionError(f"Cannot provision [dirs] {d!r}: {ancestor} exists and is not a directory. "
                                 f"Move it away.")
    if os.path.lexists(volume) and not os.path.isdir(volume):
        raise ProvisionError(f"Cannot provision [dirs] {d!r}: {volume} on the Volume exists and is not a "
                             f"directory. Move or delete it.")
    try:
        st = os.lstat(local)
    except FileNotFoundError:
        return _DirAction(d, local, volume, "create")
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(local)
        if _same_target(local, target, volume):
            return _DirAction(d, local, volume, "ok")
        return _DirAction(d, local, volume, "relink", old_target=target)
    if stat.S_ISDIR(st.st_mode):
        with os.scandir(local) as it:
            empty = next(it, None) is None
        if empty:
            return _DirAction(d, local, volume, "replace_empty")
        return _DirAction(d, local, volume, "migrate") if force else None
    # A file (or fifo, socket...) sits where the directory link must go. Migration only knows how to move a
    # directory's contents, so force does not help: the user has to decide.
    return None


def _ensure_dirs_root(config: Config, vol_root: Path) -> None:
    # dirs_root may be a subdirectory of a mounted volume_root that does not exist yet: create it then. The
    # volume root itself is never created: a missing mount point must fail loudly, not fill local disk.
    if os.path.isdir(vol_root) or config.volume_root is None or "://" in config.volume_root:
        return
    volume_root = Path(os.path.abspath(config.volume_root))
    if vol_root != volume_root and _is_within(vol_root, volume_root) and os.path.isdir(volume_root):
        _mkdirs(vol_root)


def _link_dir(action: _DirAction, report: ProvisionReport) -> None:
    if action.kind == "ok":
        return
    _mkdirs(action.local.parent)
    if action.kind == "relink":
        msg = (f"{action.local} pointed at {action.old_target}; relinking it to {action.volume} (the data at "
               f"the old target is left untouched)")
        _warn(report, msg)
    elif action.kind in ("replace_empty", "migrate"):
        try:
            os.rmdir(action.local)
        except OSError as exc:
            raise ProvisionError(f"Could not replace {action.local} with a symlink: {_describe(exc)}. "
                                 f"Something wrote into it during provisioning; retry.") from exc
    _atomic_symlink(str(action.volume), action.local, use_rename=True)
    log.info("fractfs: linked %s -> %s", action.local, action.volume)
    report.linked.append(action.dir)


# ---- pins ------------------------------------------------------------------------------------------------


def _place_pin(pin: Pin, config: Config, caps: Capabilities, mover: _Mover, report: ProvisionReport) -> None:
    vol_path = pin.volume_path(config)
    scratch_path = pin.scratch_path(config)
    target = str(scratch_path)
    try:
        # The link may dangle (a file pin before the first write), but its directory must exist or the app's
        # first open(O_CREAT) through it fails with ENOENT.
        _mkdirs(scratch_path if pin.is_dir else scratch_path.parent)
        _mkdirs(vol_path.parent)
    except OSError as exc:
        _unpinned(report, pin, _describe(exc))
        return
    try:
        st: os.stat_result | None = os.lstat(vol_path)
    except FileNotFoundError:
        st = None

    if st is not None and stat.S_ISLNK(st.st_mode):
        current = os.readlink(vol_path)
        if current == target:
            report.pins.append(pin.label)
            return
        log.info("fractfs: pin %s pointed at %s; repointing it at %s", vol_path, current, target)
    elif st is not None and stat.S_ISREG(st.st_mode) and not pin.is_dir:
        _move_down_file(vol_path, scratch_path, pin, config, mover, report)
    elif st is not None and stat.S_ISDIR(st.st_mode) and pin.is_dir:
        _move_down_tree(vol_path, scratch_path, mover)
        report.moved_down.append(pin.label)
    elif st is not None:
        kind = "directory" if stat.S_ISDIR(st.st_mode) else "non-regular file"
        _unpinned(report, pin, f"a {kind} already occupies {vol_path}; move it away to pin this path")
        return
    _atomic_symlink(target, vol_path, use_rename=caps.rename)
    log.info("fractfs: pinned %s -> %s (%s)", vol_path, target, pin.tier.value)
    report.pins.append(pin.label)
    report.new_pins.append(pin.label)


def _unpinned(report: ProvisionReport, pin: Pin, why: str) -> None:
    report.unpinned.append(pin.label)
    _warn(report, f"Cannot pin {pin.label} (pattern {pin.pattern!r}): {why}. It stays on the Volume.")


def _move_down_file(vol_path: Path, scratch_path: Path, pin: Pin, config: Config, mover: _Mover,
                    report: ProvisionReport) -> None:
    """A real file sits on the Volume where a pin belongs: bring it to scratch, losing nothing.

    If scratch already holds a *different* version, the newer one (by mtime; a tie keeps scratch, which is
    what the app has been writing through the link) takes the pinned name, and the other is kept on the
    Volume as ``<name>.fractfs-conflict-<n>``: the Volume is durable and visible to the app through the
    [dirs] link, whereas scratch is wiped with the node. Every step is re-runnable: each interruption leaves
    either both versions in place or two identical copies, which the next run resolves.
    """
    report.moved_down.append(pin.label)
    if not os.path.lexists(scratch_path):
        mover.move(vol_path, scratch_path)
        return
    if _same_content(vol_path, scratch_path):
        _unlink_synced(vol_path)
        return
    conflict_base = _dirs_root(config) / pin.relpath
    if os.stat(vol_path).st_mtime_ns > os.stat(scratch_path).st_mtime_ns:
        # Volume is newer: first preserve scratch's version on the Volume, then replace scratch.
        mover.copy_to_conflict(scratch_path, conflict_base)
        mover.move(vol_path, scratch_path, overwrite=True)
    else:
        mover.move_to_conflict(vol_path, conflict_base)


def _move_down_tree(vol_dir: Path, scratch_dir: Path, mover: _Mover) -> None:
    """Merge a real Volume directory into scratch (conflicts kept side by side), then remove it."""
    _mkdirs(scratch_dir)
    for dirpath, dirnames, filenames in os.walk(vol_dir, topdown=True):
        here = Path(dirpath)
        dst_dir = scratch_dir / here.relative_to(vol_dir)
        _mkdirs(dst_dir)
        for name in list(dirnames):
            if os.path.islink(here / name):
                dirnames.remove(name)
                mover.move_symlink(here / name, dst_dir / name)
        for name in filenames:
            src = here / name
            if os.path.islink(src):
                mover.move_symlink(src, dst_dir / name)
            elif os.path.isfile(src):
                mover.move(src, dst_dir / name)
    _remove_empty_tree(vol_dir)


# ---- migration -------------------------------------------------------------------------------------------


class _Router:
    """Where a file of a [dirs] tree really lives: scratch when a pin covers it, else the Volume."""

    def __init__(self, config: Config, pins: list[Pin]):
        self.vol_root = _dirs_root(config)
        self.scratch = _scratch(config)
        self.file_pins = {p.relpath for p in pins if not p.is_dir}
        self.dir_pins = [p.relpath for p in pins if p.is_dir]

    def pinned(self, relpath: str) -> bool:
        return relpath in self.file_pins or any(relpath == d or relpath.startswith(d + "/")
                                                for d in self.dir_pins)

    def destination(self, relpath: str) -> Path:
        # Always the real path, never through a link: the moves must know which filesystem they write to.
        return (self.scratch if self.pinned(relpath) else self.vol_root) / relpath

    def conflict_base(self, relpath: str) -> Path:
        """Where a second version of ``relpath`` is kept: where the app sees ``<relpath>.fractfs-conflict-n``.

        Inside a directory pin that is scratch; next to a file pin it is the Volume (the conflict name is not
        pinned), which is also the durable choice.
        """
        in_dir_pin = any(relpath.startswith(d + "/") for d in self.dir_pins)
        return (self.scratch if in_dir_pin else self.vol_root) / relpath


@dataclass
class _Entry:
    relpath: str
    kind: str          # "file" | "symlink" | "dir"


def _scan_migration(action: _DirAction, root: Path, router: _Router, caps: Capabilities) -> list[_Entry]:
    """Read-only walk of the local tree to migrate; refuses what cannot be moved faithfully."""
    entries: list[_Entry] = []
    problems: list[str] = []
    for dirpath, dirnames, filenames in os.walk(action.local, topdown=True):
        here = Path(dirpath)
        for name in sorted(dirnames) + sorted(filenames):
            full = here / name
            rel = full.relative_to(root).as_posix()
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                if name in dirnames:
                    dirnames.remove(name)  # recreated as a link, never followed
                if not caps.symlinks and not router.pinned(rel):
                    problems.append(f"{full} is a symlink and the Volume cannot store symlinks")
                entries.append(_Entry(rel, "symlink"))
            elif stat.S_ISDIR(st.st_mode):
                dst = router.destination(rel)
                if os.path.lexists(dst) and not os.path.isdir(dst):
                    problems.append(f"{full} is a directory but {dst} exists and is not one")
                entries.append(_Entry(rel, "dir"))
            elif stat.S_ISREG(st.st_mode):
                entries.append(_Entry(rel, "file"))
            else:
                problems.append(f"{full} is a special file (fifo, socket or device)")
    if problems:
        shown = "; ".join(problems[:20]) + (f"; and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise ProvisionError(f"Cannot migrate {action.local} to the Volume: {shown}. Nothing was changed; "
                             f"move or remove these entries and retry.")
    return entries


def _migrate(action: _DirAction, entries: list[_Entry], root: Path, router: _Router, mover: _Mover,
             report: ProvisionReport) -> None:
    log.info("fractfs: migrating %d entries from %s to the Volume", len(entries), action.local)
    for entry in entries:  # top-down: every directory precedes its contents
        src = root / entry.relpath
        dst = router.destination(entry.relpath)
        if entry.kind == "dir":
            _mkdirs(dst)
            continue
        if not os.path.lexists(src):
            continue  # already moved by an earlier (interrupted) run
        if entry.kind == "symlink":
            mover.move_symlink(src, dst)
        else:
            mover.move(src, dst, conflict_base=router.conflict_base(entry.relpath))
        report.migrated.append(entry.relpath)
    _remove_empty_tree(action.local, keep_top=True)


# ---- crash-safe moves ------------------------------------------------------------------------------------


class _Inflight:
    """One-entry journal (node-local) naming the file being written without a temp name.

    Only needed when the Volume cannot rename: the copy then goes straight to its final name, and after a
    crash a half-written file there is indistinguishable from a genuine different version, except through
    this record. It names the source as well as the destination, so it can only ever vouch for the copy of
    that very source; it lives next to the local data, so it survives exactly the crashes that leave the
    source in place, and a provisioning run that completes clears it.
    """

    def __init__(self, path: Path):
        self.path = path

    def owns(self, src: Path, dst: Path) -> bool:
        try:
            with open(self.path, encoding="utf-8") as fh:
                record = json.load(fh)
        except (OSError, ValueError):
            return False
        return bool(record.get("dst") == str(dst) and record.get("src") == str(src))

    def begin(self, src: Path, dst: Path) -> None:
        _mkdirs(self.path.parent)
        write_replace(self.path, json.dumps({"src": str(src), "dst": str(dst)}).encode(), durable=True)

    def end(self) -> None:
        _unlink_quietly(self.path)


class _Mover:
    """Copy → fsync → verify → remove, with the keep-both conflict rule.

    Conflict rule (chosen over refusing): when the destination already holds *different* content that is
    not our own half-finished copy, nothing is overwritten; the incoming file is placed beside it as
    ``<name>.fractfs-conflict-<n>`` and a warning names it. Refusing would have to be decided before the
    first byte moves (hashing every collision twice) or else strand a half-migrated tree; keep-both never
    loses a byte, never blocks startup, and stays idempotent because an existing conflict copy with
    identical content is reused instead of creating another one (as Syncthing/Dropbox conflict files do).
    """

    def __init__(self, caps: Capabilities, vol_root: Path, journal: _Inflight, report: ProvisionReport):
        self.caps = caps
        self.vol_root = vol_root
        self.journal = journal
        self.report = report

    # public helpers -------------------------------------------------------------------------------------

    def move(self, src: Path, dst: Path, *, overwrite: bool = False, conflict_base: Path | None = None) -> None:
        """Move regular file ``src`` to ``dst``; identical content already at ``dst`` just drops ``src``.

        A different file at ``dst`` keeps its place and ``src`` goes to ``<conflict_base>.fractfs-conflict-<n>``
        (``conflict_base`` defaults to ``dst``). With ``overwrite`` the content at ``dst`` is replaced: only
        for callers that have already preserved it.
        """
        if os.path.lexists(dst) and not overwrite:
            if self.journal.owns(src, dst):
                _unlink_quietly(dst)  # our own half-written copy from an interrupted run
                self.journal.end()
            elif os.path.isfile(dst) and _same_content(src, dst):
                _unlink_synced(src)
                return
            else:
                dst = self._conflict_name(src, conflict_base or dst)
                if os.path.lexists(dst):  # an identical conflict copy exists already
                    _unlink_synced(src)
                    return
                self._note_conflict(dst)
        if not os.path.lexists(dst) and _try_rename(src, dst):
            return
        self._copy(src, dst, rename_ok=self._rename_ok(dst))
        _unlink_synced(src)

    def _rename_ok(self, dst: Path) -> bool:
        # Local disk (scratch) always renames; the Volume only if the probe said so.
        return self.caps.rename or not _is_within(dst, self.vol_root)

    def move_to_conflict(self, src: Path, base: Path) -> None:
        dst = self._conflict_name(src, base)
        if os.path.lexists(dst):
            _unlink_synced(src)
            return
        self._note_conflict(dst)
        if not _try_rename(src, dst):
            self._copy(src, dst, rename_ok=self._rename_ok(dst))
            _unlink_synced(src)

    def copy_to_conflict(self, src: Path, base: Path) -> None:
        dst = self._conflict_name(src, base)
        if not os.path.lexists(dst):
            self._note_conflict(dst)
            self._copy(src, dst, rename_ok=self._rename_ok(dst))

    def move_symlink(self, src: Path, dst: Path) -> None:
        target = os.readlink(src)
        if os.path.lexists(dst):
            if os.path.islink(dst) and os.readlink(dst) == target:
                _unlink_synced(src)
                return
            n = 1
            while True:
                candidate = dst.with_name(f"{dst.name}{CONFLICT_SUFFIX}-{n}")
                if not os.path.lexists(candidate):
                    break
                if os.path.islink(candidate) and os.readlink(candidate) == target:
                    _unlink_synced(src)
                    return
                n += 1
            dst = candidate
            self._note_conflict(dst)
        os.symlink(target, dst)  # creating a symlink is atomic: no temp name needed
        _fsync_dir(dst.parent)
        _unlink_synced(src)

    # internals ------------------------------------------------------------------------------------------

    def _conflict_name(self, src: Path, base: Path) -> Path:
        """First ``base.fractfs-conflict-<n>`` that is free, ours from a crash, or already equal to src."""
        n = 1
        while True:
            candidate = base.with_name(f"{base.name}{CONFLICT_SUFFIX}-{n}")
            if not os.path.lexists(candidate):
                return candidate
            if self.journal.owns(src, candidate):
                _unlink_quietly(candidate)
                self.journal.end()
                return candidate
            if os.path.isfile(candidate) and _same_content(src, candidate):
                return candidate
            n += 1

    def _note_conflict(self, dst: Path) -> None:
        self.report.conflicts.append(str(dst))
        _warn(self.report, f"kept both versions: a different file already existed, so the incoming copy was "
                           f"written to {dst}. Compare the two and delete the one you do not need.")

    def _copy(self, src: Path, dst: Path, *, rename_ok: bool) -> None:
        before = os.stat(src)
        if rename_ok:
            # Deterministic temp name: a re-run after a crash overwrites the leftover instead of piling up.
            tmp = dst.with_name(f".{dst.name}{_PARTIAL_SUFFIX}")
        else:
            tmp = dst
            self.journal.begin(src, dst)
        src_hash = _copy_bytes(src, tmp, before.st_size)
        after = os.stat(src)
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            _unlink_quietly(tmp)
            raise ProvisionError(f"{src} changed while fractfs was moving it; stop writers to it during "
                                 f"fractfs.init() and retry.")
        dst_hash, dst_size = _hash_file(tmp)
        if dst_size != before.st_size or dst_hash != src_hash:
            _unlink_quietly(tmp)
            raise ProvisionError(f"Verification failed copying {src} to {dst} (size {dst_size} vs "
                                 f"{before.st_size}, sha256 mismatch={dst_hash != src_hash}); the source was "
                                 f"kept. Check the Volume mount and retry.")
        _copy_metadata(before, tmp)
        if rename_ok:
            os.replace(tmp, dst)
        _fsync_dir(dst.parent)
        if not rename_ok:
            self.journal.end()


def _try_rename(src: Path, dst: Path) -> bool:
    """Move by rename when src and dst share a filesystem (atomic, no copy). False: copy instead.

    Checked with st_dev first because rename across filesystems fails with EXDEV anyway, and some FUSE mounts
    answer an unsupported rename with errors other than EXDEV.
    """
    try:
        if os.stat(src).st_dev != os.stat(dst.parent).st_dev:
            return False
        os.rename(src, dst)
    except OSError as exc:
        log.debug("fractfs: rename %s -> %s failed (%s); copying instead", src, dst, _describe(exc))
        return False
    _fsync_dir(dst.parent)
    _fsync_dir(src.parent)
    return True


def _copy_bytes(src: Path, dst: Path, size: int) -> str:
    """Copy the first ``size`` bytes (the size seen at stat: a growing file cannot keep us reading forever),
    fsync, and return the sha256 of what was written."""
    digest = hashlib.sha256()
    remaining = size
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while remaining > 0:
            chunk = fin.read(min(_CHUNK, remaining))
            if not chunk:
                break
            fout.write(chunk)
            digest.update(chunk)
            remaining -= len(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    if remaining:
        _unlink_quietly(dst)
        raise ProvisionError(f"{src} shrank while fractfs was moving it; stop writers to it during "
                             f"fractfs.init() and retry.")
    return digest.hexdigest()


def _hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _same_content(a: Path, b: Path) -> bool:
    try:
        if os.stat(a).st_size != os.stat(b).st_size:
            return False
        return _hash_file(a)[0] == _hash_file(b)[0]
    except OSError:
        return False


def _copy_metadata(st: os.stat_result, dst: Path) -> None:
    # Best effort: FUSE object-store mounts often reject chmod/utime, and the bytes are what matter. The
    # mtime is kept because the pin conflict rule compares mtimes.
    try:
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    except OSError:
        pass
    try:
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
    except OSError:
        pass


# ---- small filesystem helpers ------------------------------------------------------------------------------


def _atomic_symlink(target: str, path: Path, *, use_rename: bool) -> None:
    """Make ``path`` a symlink to ``target`` without a moment where ``path`` is missing (when rename works)."""
    if use_rename:
        tmp = path.with_name(f".{path.name}{_OWN_PREFIX}link-{secrets.token_hex(4)}")
        os.symlink(target, tmp)
        try:
            os.replace(tmp, path)
        except OSError:
            _unlink_quietly(tmp)
            raise
    else:
        # No rename on this Volume: replacing an existing link needs a brief gap; creating one does not.
        if os.path.islink(path):
            os.unlink(path)
        os.symlink(target, path)
    _fsync_dir(path.parent)


def _remove_empty_tree(top: Path, *, keep_top: bool = False) -> None:
    """rmdir every empty directory under ``top`` bottom-up (and ``top`` itself unless ``keep_top``)."""
    for dirpath, _dirnames, _filenames in os.walk(top, topdown=False):
        if keep_top and Path(dirpath) == top:
            continue
        try:
            os.rmdir(dirpath)
        except OSError as exc:
            raise ProvisionError(f"Could not remove {dirpath} after moving its contents: "
                                 f"{_describe(exc)}. Something may still be writing there; retry.") from exc


def _mkdirs(path: Path) -> None:
    os.makedirs(path, exist_ok=True)


def _unlink_synced(path: Path) -> None:
    os.unlink(path)
    _fsync_dir(path.parent)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.debug("fractfs: could not remove %s: %s", path, _describe(exc))


def _fsync_dir(path: Path) -> None:
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


def _same_target(link: Path, target: str, wanted: Path) -> bool:
    resolved = target if os.path.isabs(target) else os.path.join(str(link.parent), target)
    return os.path.normpath(resolved) == os.path.normpath(str(wanted))


def _is_within(path: Path, parent: Path) -> bool:
    p, q = os.path.normpath(str(path)), os.path.normpath(str(parent))
    return p == q or p.startswith(q.rstrip("/") + "/")


def _dirs_root(config: Config) -> Path:
    assert config.dirs_root is not None  # callers check; narrows the Optional for mypy
    return Path(os.path.abspath(os.path.join(str(config.root), str(config.dirs_root))))


def _scratch(config: Config) -> Path:
    # A relative scratch is taken relative to the app root: back-symlink targets must be absolute.
    return Path(os.path.abspath(os.path.join(str(config.root), str(config.scratch))))


def _state_dir(config: Config) -> Path:
    # Same place as Config.state_dir, but anchored like _scratch() when scratch is relative.
    return _scratch(config) / ".fractfs-state"


def _describe(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno, "") if exc.errno is not None else ""
    text = exc.strerror or str(exc)
    return f"{name}: {text}" if name else text


def _warn(report: ProvisionReport, message: str) -> None:
    log.warning("fractfs: %s", message)
    report.warnings.append(message)


@contextlib.contextmanager
def _provision_lock(config: Config) -> Iterator[None]:
    """Exclusive node-local lock: several workers of one app (gunicorn, uvicorn --workers) all call init()."""
    path = _state_dir(config) / "provision.lock"
    private_dir(path.parent)  # the first to make the state dir: 0700 from creation (docs/security.md)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by close(), also when the process dies
        yield
    finally:
        os.close(fd)
