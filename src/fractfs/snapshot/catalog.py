"""Finding snapshots on a store: list the manifest names, load and verify them, pick the newest valid one.

Listings can lag (FUSE attribute and directory caches, ``/Volumes``, eventually consistent stores), so a listing
alone could hide the newest manifest from a cold node, which would then restore the generation before it and
commit over it. After each commit the writer therefore also names its manifest in ``snapshots/head.json`` (read
by name, never listed), and every listing here is the union of the two: see docs/format.md, "The head".
"""
from __future__ import annotations

import json
import logging
import threading
import weakref

from ..errors import CorruptCheckpointError, FractfsError, SnapshotNotFound, StoreNotFound
from ..stores.base import Store
from . import gcpause, manifests
from .format import (
    MAX_MANIFEST_BYTES,
    SNAPSHOTS,
    Manifest,
    SnapName,
    UnknownFormatError,
    parse_snapshot_id,
    parse_snapshot_key,
)

log = logging.getLogger("fractfs")

#: The head pointer: the newest committed manifest, overwritten after each commit.
HEAD_KEY = f"{SNAPSHOTS}head.json"
HEAD_FORMAT = "fractfs-head"
_MAX_HEAD_BYTES = 4096

# A head naming a manifest that is gone is worth one warning per process, not one per checkpoint.
_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_once(what: str, msg: str, *args: object) -> None:
    with _warned_lock:
        if what in _warned:
            log.debug(msg, *args)
            return
        _warned.add(what)
    log.warning(msg, *args)


def encode_head(name: SnapName) -> bytes:
    return json.dumps({"format": HEAD_FORMAT, "version": 1, "snapshot": name.id, "seq": name.seq}).encode() + b"\n"


def decode_head(data: bytes) -> SnapName | None:
    """The manifest a head names, or None (with a warning) when the head is not one we can read."""
    try:
        if len(data) > _MAX_HEAD_BYTES:
            raise ValueError(f"{len(data)} bytes")
        d = json.loads(data)
        if not isinstance(d, dict) or d.get("format") != HEAD_FORMAT or d.get("version") != 1:
            raise ValueError("not a version-1 fractfs head")
        sid = d.get("snapshot")
        name = parse_snapshot_id(sid) if isinstance(sid, str) else None
        if name is None or d.get("seq") != name.seq:
            raise ValueError(f"snapshot {sid!r} / seq {d.get('seq')!r} do not name a manifest")
    except ValueError as exc:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        _warn_once(f"bad:{data[:200]!r}", "fractfs: ignoring %s: %s (the listing alone decides)", HEAD_KEY, exc)
        return None
    return name


def read_head(store: Store) -> SnapName | None:
    """The manifest named by the store's head, None when there is none (or it is unreadable as a head).

    A store error propagates: it says nothing about which snapshot is newest.
    """
    try:
        data = store.get(HEAD_KEY)
    except StoreNotFound:
        return None
    return decode_head(data)


def write_head(store: Store, name: SnapName) -> bool:
    """Point the head at ``name``, a manifest just committed (a plain overwrite). False, logged, when that fails.

    Never raises a fractfs error: the manifest is committed whether or not its head lands, and a head left
    behind is only a hint (readers take the newer of it and the listing).
    """
    try:
        store.put(HEAD_KEY, encode_head(name))
    except FractfsError as exc:
        log.warning("fractfs: snapshot %s is committed, but %s could not be updated (%s); a node whose listing "
                    "lags may not see it until the next commit", name.short, HEAD_KEY, exc)
        return False
    return True


#: Manifests this process found damaged, per store: name -> size then. Anyone who can write the store can plant
#: a name that sorts newest (snapshots/999999999999-000…0.json.gz, 7 bytes): remembering the verdict keeps it
#: from costing a fetch and an ERROR line at every checkpoint and from handing out sequence numbers. Keyed by
#: size too, so a manifest rewritten whole under the same name is looked at again.
_damaged: weakref.WeakKeyDictionary[Store, dict[SnapName, int]] = weakref.WeakKeyDictionary()
_damaged_lock = threading.Lock()


def _note_damaged(store: Store, name: SnapName, size: int) -> None:
    try:
        with _damaged_lock:
            _damaged.setdefault(store, {})[name] = size
    except TypeError:  # a store object that cannot be weakly referenced: no memory, only more fetches
        pass


def without_damaged(store: Store, names: list[SnapName], sized: dict[SnapName, int] | None = None,
                    ) -> list[SnapName]:
    """``names`` minus those this process already found damaged (and whose size has not changed since)."""
    try:
        with _damaged_lock:
            known = dict(_damaged.get(store, {}))
    except TypeError:
        return names
    if not known:
        return names
    return [n for n in names if n not in known or (sized is not None and sized.get(n, known[n]) != known[n])]


