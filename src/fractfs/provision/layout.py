"""The ``[dirs]`` symlink layout: inspect, then link, pin and migrate, converging on every call.

Layout produced for every ``[dirs]`` entry ``D`` (``VOL`` is ``config.dirs_root``, ``SCRATCH`` is
``config.scratch``)::

    ROOT/D                 -> VOL/D                 (local directory symlink: works on any Volume)
    VOL/D/manifest.json    -> SCRATCH/D/manifest.json   (exact-name pin, may dangle)
    VOL/D/.locks           -> SCRATCH/D/.locks          (directory pin)

:func:`provision` checks everything before it changes anything, and converges: calling it again on a
provisioned tree changes nothing. Without symlinks on the Volume the pins cannot exist; the app still runs
and one warning names every pin that is not honoured.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..config import Config, is_within
from ..errors import ClobberError, ProvisionError
from ..tiers import Tier
from .fsops import atomic_symlink, describe, mkdirs
from .migrate import Inflight, Mover, Router, migrate, move_down_file, move_down_tree, scan_migration
from .pins import DEFAULT_SCAN_LIMIT, Pin, Resolver, plan_pins
from .probe import Capabilities, probe_volume
from .report import ProvisionReport, warn

__all__ = ["provision"]

log = logging.getLogger("fractfs")


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

    ``config`` comes from :func:`fractfs.config.load_config`, which has already refused every layout that
    loops data back onto itself ([dirs] through a symlink or overlapping the Volume, scratch inside [dirs]
    or the Volume, a [dirs] entry on the checkpoint area, [dirs] without a POSIX ``dirs_root``): those are
    not checked again here. What is checked is what only the disk can say, right before it is changed.
    """
    report = ProvisionReport()
    if not config.dirs:
        return report
    # load_config sets dirs_root whenever [dirs] and a Volume are configured, and passthrough (no Volume)
    # never provisions: this narrows the type, it does not validate
    assert config.dirs_root is not None
    root, vol_root = config.root, config.dirs_root

    with _provision_lock(config):
        actions = _inspect_dirs(config, vol_root, resolver, force, report)
        _ensure_dirs_root(config, vol_root)
        caps = probe_volume(vol_root, app_root=root)
        report.capabilities = caps

        # Without symlinks no pin can be placed, so the subdirectory scan (one FUSE listing per directory)
        # would only lengthen the list of unhonoured pins: skip it.
        plan = plan_pins(config, resolver, scan_limit=scan_limit if caps.symlinks else 0)
        for w in plan.warnings:
            warn(report, w)
        active_dirs = {a.dir for a in actions}
        pins = [p for p in plan.pins if p.dir in active_dirs]
        honoured = pins if caps.symlinks else []
        if pins and not caps.symlinks:
            report.unpinned = [p.label for p in pins]
            warn(report,
                 f"The Volume at {vol_root} does not support symlinks ({caps.fs_type or 'unknown'} "
                 f"filesystem), so {len(pins)} [local]/[ignore] pin(s) cannot be honoured: "
                 f"{', '.join(report.unpinned)}. These files will live on the Volume instead of node-local "
                 f"scratch (durable, but not checkpointed and slower to write). Keep such state outside "
                 f"[dirs] (plain local disk, checkpointed) if it must be node-local.")
        router = Router(vol_root, config.scratch, honoured)

        migrations = {a.dir: scan_migration(a.local, root, router, caps)
                      for a in actions if a.kind == "migrate"}

        # ---- every check passed: from here on we change things ------------------------------------------
        journal = Inflight(config.state_dir / "inflight.json")
        mover = Mover(caps, vol_root, journal, report)
        for action in actions:
            mkdirs(action.volume)
            for pin in honoured:
                if pin.dir == action.dir:
                    _place_pin(pin, config, caps, mover, report)
            if action.kind == "migrate":
                migrate(action.local, migrations[action.dir], root, router, mover, report)
            _link_dir(action, report)
        journal.end()  # everything converged: no half-written copy is left for the record to vouch for
    return report


