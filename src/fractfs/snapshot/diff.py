"""What changed: the walk compared with the stat cache and with the snapshot a checkpoint extends.

Every walked entry ends up in one of three places: *kept* (its stat facts match the stat cache, so its stored
copy is reused without reading it), *dirty* (to be read and stored by the engine), or, for entries that could
not be looked at (unreadable subtree, busy, out of time), *carried* from the base snapshot unchanged: an entry
fractfs could not read must never look deleted.
"""
from __future__ import annotations

import logging
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import scan, unrestored
from .format import DIR, FILE, SQLITE_MAGIC, SQLITE_SIDECARS, SYMLINK, Entry, SnapName
from .scan import S_IFDIR, S_IFLNK, S_IFREG, Rec, WalkResult, Want
from . import statcache
from .statcache import CacheHeader, CacheRow, Facts, Rows

log = logging.getLogger("fractfs")

#: (area, relpath)
Key = tuple[str, str]


@dataclass
class Base:
    """The snapshot a checkpoint compares with and extends (None id: there is none yet)."""

    id: str | None
    name: SnapName | None
    entries: dict[Key, Entry]
    #: The stat cache describes exactly this snapshot, so its rows can be trusted as they are.
    synced: bool
    #: Content we may point at without uploading: only what this snapshot references, by sha256.
    dedup: dict[str, Entry] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for e in self.entries.values():
            if e.type == FILE and e.stored and e.sha256 not in self.dedup:
                self.dedup[e.sha256] = e


@dataclass
class Changes:
    """The next snapshot as it is being built: entries decided so far and the files still to read."""

    base: Base
    new: dict[Key, Entry] = field(default_factory=dict)
    rows: dict[Key, CacheRow] = field(default_factory=dict)
    #: kept from the base without looking: busy, unreadable, out of time
    carried: set[Key] = field(default_factory=set)
    #: changed-looking regular files, to be read: (area, relpath, walk record)
    dirty: list[tuple[str, str, Rec]] = field(default_factory=list)
    #: False once anything was not looked at properly: the walk digest must then not be saved
    digest_ok: bool = True

    def put(self, key: Key, e: Entry, facts: Facts | None, side: tuple[Any, ...] | None = None) -> None:
        self.new[key] = e
        self.rows[key] = CacheRow.of(e, facts, side)

    def carry(self, key: Key) -> None:
        """Keep the base's entry for ``key`` (if it has one) and re-examine it next time."""
        e = self.base.entries.get(key)
        if e is not None:
            self.put(key, e, None)
            self.carried.add(key)


def compare(areas: dict[str, Path], walked: WalkResult, rows: Rows, base: Base, content_hash: bool) -> Changes:
    """Sort every walked entry into kept, dirty or carried (see the module docstring)."""
    ch = Changes(base)
    for area in sorted(areas):
        top = os.fspath(areas[area])
        arows = rows.get(area, {})
        recs = walked.records.get(area, [])
        dbs = _sqlite_dbs(top, recs, arows)
        for rec in recs:
            fmt = rec[1] & 0o170000
            if fmt == S_IFDIR:
                ch.put((area, rec[0]), Entry(area, rec[0], DIR, mode=rec[1] & 0o7777), rec[1:])
            elif fmt == S_IFLNK:
                _symlink(ch, area, top, rec, arows.get(rec[0]))
            elif not _sidecar_of(rec[0], dbs):
                _file(ch, area, top, rec, arows.get(rec[0]), content_hash)
        for prefix in walked.trouble.get(area, []):
            ch.digest_ok = False
            subtree = prefix == "" or prefix.endswith("/")
            for (a, r) in list(base.entries):
                if a == area and (a, r) not in ch.new and (r == prefix or (subtree and r.startswith(prefix))):
                    ch.carry((a, r))
    return ch


