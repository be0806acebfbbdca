"""The checkpoint pipeline: walk the areas, find what changed, upload new content, then commit a manifest.

Two steps, so that committing is one call that can be refused:

- :func:`prepare` walks, compares (:mod:`.diff`), reads and chunks (:mod:`.capture`) and uploads
  (:mod:`.packer`) what changed, and builds the manifest bytes and name. It writes packs, never ``snapshots/``.
- :func:`commit` calls ``fence()`` (which raises LeaseLost / CheckpointAborted when this node may not commit),
  writes the manifest, trims old manifests, then saves the stat cache.

Both run under the state dir's :class:`~.statcache.StateLock`, held by the caller (:func:`checkpoint` does
it all in one call; the app goes through :mod:`fractfs.checkpointer`).

Checkpoints write format version 2 (docs/format.md): every file's content as chunks in packs. The
first checkpoint over a version 1 store migrates it (:func:`_rechunk_legacy`); when a file only version 1 can
describe cannot be read again in that checkpoint, it is written as version 1 once more (:func:`_fall_back_to_v1`),
so nothing is lost and the next checkpoint tries again.

Order of writes: packs first, the manifest last, the local stat cache after that. A crash anywhere
leaves the previous manifest as the checkpoint and at worst some unreferenced blobs (removed by prune). Which
blobs exist is only ever learned from a verified manifest (or from the stat cache written after committing
one), never from listing the store: a blob torn by a crash is simply written again.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Union

from ..errors import AlreadyExists, FractfsError, StoreError
from ..localfile import private_dir, unlink_if_present, write_replace
from ..stores.base import Store
from ..stores.wrappers import abortable
from . import capture, catalog, diff, manifests, scan, statcache, unrestored
from .capture import CaptureContext, Captured, Readers
from .diff import Base, Changes, Key
from .format import (
    FILE,
    MAX_PACKED_FILE,
    MAX_SEQ,
    Entry,
    Manifest,
    SnapName,
    encode_manifest,
    parse_snapshot_id,
    valid_area,
)
from .manifest2 import MAX_CHUNK
from .options import LARGE_FILE, PACK_SIZE, Options
from .packer import MISSED, REJECTED, Known, Packer
from .scan import S_IFDIR, S_IFLNK, S_IFREG, WalkResult, Want
from .statcache import CacheHeader, Rows, StateLock
from .xfer import check_stored

log = logging.getLogger("fractfs")

_DEFAULT_OPTIONS = Options()

PathLike = Union[str, "os.PathLike[str]"]
#: Called right before the manifest is written; raises (LeaseLost, CheckpointAborted) to refuse the commit.
Fence = Callable[[], None]

#: Kept for `fractfs prune` (cli.py) until it imports statcache.StateLock itself.


@dataclass
class CheckpointResult:
    """What one checkpoint did. Paths are ``"area:relpath"``.

    ``files``/``bytes`` describe the checkpointed state (the new snapshot, or the unchanged current one when
    nothing changed and ``snapshot_id`` is None); ``uploaded_bytes`` is what was actually sent to the store.
    """

    snapshot_id: str | None = None
    #: Files that are new in the snapshot or hold other content than in the one before it, whether their bytes
    #: were uploaded now or were already stored (identical content is stored once). Deletions are in
    #: ``deleted``; a change of mtime or mode alone, directories and symlinks are not listed.
    stored: list[str] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    deleted: list[str] = field(default_factory=list)
    skipped_busy: list[str] = field(default_factory=list)
    duration: float = 0.0
    #: Changed files left out because ``deadline`` came before they were read and uploaded (their previous
    #: version, if any, is kept).
    missed_deadline: list[str] = field(default_factory=list)
    #: Changed files the store refused to take (one object too large, the store full): path -> the store's
    #: reason. Their previous version, if any, is kept; the rest of the checkpoint is committed.
    rejected: dict[str, str] = field(default_factory=dict)
    #: Files that kept changing and were stored from two reads that agreed (identical bytes, or the stable
    #: prefix of a file that only grew) rather than from a settled read; read again next time.
    unsettled: list[str] = field(default_factory=list)
    uploaded_bytes: int = 0
    parent: str | None = None
    #: Entries a restore could not write, kept from the previous snapshot (see :mod:`.unrestored`).
    kept_unrestored: list[str] = field(default_factory=list)


@dataclass
class Prepared:
    """A checkpoint whose content is on the store but whose manifest is not (yet): :func:`commit` it, or drop
    it (its blobs are then unreferenced, removed by prune)."""

    result: CheckpointResult
    state_dir: Path
    keep: int
    t0: float
    #: the store's manifests when the checkpoint looked (what trimming may remove)
    names: list[SnapName] = field(default_factory=list)
    #: the manifest to write, None when nothing changed
    name: SnapName | None = None
    data: bytes = b""
    #: what the stat cache says once committed; None: leave it as it is (a no-op checkpoint)
    cache: CacheHeader | None = None
    rows: Rows = field(default_factory=dict)
    kept: list[Entry] = field(default_factory=list)
    waiting_unrestored: int = 0
    deadline: float | None = None

    @property
    def carried(self) -> int:
        """Changed files this checkpoint could not capture this round and kept the base's version of instead.

        Files the store refused are not counted: they are carried too, but waiting does not help them, and a
        caller that holds back a commit while anything is carried (the checkpointer, after taking over from
        another node) would otherwise never commit again while such a file exists."""
        return len(self.result.skipped_busy) + len(self.result.missed_deadline)


def left_out(result: CheckpointResult) -> int:
    """How many changed files a checkpoint left out (busy, out of time, refused by the store)."""
    return len(result.skipped_busy) + len(result.missed_deadline) + len(result.rejected)


def no_fence() -> None:
    """The fence of a caller that commits unconditionally (tests, `fractfs sync --force`)."""


def checkpoint(
    store: Store,
    areas: dict[str, Path],
    want: Want | None,
    *,
    state_dir: PathLike,
    content_hash: bool = False,
    node_id: str = "",
    transfers: int = 16,
    keep: int = 10,
    pack_size: int = PACK_SIZE,
    deadline: float | None = None,
    large_file: int = LARGE_FILE,
    fence: Fence = no_fence,
) -> CheckpointResult:
    """Take a snapshot of ``areas`` (name → directory) into ``store`` if anything changed.

    ``want(area, relpath, is_dir)`` selects entries (False on a directory skips its subtree; None = all).
    ``state_dir`` is node-local and holds the stat cache. ``deadline`` is a ``time.monotonic()`` value: when it
    is set, changed files are stored small ones first, then large ones, each most recently modified first,
    until a cutoff that leaves time for the manifest; what was not read and uploaded by then is left out
    (listed in ``missed_deadline``, their previous version kept) and the rest is committed. After a new snapshot only the newest ``keep``
    manifests are kept; unreferenced blobs are removed by :func:`prune`. ``fence`` is called right before
    the manifest is written and may raise to refuse the commit.
    """
    opts = Options(content_hash=content_hash, node_id=node_id, transfers=transfers, keep=keep,
                   pack_size=pack_size, deadline=deadline, large_file=large_file)
    if keep < 1:  # refused before anything on disk changes (prepare() checks again for its own callers)
        raise FractfsError(f"keep={keep}: keep at least 1 snapshot")
    _norm_areas(areas)
    sdir = state_path(state_dir)
    with StateLock(sdir):
        return commit(store, prepare(store, areas, want, sdir, opts), fence)


def state_path(state_dir: PathLike) -> Path:
    """The absolute state dir, created 0700 if missing (the StateLock lives in it; docs/security.md)."""
    sdir = Path(os.path.abspath(os.fspath(state_dir)))
    private_dir(sdir)
    return sdir


@dataclass
class _Look:
    """What a checkpoint sees before deciding anything: the stat cache header, the store, the tree."""

    hdr: CacheHeader | None
    payload_at: int
    sized: dict[SnapName, int]
    names: list[SnapName]
    walked: WalkResult

    @property
    def newest(self) -> SnapName | None:
        return self.names[-1] if self.names else None

    @property
    def synced(self) -> bool:
        """The store's newest manifest is the one the stat cache was written after committing, and still has
        the size we wrote (a truncated or emptied manifest is caught here for the price of the listing; other
        damage to a committed manifest is what verify() is for)."""
        hdr, newest = self.hdr, self.newest
        return (hdr is not None and hdr.snapshot == (newest.id if newest else None)
                and (newest is None or self.sized[newest] == hdr.snapshot_size))


def prepare(store: Store, areas: dict[str, Path], want: Want | None, state_dir: Path,
            opts: Options = _DEFAULT_OPTIONS) -> Prepared:
    """Everything of a checkpoint but the commit (see the module docstring). The caller holds
    ``StateLock(state_dir)`` until it has called :func:`commit` or dropped the result."""
    t0 = time.monotonic()
    if opts.keep < 1:
        raise FractfsError(f"keep={opts.keep}: keep at least 1 snapshot")
    areas = _norm_areas(areas)
    pick: Want = want if want is not None else (lambda _a, _r, _d: True)
    look = _look(store, areas, pick, state_dir)
    hdr = look.hdr
    if (look.synced and not opts.content_hash and hdr is not None and hdr.digest is not None
            and scan.walk_digest(areas, look.walked, scan.fresh_side(areas, hdr.sqlite)) == hdr.digest):
        log.debug("fractfs: checkpoint: nothing changed (%.3fs)", time.monotonic() - t0)
        res = CheckpointResult(files=hdr.files, bytes=hdr.bytes, duration=time.monotonic() - t0,
                               parent=hdr.snapshot)
        return Prepared(result=res, state_dir=state_dir, keep=opts.keep, t0=t0)
    if (look.synced and not opts.content_hash and hdr is not None and hdr.digest is None and not hdr.sqlite
            and diff.confirm_restored(state_dir, hdr, look.payload_at, areas, look.walked)):
        # the first checkpoint after a restore, nothing changed since: as cheap as a no-op (issue 13)
        log.debug("fractfs: checkpoint: nothing changed since the restore (%.3fs)", time.monotonic() - t0)
        res = CheckpointResult(files=hdr.files, bytes=hdr.bytes, duration=time.monotonic() - t0,
                               parent=hdr.snapshot)
        return Prepared(result=res, state_dir=state_dir, keep=opts.keep, t0=t0)

    base, rows = _choose_base(store, look, state_dir)
    # choosing the base may have found more manifests damaged: those neither give out sequence numbers nor
    # take a place among the `keep` newest (a planted 7-byte snapshots/999999999999-… would do both)
    usable = catalog.without_damaged(store, look.names, look.sized)
    ch = diff.compare(areas, look.walked, rows, base, opts.content_hash)
    rechunked = _rechunk_legacy(ch, look.walked)
    result = CheckpointResult(parent=base.id)
    result.uploaded_bytes = _store_dirty(store, areas, ch, opts, state_dir / "tmp", result)
    kept, waiting = diff.carry_unrestored(ch, state_dir, areas, pick)
    result.kept_unrestored = [e.label for e in kept]
    legacy = _fall_back_to_v1(ch, result, rechunked)
    # a file chunked anew only because its stored form was v1's holds the content the cache vouched for
    result.stored = [p for p in diff.stored_paths(ch) if p not in rechunked]
    result.deleted = sorted(f"{a}:{r}" for (a, r) in base.entries if (a, r) not in ch.new)
    result.files = sum(1 for e in ch.new.values() if e.type == FILE)
    result.bytes = sum(e.size for e in ch.new.values() if e.type == FILE)

    prep = Prepared(result=result, state_dir=state_dir, keep=opts.keep, t0=t0, names=usable, kept=kept,
                    waiting_unrestored=waiting, deadline=opts.deadline)
    snapshot_id = base.id
    snapshot_size = look.sized.get(base.name) if base.name is not None else None
    if ch.new != base.entries:
        prep.name, prep.data = _manifest(ch, look.hdr, usable, opts.node_id, v1=legacy,
                                         attempted=_attempted(state_dir))
        snapshot_id, snapshot_size = prep.name.id, len(prep.data)
    prep.cache, prep.rows = _cache_out(areas, look.walked, ch, result, snapshot_id, snapshot_size)
    return prep


def _look(store: Store, areas: dict[str, Path], want: Want, sdir: Path) -> _Look:
    tmpdir = sdir / "tmp"
    private_dir(tmpdir)  # SQLite copies land here: the app's data
    for leftover in tmpdir.iterdir():  # copies from a checkpoint that crashed
        unlink_if_present(leftover)
    hdr, payload_at = statcache.read_header(sdir)
    sized = catalog.list_sized(store)
    walked = scan.walk(areas, want, _exclusions(areas, [sdir]))
    _remove_stale_temps(walked.temps)
    # a name this process already found damaged (a planted snapshots/999999999999-…) must not unsync us
    names = catalog.without_damaged(store, sorted(sized), sized)
    return _Look(hdr=hdr, payload_at=payload_at, sized=sized, names=names, walked=walked)


def _choose_base(store: Store, look: _Look, sdir: Path) -> tuple[Base, Rows]:
    """The snapshot to compare with: the stat cache's when it describes the store's newest, else the newest
    valid one on the store."""
    synced = look.synced
    rows: Rows = {}
    if look.hdr is not None:
        loaded = statcache.read_rows(sdir, look.hdr, look.payload_at)
        if loaded is None:
            synced = False  # unreadable: compare with the store's newest snapshot instead
        else:
            rows = loaded
    if synced:
        assert look.hdr is not None
        entries = {(a, r): row.entry(a, r) for a, ar in rows.items() for r, row in ar.items()}
        return Base(id=look.hdr.snapshot, name=look.newest, entries=entries, synced=True), rows
    m, _damaged = catalog.newest_valid(store, look.names)
    if m is not None:
        log.info("fractfs: checkpoint: local state is not the store's newest snapshot; comparing with %s",
                 m.name.short if m.name else m.id)
    entries = {(e.area, e.path): e for e in m.entries} if m is not None else {}
    return Base(id=m.id if m else None, name=m.name if m else None, entries=entries, synced=False), rows


def _order(dirty: list[tuple[str, str, tuple[str, int, int, int, int, int]]], opts: Options) -> None:
    """The order files are read in: small files first, then large ones (chunked into packs of their own, see
    :func:`_own_packs`), so the small files' packs are on their way before a large file fills the store: on
    a Volume with less room than the large file needs, they land before its packs are refused for space.
    Without a deadline each group by path (deterministic packing). With one, each group most recently
    modified first (the likeliest to matter on restart, and the ones no earlier checkpoint has)."""
    if opts.deadline is None:
        dirty.sort(key=lambda d: (d[2][2] >= opts.large_file, d[0], d[1]))
    else:
        dirty.sort(key=lambda d: (d[2][2] >= opts.large_file, -d[2][3], d[0], d[1]))


def manifest_reserve(entries: int) -> float:
    """Seconds kept back before a deadline for building and writing the manifest and saving the stat cache:
    a fixed part for the store's round trips, plus the encoding, which grows with the entries."""
    return 0.5 + 4e-6 * entries


