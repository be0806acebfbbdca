"""Finding snapshots on a store: list the manifest names, load and verify them, pick the newest valid one."""
from __future__ import annotations

import logging

from ..errors import CorruptCheckpointError, SnapshotNotFound, StoreNotFound
from ..stores.base import Store
from .format import SNAPSHOTS, Manifest, SnapName, UnknownFormatError, decode_manifest, parse_snapshot_key

log = logging.getLogger("fractfs")


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
            raise
        m = decode_manifest(name, again)
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
    if sid.isdigit():
        hits = [n for n in names if n.seq == int(sid)]
    elif len(sid) >= 4:
        hits = [n for n in names if n.digest.startswith(sid.lower())]
    else:
        hits = []
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
