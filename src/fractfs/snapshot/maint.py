"""Looking after the store: list snapshots, the newest snapshot's paths, prune, verify, stored sizes."""
from __future__ import annotations

import functools
import hashlib
import logging
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import CorruptCheckpointError, FractfsError, StoreError, StoreNotFound
from ..localfile import hash_file
from ..stores.base import Store
from . import catalog
from . import pack2
from .format import (
    parse_snapshot_id,
    FILE,
    OBJECTS,
    PACKS,
    Entry,
    Manifest,
    ChunkRef,
    SnapName,
    UnknownFormatError,
    blob_id_from_key,
    object_key,
    pack_key,
    parse_snapshot_key,
)

log = logging.getLogger("fractfs")


@dataclass
class SnapshotInfo:
    id: str
    seq: int
    #: Creation time, seconds since the epoch (None when the manifest is unreadable).
    time: float | None
    files: int
    bytes: int
    node: str
    parent: str | None
    valid: bool
    error: str | None = None


def list_snapshots(store: Store) -> list[SnapshotInfo]:
    """Every snapshot on the store, oldest first, each loaded and verified (``valid`` False when damaged)."""
    out = []
    for name in catalog.list_names(store):
        try:
            m = catalog.load(store, name)
        except CorruptCheckpointError as exc:
            out.append(SnapshotInfo(name.id, name.seq, None, 0, 0, "", None, False, str(exc)))
            continue
        out.append(SnapshotInfo(name.id, name.seq, m.created_ns / 1e9, m.file_count, m.byte_count, m.node,
                                m.parent, True))
    return out


def latest_paths(store: Store, *, include_dirs: bool = False) -> set[tuple[str, str]]:
    """``(area, relpath)`` of every file and symlink (and directory, if asked) in the newest valid snapshot."""
    m, _ = catalog.newest_valid(store)
    return m.paths(include_dirs=include_dirs) if m is not None else set()


@dataclass
class PruneResult:
    kept: list[str] = field(default_factory=list)
    deleted_snapshots: list[str] = field(default_factory=list)
    #: Damaged manifests left in place (newer than the oldest kept one; reported, not deleted).
    damaged: list[str] = field(default_factory=list)
    deleted_blobs: list[str] = field(default_factory=list)
    freed_bytes: int = 0
    referenced_blobs: int = 0
    dry_run: bool = False
    #: True when the listing did not show ``newest_known`` yet, so nothing was deleted.
    stale_listing: bool = False


def prune(store: Store, keep: int, dry_run: bool = False, *, newest_known: str | None = None) -> PruneResult:
    """Delete all but the newest ``keep`` valid snapshots, then every pack/object none of the kept ones uses.

    Must not run while a checkpoint is writing to the same store (its new blobs are not referenced until its
    manifest lands). Refuses to delete any blob when a kept-range manifest has a format version this code
    does not know, since its references cannot be read.
    """
    if keep < 1:
        raise FractfsError(f"prune: keep={keep}: keep at least 1 snapshot")
    res = PruneResult(dry_run=dry_run)
    names = catalog.list_names(store)
    if newest_known is not None:
        # An eventually consistent listing can miss the newest manifest; pruning against it would delete
        # blobs that manifest needs. A caller that knows a snapshot id (it committed or restored it) passes
        # it, and prune does nothing until the listing has caught up with it.
        known = parse_snapshot_id(newest_known)
        if known is None:
            raise FractfsError(f"prune: newest_known={newest_known!r} is not a snapshot id")
        if not any(n.seq >= known.seq for n in names):
            log.error("fractfs: prune: the store's listing does not show snapshot %s yet (stale listing?); "
                      "nothing deleted, try again later", newest_known)
            res.stale_listing = True
            return res
    kept: list[Manifest] = []
    drop: list[SnapName] = []
    for name in reversed(names):
        if len(kept) >= keep:
            drop.append(name)
            continue
        try:
            kept.append(catalog.load(store, name))
        except UnknownFormatError as exc:
            raise FractfsError(f"prune refused: {exc}") from None
        except CorruptCheckpointError as exc:
            log.error("fractfs: prune: snapshot %s is damaged and is not counted: %s", name.id, exc)
            res.damaged.append(name.id)
    res.kept = [m.id for m in reversed(kept) if m.id]
    referenced: set[str] = set()
    for m in kept:
        referenced.update(blob_ids(m))
    res.referenced_blobs = len(referenced)
    for name in sorted(drop):
        res.deleted_snapshots.append(name.id)
        if not dry_run:
            store.delete(name.key)
    if kept:
        # damaged manifests older than everything we keep are garbage; newer ones are left for a human
        oldest = min(m.name for m in kept if m.name is not None)
        for sid in list(res.damaged):
            n = parse_snapshot_key(f"snapshots/{sid}.json.gz")
            if n is not None and n < oldest:
                res.damaged.remove(sid)
                res.deleted_snapshots.append(sid)
                if not dry_run:
                    store.delete(n.key)
    elif names:
        log.error("fractfs: prune: no valid snapshot on the store; not deleting any blob")
        return res
    for prefix in (PACKS, OBJECTS):
        for key, size in store.list(prefix):
            bid = blob_id_from_key(key)
            if bid is None or bid in referenced:
                continue
            res.deleted_blobs.append(key)
            res.freed_bytes += size
            if not dry_run:
                store.delete(key)
    res.deleted_blobs.sort()
    log.info("fractfs: prune%s: kept %d snapshots, removed %d snapshots and %d blobs (%d bytes)",
             " (dry run)" if dry_run else "", len(res.kept), len(res.deleted_snapshots),
             len(res.deleted_blobs), res.freed_bytes)
    return res