def _store_dirty(store: Store, areas: dict[str, Path], ch: Changes, opts: Options, tmpdir: Path,
                 result: CheckpointResult) -> int:
    """Read every dirty file and put its content on the store; returns the bytes uploaded.

    A file that is busy on its first read is retried at the end of the pass (:func:`capture.capture_stable`);
    one that is still busy, unreadable, out of time or refused by the store keeps the base's entry.

    Under a deadline there is no estimate of how long anything takes: files are read and uploaded in
    :func:`_order` until a cutoff (the deadline minus :func:`manifest_reserve`); uploads still running then are
    abandoned (their store is aborted) and what finished is committed.
    """
    dirty = ch.dirty
    _order(dirty, opts)
    cutoff = None if opts.deadline is None else opts.deadline - manifest_reserve(len(ch.new) + len(dirty))
    # what is read into memory whole stays bounded however large_file is set
    ctx = CaptureContext(tmpdir, min(opts.large_file, MAX_PACKED_FILE), cutoff, opts.content_hash,
                         cancelled=lambda: getattr(store, "aborted", False) is True)
    # Uploads go through their own abortable view of the store: at the cutoff it is aborted, so uploads that
    # have not finished stop at their next request, while the manifest still goes through ``store``.
    up_store = abortable(store)
    known = Known(ch.base.entries.values(), ch.base.dedup) if dirty else None
    packer = Packer(up_store, max(1, opts.transfers), opts.pack_size, known, until=cutoff)
    placed: dict[Key, Captured] = {}
    later: list[tuple[str, str, tuple[str, int, int, int, int, int]]] = []
    # With a deadline, files are read one at a time, so the cutoff is checked right before each.
    readers = None if cutoff is not None or len(dirty) < 2 else Readers(
        [(os.path.join(os.fspath(areas[a]), r), rec[2]) for a, r, rec in dirty], ctx, capture.READERS)
    try:
        for i, (area, rel, rec) in enumerate(dirty):
            key = (area, rel)
            path = os.path.join(os.fspath(areas[area]), rel)
            if ctx.stop():
                _missed(ch, key, result)
                continue
            try:
                got = capture.capture(path, ctx) if readers is None else readers.get(i)
                if got == capture.LARGE:
                    with _own_packs(packer):
                        got = capture.capture_streamed(path, ctx, packer.put_copy)
            except OSError as exc:
                log.warning("fractfs: cannot read %s (%s); keeping its previous state", path, exc)
                _busy(ch, key, result)
                continue
            if got == capture.BUSY:
                later.append((area, rel, rec))  # spread the attempts: it gets another chance at the end
                continue
            _take(ch, key, rec, got, path, result, packer, placed, ctx)
        for area, rel, rec in later:
            key = (area, rel)
            path = os.path.join(os.fspath(areas[area]), rel)
            if ctx.stop():
                _missed(ch, key, result)
                continue
            try:
                got = capture.capture_stable(path, ctx)
            except OSError as exc:
                log.warning("fractfs: cannot read %s (%s); keeping its previous state", path, exc)
                _busy(ch, key, result)
                continue
            _take(ch, key, rec, got, path, result, packer, placed, ctx)
        packer.finish()
        _settle(ch, placed, result)
        # in the order they were taken up (newest first under a deadline), not the order they were given up
        rank = {f"{a}:{r}": i for i, (a, r, _rec) in enumerate(dirty)}
        result.missed_deadline.sort(key=lambda label: rank.get(label, len(rank)))
    finally:
        if readers is not None:
            readers.close()
        if cutoff is not None:
            up_store.abort()  # whatever is still uploading is not waited for (see the docstring)
        packer.close(wait=cutoff is None)
        for leftover in tmpdir.iterdir():
            unlink_if_present(leftover)
    return packer.uploaded