def confirm_restored(state_dir: Path, hdr: CacheHeader, payload_at: int, areas: dict[str, Path],
                     walked: WalkResult) -> bool:
    """After a restore: is the tree exactly what the stat cache says (seeded by the restore, see
    statcache.seed)? Then the cache gets the walk digest and True is returned: the checkpoint is a no-op.

    Only for a cache that describes the store's newest snapshot and has no digest yet (the caller checks). It
    answers what :func:`compare` would, without building an Entry per path: every walked file and symlink has
    a row with exactly its stat facts, every directory a row with its mode, and every row was walked. Anything
    else (a file written since, an entry the restore could not write, a SQLite database, whose sidecars the
    restore does not know) answers False and the checkpoint takes the full path.
    """
    if any(walked.trouble.get(a) for a in areas):
        return False
    if hdr.expect is not None:
        # the restore wrote every entry and knows each one's facts: one digest compares them all
        if scan.records_digest(walked.records) != hdr.expect:
            return False
        hdr.digest = scan.walk_digest(areas, walked, [])
        hdr.expect = None
        try:
            statcache.write_header(state_dir, hdr, payload_at)
        except OSError as exc:
            log.warning("fractfs: could not update the stat cache in %s (%s); the next checkpoint looks again",
                        state_dir, exc)
        return True
    raw = statcache.read_raw(state_dir, hdr, payload_at)
    if raw is None or set(raw) - set(walked.records):
        return False
    seen = 0
    changed = False
    for area, recs in walked.records.items():
        arows = raw.get(area)
        if arows is None:
            if recs:
                return False
            continue
        for rec in recs:
            rel = rec[0]
            row = arows.get(rel)
            if row is None:
                return False
            facts = rec[1:]
            fmt = rec[1] & 0o170000
            if fmt == S_IFDIR:
                if row[0] != DIR or row[1] != rec[1] & 0o7777:
                    return False
                if row[11] != facts:
                    arows[rel] = (*row[:11], facts, None)  # what compare() records for a directory
                    changed = True
            elif row[11] != facts or row[9]:
                return False
            elif fmt == S_IFLNK and (row[0] != SYMLINK or row[3] != rec[3]):
                return False
            elif fmt == S_IFREG and row[0] != FILE:
                return False
            seen += 1
    if seen != sum(len(a) for a in raw.values()):
        return False
    hdr.digest = scan.walk_digest(areas, walked, [])
    try:
        if changed:
            statcache.write_raw(state_dir, hdr, raw)
        else:  # the restore knew every directory's facts: same payload, new header
            statcache.write_header(state_dir, hdr, payload_at)
    except OSError as exc:
        log.warning("fractfs: could not update the stat cache in %s (%s); the next checkpoint looks again",
                    state_dir, exc)
        hdr.digest = None
    return True


def _sqlite_dbs(top: str, recs: list[Rec], arows: dict[str, CacheRow]) -> set[str]:
    """Which files are SQLite databases whose sidecars (-wal, -journal, -shm) must not be recorded."""
    files = {r[0]: r for r in recs if r[1] & 0o170000 == S_IFREG}
    out: set[str] = set()
    for rel in files:
        for suffix in SQLITE_SIDECARS:
            if rel.endswith(suffix):
                db = rel[: -len(suffix)]
                if db in files and db not in out and is_sqlite(top, db, files[db], arows.get(db)):
                    out.add(db)
    return out


def _sidecar_of(rel: str, dbs: set[str]) -> bool:
    if not rel.endswith(SQLITE_SIDECARS):
        return False
    sfx = next(s for s in SQLITE_SIDECARS if rel.endswith(s))
    return rel[: -len(sfx)] in dbs


def _symlink(ch: Changes, area: str, top: str, rec: Rec, row: CacheRow | None) -> None:
    key = (area, rec[0])
    if row is not None and row.type == SYMLINK and row.facts == rec[1:]:
        target = row.target
    else:
        try:
            target = os.readlink(os.path.join(top, rec[0]))
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("fractfs: cannot read symlink %s (%s); keeping its previous state",
                        os.path.join(top, rec[0]), exc)
            ch.carry(key)
            ch.digest_ok = False
            return
    ch.put(key, Entry(area, rec[0], SYMLINK, mtime_ns=rec[3], target=target), rec[1:])