def list_sized(store: Store) -> dict[SnapName, int]:
    """Every well-named manifest on the store with its size, plus the head's when the listing lags behind it.

    Other files under ``snapshots/`` are ignored. The head's manifest is added only if it is newer than all
    listed ones and exists (its size is asked for by name); whether it verifies is decided by whoever loads
    it, as for any listed manifest.
    """
    out: dict[SnapName, int] = {}
    for key, size in store.list(SNAPSHOTS):
        n = parse_snapshot_key(key)
        if n is not None:
            out[n] = size
        elif key != HEAD_KEY:
            log.debug("ignoring foreign file %s in the snapshot area", key)
    head = read_head(store)
    if head is not None and head not in out and (not out or head > max(out)):
        head_size = store.size(head.key)
        if head_size is None:
            _warn_once(f"gone:{head.id}", "fractfs: %s names snapshot %s, which is not on the store; ignoring the "
                       "head (the listing alone decides)", HEAD_KEY, head.short)
        else:
            log.info("fractfs: the store's listing does not show snapshot %s yet; using it, as %s names it",
                     head.short, HEAD_KEY)
            out[head] = head_size
    return out


def list_names(store: Store) -> list[SnapName]:
    """Every well-named manifest on the store, oldest first."""
    return sorted(list_sized(store))


def load(store: Store, name: SnapName) -> Manifest:
    """Fetch and verify one manifest. CorruptCheckpointError when damaged; StoreError when unreachable."""
    size = store.size(name.key)
    if size is None:
        raise CorruptCheckpointError(f"{name.key}: listed but gone (deleted while reading?)")
    if size > MAX_MANIFEST_BYTES:  # before reading it: a planted 10 GB "manifest" must not fill memory
        _note_damaged(store, name, size)
        raise CorruptCheckpointError(f"{name.key}: {size} bytes, over the limit of {MAX_MANIFEST_BYTES} for a "
                                     "manifest; refused")
    try:
        data = store.get(name.key)
    except StoreNotFound:
        raise CorruptCheckpointError(f"{name.key}: listed but gone (deleted while reading?)") from None
    try:
        with gcpause.paused():  # one entry object per file, all kept: see gcpause
            return manifests.decode(name, data)
    except UnknownFormatError:
        raise
    except CorruptCheckpointError as exc:
        # Read once more before calling it damage: a bit flipped in transit would otherwise send a restore
        # back to an older snapshot, i.e. bring back stale state, although the store holds the good bytes.
        try:
            again = store.get(name.key)
        except StoreNotFound:
            raise exc from None
        if again == data:
            _note_damaged(store, name, len(data))
            raise
        try:
            with gcpause.paused():
                m = manifests.decode(name, again)
        except CorruptCheckpointError:
            _note_damaged(store, name, len(again))
            raise
        log.warning("fractfs: snapshot %s failed verification once and passed on a second read (damaged in "
                    "transit, not on the store)", name.id)
        return m


def resolve_id(names: list[SnapName], sid: str) -> SnapName:
    """A snapshot given as its full id, its sequence number, a unique prefix of its hash, or the short
    ``<seq>-<hash prefix>`` form (:attr:`SnapName.short`) that logs and ``fractfs snapshots`` print."""
    sid = sid.strip()
    for n in names:
        if n.id == sid:
            return n
    seq, dash, prefix = sid.partition("-")
    if dash and seq.isdigit() and len(prefix) >= 4:
        short = [n for n in names if n.seq == int(seq) and n.digest.startswith(prefix.lower())]
        if len(short) == 1:
            return short[0]
    hits = [n for n in names if n.seq == int(sid)] if sid.isdigit() else []
    if not hits and len(sid) >= 4:
        # also for an all-digit text: a hash prefix such as "790379" is digits about 6 % of the time, and
        # `fractfs snapshots` prints those prefixes (a sequence number that exists wins)
        hits = [n for n in names if n.digest.startswith(sid.lower())]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise SnapshotNotFound(f"snapshot {sid!r} not found on the store")
    raise SnapshotNotFound(f"snapshot {sid!r} is ambiguous: {', '.join(n.short for n in hits)}")


def newest_valid(store: Store, names: list[SnapName] | None = None,
                 ) -> tuple[Manifest | None, list[str]]:
    """The newest manifest that verifies, and the ids of newer ones that did not.

    Damage is logged at ERROR (someone should look) and skipped. A store error is *not* damage: it propagates,
    because silently falling back to an older snapshot on a network hiccup would restore stale state.
    """
    if names is None:
        names = list_names(store)
    damaged: list[str] = []
    for name in reversed(names):
        try:
            return load(store, name), damaged
        except UnknownFormatError as exc:
            log.error("fractfs: snapshot %s skipped: %s", name.id, exc)
            damaged.append(name.id)
        except CorruptCheckpointError as exc:
            log.error("fractfs: snapshot %s is damaged, falling back to an older one: %s", name.id, exc)
            damaged.append(name.id)
    return None, damaged