@contextlib.contextmanager
def _own_packs(packer: Packer) -> Iterator[None]:
    """A large file's new chunks go into packs of their own: the small files placed before it are sealed and
    sent first (under a deadline they do not wait behind it), and a pack of it that the store refuses (a file
    larger than the Volume's free space) leaves out only that file, not the small ones that would have
    shared its first or last pack, as in v1, where a large file was an object of its own."""
    packer.seal()
    try:
        yield
    finally:
        packer.seal()


def _take(ch: Changes, key: Key, rec: tuple[str, int, int, int, int, int], got: Captured | str, path: str,
          result: CheckpointResult, packer: Packer, placed: dict[Key, Captured], ctx: CaptureContext) -> None:
    """Record what reading one file gave: place its content, or keep its previous entry and say why."""
    if isinstance(got, Captured) and got.upload_path is not None:
        try:
            with _own_packs(packer):
                got = capture.chunk_copy(got, ctx, packer.put_copy)
        except OSError as exc:
            log.warning("fractfs: cannot read the copy of %s (%s); keeping its previous state", path, exc)
            _busy(ch, key, result)
            return
    if got == capture.GONE:
        ch.digest_ok = False
        return
    if got == capture.OUT_OF_TIME:
        _missed(ch, key, result)
        return
    if isinstance(got, str):
        log.info("fractfs: %s kept changing while being read; left for the next checkpoint", path)
        _busy(ch, key, result)
        return
    if got.facts is None or got.facts != rec[1:]:
        ch.digest_ok = False  # stat moved since the walk (or too fresh to trust): look again next time
    if got.how != capture.SETTLED:
        result.unsettled.append(f"{key[0]}:{key[1]}")
        log.info("fractfs: %s kept changing; stored %s (%d bytes)", path,
                 "the version two whole reads agreed on" if got.how == capture.IDENTICAL
                 else "its stable prefix (it only grew between two reads)", got.size)
    _place(ch, key, got, packer, placed)


