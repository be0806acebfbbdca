"""Moving data between local disk, the Volume and scratch without ever losing a byte.

The Volume is usually another filesystem (rename gives EXDEV), so moves are copy → fsync → verify (size +
sha256 of both sides) → remove, each step safe to interrupt and re-run; a plain rename is used only when both
ends share a filesystem. Two callers: migrating a non-empty local ``[dirs]`` directory to the Volume
(``init(force=True)``), and moving a file the Volume already holds down to scratch where a pin now belongs.
When two different versions of one file meet, both are kept (see :class:`Mover`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ..config import is_within
from ..errors import ProvisionError
from ..localfile import hash_file, write_replace
from .fsops import describe, fsync_dir, mkdirs, remove_empty_tree, unlink_quietly, unlink_synced
from .pins import Pin
from .probe import Capabilities
from .report import ProvisionReport, warn

__all__ = ["CONFLICT_SUFFIX", "Entry", "Inflight", "Mover", "Router", "migrate", "move_down_file",
           "move_down_tree", "scan_migration"]

log = logging.getLogger("fractfs")

#: Suffix (plus ``-<n>``) of the second copy kept when two different versions of one file meet.
CONFLICT_SUFFIX = ".fractfs-conflict"
_PARTIAL_SUFFIX = ".fractfs-partial"
_CHUNK = 1024 * 1024


# ---- migration of a local [dirs] tree -------------------------------------------------------------------


class Router:
    """Where a file of a [dirs] tree really lives: scratch when a pin covers it, else the Volume."""

    def __init__(self, vol_root: Path, scratch: Path, pins: list[Pin]):
        self.vol_root = vol_root
        self.scratch = scratch
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
class Entry:
    relpath: str
    kind: str          # "file" | "symlink" | "dir"


def scan_migration(local: Path, root: Path, router: Router, caps: Capabilities) -> list[Entry]:
    """Read-only walk of the local tree ``local`` (inside ``root``) to migrate; refuses what cannot be moved
    faithfully, before anything is moved."""
    entries: list[Entry] = []
    problems: list[str] = []
    for dirpath, dirnames, filenames in os.walk(local, topdown=True):
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
                entries.append(Entry(rel, "symlink"))
            elif stat.S_ISDIR(st.st_mode):
                dst = router.destination(rel)
                if os.path.lexists(dst) and not os.path.isdir(dst):
                    problems.append(f"{full} is a directory but {dst} exists and is not one")
                entries.append(Entry(rel, "dir"))
            elif stat.S_ISREG(st.st_mode):
                entries.append(Entry(rel, "file"))
            else:
                problems.append(f"{full} is a special file (fifo, socket or device)")
    if problems:
        shown = "; ".join(problems[:20]) + (f"; and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise ProvisionError(f"Cannot migrate {local} to the Volume: {shown}. Nothing was changed; "
                             f"move or remove these entries and retry.")
    return entries


def migrate(local: Path, entries: list[Entry], root: Path, router: Router, mover: Mover,
            report: ProvisionReport) -> None:
    """Move the scanned ``entries`` of ``local`` to where the router says; resumable after a crash."""
    log.info("fractfs: migrating %d entries from %s to the Volume", len(entries), local)
    for entry in entries:  # top-down: every directory precedes its contents
        src = root / entry.relpath
        dst = router.destination(entry.relpath)
        if entry.kind == "dir":
            mkdirs(dst)
            continue
        if not os.path.lexists(src):
            continue  # already moved by an earlier (interrupted) run
        if entry.kind == "symlink":
            mover.move_symlink(src, dst)
        else:
            mover.move(src, dst, conflict_base=router.conflict_base(entry.relpath))
        report.migrated.append(entry.relpath)
    remove_empty_tree(local, keep_top=True)


def move_down_file(vol_path: Path, scratch_path: Path, label: str, mover: Mover,
                   report: ProvisionReport) -> None:
    """A real file sits on the Volume where a pin belongs: bring it to scratch, losing nothing.

    If scratch already holds a *different* version, the newer one (by mtime; a tie keeps scratch, which is
    what the app has been writing through the link) takes the pinned name, and the other is kept on the
    Volume as ``<name>.fractfs-conflict-<n>``: the Volume is durable and visible to the app through the
    [dirs] link, whereas scratch is wiped with the node. Every step is re-runnable: each interruption leaves
    either both versions in place or two identical copies, which the next run resolves.
    """
    report.moved_down.append(label)
    if not os.path.lexists(scratch_path):
        mover.move(vol_path, scratch_path)
        return
    if same_content(vol_path, scratch_path):
        unlink_synced(vol_path)
        return
    if os.stat(vol_path).st_mtime_ns > os.stat(scratch_path).st_mtime_ns:
        # Volume is newer: first preserve scratch's version on the Volume, then replace scratch.
        mover.copy_to_conflict(scratch_path, vol_path)
        mover.move(vol_path, scratch_path, overwrite=True)
    else:
        mover.move_to_conflict(vol_path, vol_path)


def move_down_tree(vol_dir: Path, scratch_dir: Path, mover: Mover) -> None:
    """Merge a real Volume directory into scratch (conflicts kept side by side), then remove it."""
    mkdirs(scratch_dir)
    for dirpath, dirnames, filenames in os.walk(vol_dir, topdown=True):
        here = Path(dirpath)
        dst_dir = scratch_dir / here.relative_to(vol_dir)
        mkdirs(dst_dir)
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
    remove_empty_tree(vol_dir)




# ---- crash-safe moves ------------------------------------------------------------------------------------


class Inflight:
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
        mkdirs(self.path.parent)
        write_replace(self.path, json.dumps({"src": str(src), "dst": str(dst)}).encode(), durable=True)

    def end(self) -> None:
        unlink_quietly(self.path)


class Mover:
    """Copy → fsync → verify → remove, with the keep-both conflict rule.

    Conflict rule (chosen over refusing): when the destination already holds *different* content that is
    not our own half-finished copy, nothing is overwritten; the incoming file is placed beside it as
    ``<name>.fractfs-conflict-<n>`` and a warning names it. Refusing would have to be decided before the
    first byte moves (hashing every collision twice) or else strand a half-migrated tree; keep-both never
    loses a byte, never blocks startup, and stays idempotent because an existing conflict copy with
    identical content is reused instead of creating another one (as Syncthing/Dropbox conflict files do).
    """

    def __init__(self, caps: Capabilities, vol_root: Path, journal: Inflight, report: ProvisionReport):
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
                unlink_quietly(dst)  # our own half-written copy from an interrupted run
                self.journal.end()
            elif os.path.isfile(dst) and same_content(src, dst):
                unlink_synced(src)
                return
            else:
                dst = self._conflict_name(src, conflict_base or dst)
                if os.path.lexists(dst):  # an identical conflict copy exists already
                    unlink_synced(src)
                    return
                self._note_conflict(dst)
        if not os.path.lexists(dst) and try_rename(src, dst):
            return
        self._copy(src, dst, rename_ok=self._rename_ok(dst))
        unlink_synced(src)

    def _rename_ok(self, dst: Path) -> bool:
        # Local disk (scratch) always renames; the Volume only if the probe said so.
        return self.caps.rename or not is_within(dst, self.vol_root)

    def move_to_conflict(self, src: Path, base: Path) -> None:
        dst = self._conflict_name(src, base)
        if os.path.lexists(dst):
            unlink_synced(src)
            return
        self._note_conflict(dst)
        if not try_rename(src, dst):
            self._copy(src, dst, rename_ok=self._rename_ok(dst))
            unlink_synced(src)

    def copy_to_conflict(self, src: Path, base: Path) -> None:
        dst = self._conflict_name(src, base)
        if not os.path.lexists(dst):
            self._note_conflict(dst)
            self._copy(src, dst, rename_ok=self._rename_ok(dst))

    def move_symlink(self, src: Path, dst: Path) -> None:
        target = os.readlink(src)
        if os.path.lexists(dst):
            if os.path.islink(dst) and os.readlink(dst) == target:
                unlink_synced(src)
                return
            n = 1
            while True:
                candidate = dst.with_name(f"{dst.name}{CONFLICT_SUFFIX}-{n}")
                if not os.path.lexists(candidate):
                    break
                if os.path.islink(candidate) and os.readlink(candidate) == target:
                    unlink_synced(src)
                    return
                n += 1
            dst = candidate
            self._note_conflict(dst)
        os.symlink(target, dst)  # creating a symlink is atomic: no temp name needed
        fsync_dir(dst.parent)
        unlink_synced(src)

    # internals ------------------------------------------------------------------------------------------

    def _conflict_name(self, src: Path, base: Path) -> Path:
        """First ``base.fractfs-conflict-<n>`` that is free, ours from a crash, or already equal to src."""
        n = 1
        while True:
            candidate = base.with_name(f"{base.name}{CONFLICT_SUFFIX}-{n}")
            if not os.path.lexists(candidate):
                return candidate
            if self.journal.owns(src, candidate):
                unlink_quietly(candidate)
                self.journal.end()
                return candidate
            if os.path.isfile(candidate) and same_content(src, candidate):
                return candidate
            n += 1

    def _note_conflict(self, dst: Path) -> None:
        self.report.conflicts.append(str(dst))
        warn(self.report, f"kept both versions: a different file already existed, so the incoming copy was "
                           f"written to {dst}. Compare the two and delete the one you do not need.")

    def _copy(self, src: Path, dst: Path, *, rename_ok: bool) -> None:
        before = os.stat(src)
        if rename_ok:
            # Deterministic temp name: a re-run after a crash overwrites the leftover instead of piling up.
            tmp = dst.with_name(f".{dst.name}{_PARTIAL_SUFFIX}")
        else:
            tmp = dst
            self.journal.begin(src, dst)
        src_hash = copy_bytes(src, tmp, before.st_size)
        after = os.stat(src)
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            unlink_quietly(tmp)
            raise ProvisionError(f"{src} changed while fractfs was moving it; stop writers to it during "
                                 f"fractfs.init() and retry.")
        dst_hash, dst_size = hash_file(tmp)
        if dst_size != before.st_size or dst_hash != src_hash:
            unlink_quietly(tmp)
            raise ProvisionError(f"Verification failed copying {src} to {dst} (size {dst_size} vs "
                                 f"{before.st_size}, sha256 mismatch={dst_hash != src_hash}); the source was "
                                 f"kept. Check the Volume mount and retry.")
        copy_metadata(before, tmp)
        if rename_ok:
            os.replace(tmp, dst)
        fsync_dir(dst.parent)
        if not rename_ok:
            self.journal.end()


def try_rename(src: Path, dst: Path) -> bool:
    """Move by rename when src and dst share a filesystem (atomic, no copy). False: copy instead.

    Checked with st_dev first because rename across filesystems fails with EXDEV anyway, and some FUSE mounts
    answer an unsupported rename with errors other than EXDEV.
    """
    try:
        if os.stat(src).st_dev != os.stat(dst.parent).st_dev:
            return False
        os.rename(src, dst)
    except OSError as exc:
        log.debug("fractfs: rename %s -> %s failed (%s); copying instead", src, dst, describe(exc))
        return False
    fsync_dir(dst.parent)
    fsync_dir(src.parent)
    return True


def copy_bytes(src: Path, dst: Path, size: int) -> str:
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
        unlink_quietly(dst)
        raise ProvisionError(f"{src} shrank while fractfs was moving it; stop writers to it during "
                             f"fractfs.init() and retry.")
    return digest.hexdigest()


def same_content(a: Path, b: Path) -> bool:
    try:
        if os.stat(a).st_size != os.stat(b).st_size:
            return False
        return hash_file(a)[0] == hash_file(b)[0]
    except OSError:
        return False


def copy_metadata(st: os.stat_result, dst: Path) -> None:
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