def _file(ch: Changes, area: str, top: str, rec: Rec, row: CacheRow | None, content_hash: bool) -> None:
    """A regular file: kept when the stat cache vouches for it (and, unless synced, its content is in the
    base snapshot), dirty otherwise."""
    rel = rec[0]
    key = (area, rel)
    if not content_hash and row is not None and row.type == FILE and row.facts == rec[1:]:
        side = scan.sidecar_facts(os.path.join(top, rel)) if row.sqlite else None
        if not row.sqlite or tuple(row.side or ()) == side:
            base = ch.base
            if base.synced:
                ch.new[key] = base.entries[key]
                ch.rows[key] = row
                return
            e = row.entry(area, rel)
            where = base.dedup.get(e.sha256)
            if where is not None and where.size != e.size:
                where = None  # a one-chunk file's id met a chunked file's (its bytes are that file's digests)
            if where is not None or not e.size:
                ch.put(key, relocate(e, where), rec[1:], side)
                return
    ch.dirty.append((area, rel, rec))


def is_sqlite(top: str, rel: str, rec: Rec, row: CacheRow | None) -> bool:
    """Whether the file is a SQLite database (the cache remembers it while the file's stat is unchanged)."""
    if row is not None and row.type == FILE and row.facts == rec[1:]:
        return bool(row.sqlite)
    try:
        with open(os.path.join(top, rel), "rb") as f:
            return f.read(16) == SQLITE_MAGIC
    except OSError:
        return False


def relocate(e: Entry, loc: Entry | None, obj: str = "") -> Entry:
    """``e`` pointing at the stored copy described by ``loc`` (or at object ``obj``; or nowhere if empty)."""
    pack = loc.pack if loc is not None else ""
    offset = loc.offset if loc is not None else 0
    o = (loc.object if loc is not None else obj) if not pack else ""
    return Entry(e.area, e.path, e.type, mode=e.mode, size=e.size, mtime_ns=e.mtime_ns, sha256=e.sha256,
                 pack=pack, offset=offset, object=o, target=e.target, sqlite=e.sqlite,
                 chunks=loc.chunks if loc is not None else ())


def carry_unrestored(ch: Changes, state_dir: Path, areas: dict[str, Path], want: Want,
                     ) -> tuple[list[Entry], int]:
    """Keep the entries a restore could not write (see unrestored.py): they are absent because the app never
    had them, not because it deleted them. Returns the entries kept and how many were waiting."""
    waiting = unrestored.load(state_dir)
    kept: list[Entry] = []
    for key, fp in sorted(waiting.items()):
        was = ch.base.entries.get(key)
        if key in ch.new or was is None or unrestored.fingerprint(was) != fp:
            continue  # the app wrote something there, or the snapshot we extend no longer has it
        parent = posixpath.dirname(key[1])
        holder = ch.new.get((key[0], parent))
        if parent and (holder is None or holder.type != DIR):
            continue  # the app removed (or replaced) the directory it was in
        if key[0] in areas and want(key[0], key[1], False):
            ch.carry(key)
            kept.append(was)
    return kept, len(waiting)


def stored_paths(ch: Changes) -> list[str]:
    """What the checkpoint reports as stored: every file that is new or holds other content than in the base,
    whether its bytes went up now or were already there (same content is stored once). Only changed-looking
    files can differ, unless the base is not the snapshot the stat cache describes."""
    order = [(a, r) for a, r, _rec in ch.dirty]
    if not ch.base.synced:
        seen = set(order)
        order += sorted(k for k in ch.new if k not in seen)
    base = ch.base.entries
    return [f"{a}:{r}" for a, r in order if new_content(base.get((a, r)), ch.new.get((a, r)))]


def new_content(was: Entry | None, now: Entry | None) -> bool:
    """``now`` is a file that ``was`` did not hold: new, or other bytes (a metadata-only change is not)."""
    return (now is not None and now.type == FILE
            and (was is None or was.type != FILE or was.sha256 != now.sha256))