def _busy(ch: Changes, key: Key, result: CheckpointResult) -> None:
    result.skipped_busy.append(f"{key[0]}:{key[1]}")
    ch.carry(key)
    ch.digest_ok = False


def _missed(ch: Changes, key: Key, result: CheckpointResult) -> None:
    result.missed_deadline.append(f"{key[0]}:{key[1]}")
    ch.carry(key)
    ch.digest_ok = False


def _place(ch: Changes, key: Key, cap: Captured, packer: Packer, placed: dict[Key, Captured]) -> None:
    """Point at a stored copy the base already has, or place the content's chunks (each new one is uploaded,
    each known one referenced)."""
    entry = Entry(key[0], key[1], FILE, mode=cap.mode, size=cap.size, mtime_ns=cap.mtime_ns, sha256=cap.sha,
                  sqlite=cap.sqlite)
    prev = ch.base.entries.get(key)
    known = prev if (prev is not None and prev.type == FILE and prev.sha256 == cap.sha
                     and (prev.stored or not prev.size)) else ch.base.dedup.get(cap.sha)
    if known is not None and (known.size != cap.size or not manifests.expressible(known)):
        # stored in a v1 form v2 cannot point at: store it as chunks. (A size that differs means a content
        # id of one kind met one of the other: a small file holding exactly another file's chunk digests.)
        known = None
    if known is not None or cap.size == 0:
        ch.put(key, diff.relocate(entry, known), cap.facts, cap.side)
        return
    if cap.slots is None:
        assert cap.data is not None and cap.pieces is not None
        view = memoryview(cap.data)
        # The packs keep views of the file's bytes until they are stored (no copy), which keeps the whole
        # buffer alive: when only a small part of it is new (an edit), the new chunks are copied instead, so a
        # pack never pins much more memory than its own size.
        new = sum(n for _off, n, d in cap.pieces if not packer.has(d))
        copy = 0 < new * 2 < len(view)
        cap.slots = [packer.put(d, view[off:off + n], copy) for off, n, d in cap.pieces]
        cap.data = cap.pieces = None
    placed[key] = cap


