"""Finding snapshots on a store: list the manifest names, load and verify them, pick the newest valid one."""
from __future__ import annotations

import logging
import threading
import weakref

from ..errors import CorruptCheckpointError, StoreNotFound
from ..stores.base import Store
from .format import (
    MAX_MANIFEST_BYTES,
    SNAPSHOTS,
    Manifest,
    SnapName,
    UnknownFormatError,
    decode_manifest,
    parse_snapshot_key,
)

log = logging.getLogger("fractfs")

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
    """Every well-named manifest on the store with its size. Other files under ``snapshots/`` are ignored."""
    out: dict[SnapName, int] = {}
    for key, size in store.list(SNAPSHOTS):
        n = parse_snapshot_key(key)
        if n is not None:
            out[n] = size
        else:
            log.debug("ignoring foreign file %s in the snapshot area", key)
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
        return decode_manifest(name, data)
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
            m = decode_manifest(name, again)
        except CorruptCheckpointError:
            _note_damaged(store, name, len(again))
            raise
        log.warning("fractfs: snapshot %s failed verification once and passed on a second read (damaged in "
                    "transit, not on the store)", name.id)
        return m


def resolve_id(names: list[SnapName], sid: str) -> SnapName:
    """A snapshot given as its full id, its sequence number, or a unique prefix of its hash."""
    sid = sid.strip()
    for n in names:
        if n.id == sid:
            return n
    if sid.isdigit():
        hits = [n for n in names if n.seq == int(sid)]
    elif len(sid) >= 4:
        hits = [n for n in names if n.digest.startswith(sid.lower())]
    else:
        hits = []
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise CorruptCheckpointError(f"snapshot {sid!r} not found on the store")
    raise CorruptCheckpointError(f"snapshot {sid!r} is ambiguous: {', '.join(n.short for n in hits)}")


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