@dataclass
class VerifyResult:
    snapshots: list[str] = field(default_factory=list)
    #: Snapshots that failed to load (damaged manifest).
    invalid_snapshots: list[str] = field(default_factory=list)
    files_checked: int = 0
    bytes_checked: int = 0
    #: ``"<snapshot id> area:path: reason"`` for every file whose stored bytes are missing or wrong.
    damaged_files: list[str] = field(default_factory=list)
    #: Blob keys that are missing or whose bytes do not hash to their name.
    bad_blobs: list[str] = field(default_factory=list)
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.invalid_snapshots or self.damaged_files or self.bad_blobs)


def verify(store: Store, snapshot_id: str | None = None, *, transfers: int = 8) -> VerifyResult:
    """Read back and hash everything a snapshot references: ``None`` = the newest valid one, ``"all"`` =
    every snapshot, else one id (full, sequence number or unique hash prefix)."""
    t0 = time.monotonic()
    res = VerifyResult()
    names = catalog.list_names(store)
    manifests: list[Manifest] = []
    if snapshot_id == "all":
        for name in names:
            try:
                manifests.append(catalog.load(store, name))
            except CorruptCheckpointError as exc:
                res.invalid_snapshots.append(f"{name.id}: {exc}")
    elif snapshot_id:
        name = catalog.resolve_id(names, snapshot_id)
        try:
            manifests.append(catalog.load(store, name))
        except CorruptCheckpointError as exc:
            res.invalid_snapshots.append(f"{name.id}: {exc}")
    else:
        m, damaged = catalog.newest_valid(store, names)
        res.invalid_snapshots.extend(damaged)
        if m is not None:
            manifests.append(m)
    res.snapshots = [m.id for m in manifests if m.id]

    # pack id -> [(snapshot id, entry, slice)]; object id -> [(snapshot id, entry)]
    slices: dict[str, list[tuple[str, Entry, ChunkRef]]] = {}
    objects: dict[str, list[tuple[str, Entry]]] = {}
    for m in manifests:
        sid = m.id or ""
        for e in m.entries:
            if e.type != FILE:
                continue
            # an empty file has nothing stored (its sha256 is checked by the format)
            res.files_checked += 1
            res.bytes_checked += e.size
            if e.object:
                objects.setdefault(e.object, []).append((sid, e))
            for c in e.refs():
                slices.setdefault(c.pack, []).append((sid, e, c))
        for msg in m.bad:
            res.damaged_files.append(f"{m.id} {msg}")

    Damage = list[tuple[str, str, str]]  # (snapshot id, file label, message)

    def check_object(oid: str, users: list[tuple[str, Entry]]) -> tuple[Damage, list[str]]:
        key = object_key(oid)
        try:
            with tempfile.TemporaryDirectory(prefix="fractfs-verify-") as td:
                tmp = Path(td) / "obj"
                store.get_file(key, tmp)
                digest, size = hash_file(tmp)
        except StoreNotFound:
            return [(sid, e.label, f"{key} is missing") for sid, e in users], [key]
        except StoreError as exc:
            return [(sid, e.label, f"cannot read {key}: {exc}") for sid, e in users], [key]
        bad_files = [(sid, e.label, f"object {key} does not match its sha256") for sid, e in users
                     if digest != oid or size != e.size]
        return bad_files, [key] if digest != oid else []

    def check_pack(pid: str, users: list[tuple[str, Entry, ChunkRef]]) -> tuple[Damage, list[str]]:
        key = pack_key(pid)
        try:
            data = memoryview(store.get(key))
        except StoreNotFound:
            return [(sid, e.label, f"{key} is missing") for sid, e, _c in users], [key]
        except StoreError as exc:
            return [(sid, e.label, f"cannot read {key}: {exc}") for sid, e, _c in users], [key]
        damage, intact = pack_damage(pid, data)
        bad_blobs = []
        if damage is not None:
            log.error("fractfs: verify: %s: %s", key, damage)
            bad_blobs.append(key)
        bad_files: Damage = []
        known: dict[tuple[int, int, str], bool] = {}
        for sid, e, c in users:
            where = (c.offset, c.length, c.sha256)
            ok = known.get(where)
            if ok is None:
                if where in intact:
                    ok = True  # a member of a v2 pack, already hashed against the index
                else:
                    piece = data[c.offset:c.offset + c.length]
                    ok = len(piece) == c.length and hashlib.sha256(piece).hexdigest() == c.sha256
                known[where] = ok
            if not ok:
                what = f"chunk at bytes {c.offset}..{c.offset + c.length} of {key}" if e.chunks else f"bytes in {key}"
                bad_files.append((sid, e.label, f"{what} do not match its sha256"))
        return bad_files, bad_blobs

    jobs: list[Callable[[], tuple[Damage, list[str]]]] = [
        functools.partial(check_pack, pid, users) for pid, users in sorted(slices.items())]
    jobs += [functools.partial(check_object, oid, users) for oid, users in sorted(objects.items())]
    with ThreadPoolExecutor(max_workers=max(1, transfers), thread_name_prefix="fractfs-verify") as pool:
        results = list(pool.map(lambda job: job(), jobs))
    bad_files: dict[tuple[str, str], str] = {}  # one line per damaged file, whose chunks may lie in many packs
    for damage, bad_blobs in results:
        for sid, label, msg in damage:
            bad_files.setdefault((sid, label), f"{sid} {label}: {msg}")
        res.bad_blobs.extend(bad_blobs)
    res.damaged_files.extend(bad_files.values())
    res.damaged_files.sort()
    res.bad_blobs = sorted(set(res.bad_blobs))
    for msg in res.damaged_files:
        log.error("fractfs: verify: %s", msg)
    res.duration = time.monotonic() - t0
    return res