def _settle(ch: Changes, placed: dict[Key, Captured], result: CheckpointResult) -> None:
    """After the uploads finished (or the cutoff came): the entries of the files this checkpoint stored.

    A file with a chunk in a pack whose upload did not finish by the cutoff is out of time; one with a chunk
    in a pack the store refused (:class:`~fractfs.errors.ObjectRejected`) is listed in ``rejected``; both keep
    the base's entry (a new file is left out)."""
    for key, cap in placed.items():
        assert cap.slots is not None
        how, why = Packer.outcome(cap.slots)
        if how == MISSED:
            _missed(ch, key, result)
            continue
        if how == REJECTED:
            result.rejected[f"{key[0]}:{key[1]}"] = why
            ch.carry(key)
            ch.digest_ok = False
            continue
        ch.put(key, _file_entry(key, cap), cap.facts, cap.side)


def _file_entry(key: Key, cap: Captured) -> Entry:
    """The entry of a file whose chunks are stored: one chunk is a pack slice (as in v1), more are chunks."""
    assert cap.slots is not None
    refs = tuple(s.ref() for s in cap.slots)
    entry = Entry(key[0], key[1], FILE, mode=cap.mode, size=cap.size, mtime_ns=cap.mtime_ns, sha256=cap.sha,
                  sqlite=cap.sqlite)
    if len(refs) == 1:
        return entry._replace(pack=refs[0].pack, offset=refs[0].offset)
    return entry._replace(chunks=refs)