def _inspect_dirs(config: Config, vol_root: Path, resolver: Resolver, force: bool,
                  report: ProvisionReport) -> list[_DirAction]:
    """Read-only: what has to happen to each [dirs] entry; ClobberError when some would lose data."""
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
            warn(report, msg)
            continue
        action = _inspect_dir(config.root, vol_root, d, force)
        if action is not None:
            actions.append(action)
        elif os.path.isdir(config.root / d):
            clobbered.append(str(config.root / d))
        else:
            in_the_way.append(str(config.root / d))
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
    return actions


def _inspect_dir(root: Path, vol_root: Path, d: str, force: bool) -> _DirAction | None:
    """Read-only: what has to happen to ``root/d``. None means it would clobber data."""
    local = root / d
    volume = vol_root / d
    # Something that is not a directory where a directory must go cannot be fixed by linking. (A symlink on
    # the way is refused by load_config: the link would land outside the app root.)
    for ancestor in reversed(local.parents):
        if is_within(ancestor, root) and ancestor != root and os.path.lexists(ancestor) \
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
    if vol_root != volume_root and is_within(vol_root, volume_root) and os.path.isdir(volume_root):
        mkdirs(vol_root)


def _link_dir(action: _DirAction, report: ProvisionReport) -> None:
    if action.kind == "ok":
        return
    mkdirs(action.local.parent)
    if action.kind == "relink":
        msg = (f"{action.local} pointed at {action.old_target}; relinking it to {action.volume} (the data at "
               f"the old target is left untouched)")
        warn(report, msg)
    elif action.kind in ("replace_empty", "migrate"):
        try:
            os.rmdir(action.local)
        except OSError as exc:
            raise ProvisionError(f"Could not replace {action.local} with a symlink: {describe(exc)}. "
                                 f"Something wrote into it during provisioning; retry.") from exc
    atomic_symlink(str(action.volume), action.local, use_rename=True)
    log.info("fractfs: linked %s -> %s", action.local, action.volume)
    report.linked.append(action.dir)


def _place_pin(pin: Pin, config: Config, caps: Capabilities, mover: Mover, report: ProvisionReport) -> None:
    vol_path = pin.volume_path(config)
    scratch_path = pin.scratch_path(config)
    target = str(scratch_path)
    try:
        # The link may dangle (a file pin before the first write), but its directory must exist or the app's
        # first open(O_CREAT) through it fails with ENOENT.
        mkdirs(scratch_path if pin.is_dir else scratch_path.parent)
        mkdirs(vol_path.parent)
    except OSError as exc:
        _unpinned(report, pin, describe(exc))
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
        move_down_file(vol_path, scratch_path, pin.label, mover, report)
    elif st is not None and stat.S_ISDIR(st.st_mode) and pin.is_dir:
        move_down_tree(vol_path, scratch_path, mover)
        report.moved_down.append(pin.label)
    elif st is not None:
        kind = "directory" if stat.S_ISDIR(st.st_mode) else "non-regular file"
        _unpinned(report, pin, f"a {kind} already occupies {vol_path}; move it away to pin this path")
        return
    atomic_symlink(target, vol_path, use_rename=caps.rename)
    log.info("fractfs: pinned %s -> %s (%s)", vol_path, target, pin.tier.value)
    report.pins.append(pin.label)
    report.new_pins.append(pin.label)


def _unpinned(report: ProvisionReport, pin: Pin, why: str) -> None:
    report.unpinned.append(pin.label)
    warn(report, f"Cannot pin {pin.label} (pattern {pin.pattern!r}): {why}. It stays on the Volume.")


def _same_target(link: Path, target: str, wanted: Path) -> bool:
    resolved = target if os.path.isabs(target) else os.path.join(str(link.parent), target)
    return os.path.normpath(resolved) == os.path.normpath(str(wanted))


@contextlib.contextmanager
def _provision_lock(config: Config) -> Iterator[None]:
    """Exclusive node-local lock: several workers of one app (gunicorn, uvicorn --workers) all call init()."""
    path = config.state_dir / "provision.lock"
    mkdirs(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by close(), also when the process dies
        yield
    finally:
        os.close(fd)