def pack_damage(pid: str, data: bytes | memoryview) -> tuple[str | None, set[tuple[int, int, str]]]:
    """Whether pack ``pid`` holds what its id says, of either format (docs/format.md): a v2 pack ends with a
    trailer and an index whose SHA-256 is the id, and every member must hash to its index record; a v1
    pack's bytes hash to the id. Returns (what is wrong or None, the (offset, length, sha256) of every
    intact v2 member, so callers need not hash those slices again)."""
    view = memoryview(data)
    size = len(view)
    members = None
    if size >= pack2.TRAILER.size:
        try:
            index_len = pack2.read_trailer(bytes(view[size - pack2.TRAILER.size:]), size)
            index = bytes(view[size - pack2.TRAILER.size - index_len:size - pack2.TRAILER.size])
            members = pack2.parse_index(index, size, pid)
        except pack2.PackError:
            members = None  # not a v2 pack (or its index is damaged): it must then be an intact v1 pack
    if members is None:
        if hashlib.sha256(view).hexdigest() == pid:
            return None, set()
        return ("damaged: its bytes do not hash to its name (v1) and it has no index that does (v2)"), set()
    intact: set[tuple[int, int, str]] = set()
    bad = 0
    for mem in members:
        if hashlib.sha256(view[mem.offset:mem.offset + mem.length]).digest() == mem.sha256:
            intact.add((mem.offset, mem.length, mem.sha256.hex()))
        else:
            bad += 1
    if bad:
        return f"damaged: {bad} of its {len(members)} members do not match the pack's index", intact
    return None, intact


def blob_total(store: Store, snapshot_ids: list[str] | None) -> int:
    """Bytes of the packs/objects the given snapshots reference (``None`` = every blob on the store).

    A progress total for a long read (``fractfs verify``): a damaged or unknown snapshot adds nothing.
    """
    sizes: dict[str, int] = {}
    for prefix in (PACKS, OBJECTS):
        for key, size in store.list(prefix):
            bid = blob_id_from_key(key)
            if bid is not None:
                sizes[bid] = size
    if snapshot_ids is None:
        return sum(sizes.values())
    wanted: set[str] = set()
    for sid in snapshot_ids:
        name = parse_snapshot_id(sid)
        if name is None:
            continue
        try:
            m = catalog.load(store, name)
        except CorruptCheckpointError:
            continue
        wanted.update(blob_ids(m))
    return sum(sizes.get(b, 0) for b in wanted)


def blob_ids(m: Manifest) -> set[str]:
    """Ids of the packs and objects a snapshot's valid entries use, of either format version: v1 objects,
    the pack of each one-slice file, and the packs of every chunk of a chunked (v2) file."""
    out: set[str] = set()
    for e in m.entries:
        if e.type != FILE:
            continue
        if e.object:
            out.add(e.object)
        elif e.chunks:
            out.update(c.pack for c in e.chunks)
        elif e.pack:
            out.add(e.pack)
    return out