def _legacy(entries: dict[Key, Entry]) -> list[Key]:
    """Files stored in a form only format v1 can describe (:func:`.manifests.expressible`, inlined: this runs
    over every entry of every checkpoint that writes)."""
    limit = MAX_CHUNK
    return [k for k, e in entries.items() if e.object or (e.pack and e.size > limit)]


def _rechunk_legacy(ch: Changes, walked: WalkResult) -> set[str]:
    """Files the stat cache vouches for but whose stored form only format v1 can describe (an ``objects/``
    object, or a pack slice longer than a chunk): move them to the files to read, so this checkpoint stores
    them as chunks (the first checkpoint of a v1 store, docs/format.md §A5). Returns their labels."""
    stale = [k for k in _legacy(ch.new) if k not in ch.carried]
    if not stale:
        return set()
    recs = {area: {rec[0]: rec for rec in walked.records.get(area, [])} for area in {a for a, _ in stale}}
    for key in stale:
        del ch.new[key]
        del ch.rows[key]
        ch.dirty.append((key[0], key[1], recs[key[0]][key[1]]))
    log.info("fractfs: checkpoint: %d files stored in format v1's large-file form are read again to be stored "
             "as chunks (format v2)", len(stale))
    return {f"{a}:{r}" for a, r in stale}


def _fall_back_to_v1(ch: Changes, result: CheckpointResult, rechunked: set[str]) -> bool:
    """When the next snapshot would still hold files only format v1 can describe (ones this checkpoint could
    not read again: busy, out of time, refused, unreadable, kept for an unfinished restore), it is written as
    v1, which loses none of them; files stored as several chunks, which v1 cannot describe, keep their
    previous version this time (listed as busy, unless only their stored form was to change: ``rechunked``).
    The next checkpoint tries the migration again. True when the snapshot is to be written as v1."""
    legacy = sorted(_legacy(ch.new))
    if not legacy:
        return False
    held = sorted(k for k, e in ch.new.items() if e.chunks)
    for key in held:
        label = f"{key[0]}:{key[1]}"
        if key in ch.base.entries:
            ch.carry(key)
        else:
            del ch.new[key]
            del ch.rows[key]
        if label not in rechunked:
            result.skipped_busy.append(label)
    ch.digest_ok = False
    log.warning("fractfs: checkpoint written in format v1 once more: %d files stored in v1's large-file form "
                "could not be read again to store them as chunks (%s)%s", len(legacy),
                ", ".join(f"{a}:{r}" for a, r in legacy[:5]),
                f"; {len(held)} files stored as chunks keep their previous version until then" if held else "")
    return True


def _manifest(ch: Changes, hdr: CacheHeader | None, names: list[SnapName], node_id: str,
              v1: bool = False, attempted: int = 0) -> tuple[SnapName, bytes]:
    entries = [ch.new[k] for k in sorted(ch.new)]
    # Never below what this node already committed, nor below a manifest it tried to write: a stale listing
    # (FUSE directory cache, an eventually consistent store) can hide our last manifest, or one whose write
    # landed although its response was lost, and a second manifest with the same number would then be
    # ordered against it by digest alone, i.e. at random, and could lose to the older state.
    last = parse_snapshot_id(hdr.snapshot) if hdr is not None and hdr.snapshot else None
    seq = max(names[-1].seq if names else 0, last.seq if last is not None else 0, attempted) + 1
    if seq > MAX_SEQ:
        raise FractfsError(f"snapshot sequence space exhausted: {names[-1].key if names else '?'} on the store "
                           f"carries sequence {seq - 1}, the largest there is; fractfs never counts that high, so "
                           "it was put there by hand: delete it (fractfs verify lists it)")
    man = Manifest(seq=seq, created_ns=time.time_ns(), node=node_id, parent=ch.base.id, entries=entries)
    return encode_manifest(man) if v1 else manifests.encode(man)


def _cache_out(areas: dict[str, Path], walked: WalkResult, ch: Changes, result: CheckpointResult,
               snapshot_id: str | None, snapshot_size: int | None) -> tuple[CacheHeader, Rows]:
    """The stat cache describing the checkpointed state (saved only after the commit)."""
    rows: Rows = {}
    for (a, r), row in ch.rows.items():
        rows.setdefault(a, {})[r] = row
    dbs = sorted((a, r) for (a, r), e in ch.new.items() if e.sqlite and (a, r) not in ch.carried)
    hdr = CacheHeader(snapshot=snapshot_id, snapshot_size=snapshot_size, sqlite=dbs, files=result.files,
                      bytes=result.bytes)
    db_sides = [(a, r, ch.rows[(a, r)].side) for a, r in dbs]
    if ch.digest_ok and not left_out(result) and all(x[2] for x in db_sides):
        hdr.digest = scan.walk_digest(areas, walked, db_sides)
    return hdr, rows


def commit(store: Store, prep: Prepared, fence: Fence = no_fence) -> CheckpointResult:
    """Write ``prep``'s manifest (if it has one) after ``fence()`` allowed it, trim old manifests, then save
    the stat cache. Raises what ``fence`` raises, with nothing written to ``snapshots/``."""
    result = prep.result
    if prep.cache is None:
        return result  # nothing changed, nothing looked at: the stat cache is already right
    committed = prep.name
    if committed is not None:
        _write_manifest(store, committed, prep.data, fence, prep.state_dir)
        result.uploaded_bytes += len(prep.data)
        result.snapshot_id = committed.id
        if prep.deadline is None or prep.deadline - time.monotonic() > TRIM_TIME:
            _trim(store, prep.names + [committed], prep.keep, fence)  # else the next checkpoint trims
    _save_state(prep)
    result.duration = time.monotonic() - prep.t0
    if result.missed_deadline:
        log.warning("fractfs: checkpoint ran out of time; %d changed files not stored (their previous version "
                    "kept): %s", len(result.missed_deadline), ", ".join(result.missed_deadline[:10]))
    for label, why in list(result.rejected.items())[:10]:
        log.warning("fractfs: %s not stored: the store refused it (%s); its previous version is kept and the "
                    "rest of the checkpoint is committed", label, why)
    if committed is not None:
        log.info("fractfs: checkpoint %s: %d files (%d stored, %d deleted, %d busy), %d bytes uploaded, %.2fs",
                 committed.short, result.files, len(result.stored), len(result.deleted),
                 len(result.skipped_busy), result.uploaded_bytes, result.duration)
    else:
        log.debug("fractfs: checkpoint: no change to commit (%.3fs)", result.duration)
    return result


#: Node-local note of the highest sequence number this node tried to write a manifest under (see _manifest).
ATTEMPT_FILE = "manifest-attempt"


def _attempted(sdir: Path) -> int:
    """The sequence number of this node's last manifest write, landed or not (0: none, or unreadable)."""
    try:
        text = (sdir / ATTEMPT_FILE).read_text(encoding="ascii").strip()
    except (OSError, ValueError):
        return 0
    return int(text) if text.isdigit() and len(text) <= 12 else 0


def _note_attempt(sdir: Path, seq: int) -> None:
    """Remember ``seq`` before its manifest is written: if the write lands but its response is lost, the next
    checkpoint must not reuse the number even when the listing does not show that manifest yet. Losing the
    note only brings back the old behaviour, so a failure to write it is logged, not raised."""
    try:
        write_replace(sdir / ATTEMPT_FILE, str(seq).encode("ascii"))
    except OSError as exc:
        log.warning("fractfs: could not note the snapshot number being written in %s (%s)", sdir, exc)


#: Old manifests are trimmed after a deadline-bound commit only when at least this much time is left.
TRIM_TIME = 1.0


def _write_manifest(store: Store, name: SnapName, data: bytes, fence: Fence, sdir: Path) -> None:
    fence()
    _note_attempt(sdir, name.seq)  # after the fence: a refused commit writes nothing and keeps its number
    try:
        store.put(name.key, data, exclusive=True)
    except AlreadyExists:
        pass  # same name = same bytes (the name is their hash)
    try:
        check_stored(store, name.key, len(data))  # a torn manifest must not be reported as committed
    except StoreError:
        # its name promises bytes it does not hold, so no reader can ever use it: do not leave it behind
        try:
            store.delete(name.key)
        except StoreError as exc:
            log.debug("fractfs: could not remove torn manifest %s: %s", name.key, exc)
        raise
    catalog.write_head(store, name)  # for readers whose listing lags (docs/format.md, "The head")


def _save_state(prep: Prepared) -> None:
    """Remember what we now know (after the commit: the cache must never run ahead of the store)."""
    sdir, result = prep.state_dir, prep.result
    assert prep.cache is not None
    try:
        statcache.write_cache(sdir, prep.cache, prep.rows)
    except OSError as exc:
        # The snapshot is committed; the cache only saves the next checkpoint from re-reading files. Whatever
        # cache is left describes an older snapshot, so the next run compares against the store instead.
        log.warning("fractfs: checkpoint %s committed, but its stat cache could not be saved in %s (%s); the "
                    "next checkpoint re-reads changed files", prep.cache.snapshot, sdir, exc)
    if len(prep.kept) != prep.waiting_unrestored:
        try:
            unrestored.record(sdir, prep.cache.snapshot or "", prep.kept)
        except OSError as exc:
            log.warning("fractfs: could not update %s (%s)", sdir / unrestored.RECORD_FILE, exc)
    if prep.kept and prep.name is not None:
        log.info("fractfs: checkpoint keeps %d files the last restore could not write (their stored copy is "
                 "unchanged until the app writes them or removes their directory): %s",
                 len(prep.kept), ", ".join(result.kept_unrestored[:10]))


def _norm_areas(areas: dict[str, Path]) -> dict[str, Path]:
    out = {}
    for name, p in areas.items():
        if not valid_area(name):
            raise FractfsError(f"area name {name!r} is not valid (letters, digits, '_', '-', '.'; max 64)")
        out[name] = Path(os.path.abspath(os.fspath(p)))
    return out


def _exclusions(areas: dict[str, Path], extra: list[Path]) -> frozenset[str]:
    """Directory paths (as the walk spells them) never to descend into: the state dir, and an area nested
    inside another (its own walk covers it)."""
    out: set[str] = set()
    candidates = [Path(os.path.abspath(p)) for p in extra] + list(areas.values())
    for top in areas.values():
        real_top = os.path.realpath(top)
        for c in candidates:
            if c == top:
                continue
            for form in {os.fspath(c), os.path.realpath(c)}:
                for base in {os.fspath(top).rstrip("/"), real_top.rstrip("/")}:
                    if form.startswith(base + "/"):
                        out.add(os.fspath(top).rstrip("/") + form[len(base):])
    return frozenset(out)


#: A restore temp file this old (by ctime, which utime cannot move) was left by a restore that died.
STALE_TEMP_NS = 3600 * 10**9


def _remove_stale_temps(paths: list[str]) -> None:
    now = time.time_ns()
    for p in paths:
        try:
            st = os.lstat(p)
            if now - st.st_ctime_ns <= STALE_TEMP_NS:
                continue
            if st.st_mode & 0o170000 in (S_IFREG, S_IFLNK):
                os.unlink(p)
            elif st.st_mode & 0o170000 == S_IFDIR:  # a directory tree a restore was building
                shutil.rmtree(p)
            else:
                continue
            log.info("fractfs: removed %s, left behind by an interrupted restore", p)
        except OSError:
            pass


def _trim(store: Store, names: list[SnapName], keep: int, fence: Fence = no_fence) -> None:
    names = sorted(set(names))
    for old in names[: max(len(names) - keep, 0)]:
        try:
            fence()  # a node that lost the lease leaves the manifests to the one that has it
            store.delete(old.key)
            log.debug("fractfs: removed old snapshot %s", old.short)
        except Exception as exc:  # noqa: BLE001 - a manifest we failed to trim is retried next time
            log.warning("fractfs: could not remove old snapshot %s: %s", old.key, exc)
