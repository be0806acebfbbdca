"""checkpointer.py: the one checkpoint path (lock -> lease -> prepare -> fence -> commit), its stats, the abort
used by the bounded final pass, and one_shot() for `fractfs sync`. Real POSIX stores, real leases."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from fractfs import snapshot
from fractfs.checkpointer import Checkpointer, CheckpointStats, exclusive_lease, status_fields
from fractfs.errors import CheckpointAborted, LeaseHeld, LeaseLost, StoreError
from fractfs.lease import Lease, LeaseKeeper, LeaseRecord, lease_key
from fractfs.snapshot.engine import CheckpointResult, Options
from fractfs.stores.posix import PosixStore


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _everything(_a: str, _r: str, _d: bool) -> bool:
    return True


def _setup(tmp_path: Path, store: Any = None, clock: Clock | None = None,
           ) -> tuple[Any, Path, Lease, LeaseKeeper, Checkpointer]:
    store = store if store is not None else PosixStore(str(tmp_path / "ckpt"))
    src = tmp_path / "app"
    src.mkdir(exist_ok=True)
    lease = Lease(store, "node-a", 10.0, clock=clock or time.monotonic)
    keeper = LeaseKeeper(lease, where="test store")
    cp = Checkpointer(store, areas=lambda: {"root": src}, want=lambda: _everything, state_dir=tmp_path / "state",
                      options=Options(node_id="node-a"), keeper=keeper)
    return store, src, lease, keeper, cp


def test_checkpoint_commits_and_records_stats_with_app_paths(tmp_path: Path) -> None:
    store, src, lease, _keeper, cp = _setup(tmp_path)
    (src / "a.txt").write_text("one")
    assert cp.checkpoint() == ["a.txt"]  # eager: takes the lease itself
    assert lease.held
    snaps = snapshot.list_snapshots(store)
    assert len(snaps) == 1 and cp.stats.last_snapshot_id == snaps[0].id
    assert cp.stats.syncs == 1 and cp.stats.files == 1 and cp.stats.bytes == 3
    assert cp.stats.consecutive_failures == 0 and cp.stats.last_stored == ["a.txt"]
    assert cp.checkpoint() == []  # nothing changed: no new snapshot
    assert len(snapshot.list_snapshots(store)) == 1 and cp.stats.syncs == 2


def test_commit_is_refused_when_the_fence_raises_and_the_prior_snapshot_stays_newest(tmp_path: Path) -> None:
    clock = Clock()
    store, src, lease, _keeper, cp = _setup(tmp_path, clock=clock)
    (src / "a.txt").write_text("one")
    cp.checkpoint()
    first = snapshot.list_snapshots(store)[-1].id
    (src / "a.txt").write_text("two")
    clock.t += lease.timeout  # the last renewal is now too old to commit on
    assert lease.held and not lease.valid()
    # ... and another node took over meanwhile, so the renewal the fence tries first fails as well
    assert lease.generation is not None
    store.put(lease_key(lease.generation + 1), LeaseRecord(
        generation=lease.generation + 1, node="node-b", token="b", beat=0, time=time.time(),
        acquired=time.time(), timeout=lease.timeout).encode(), exclusive=True)
    cp.acquire(None)
    try:
        with pytest.raises(LeaseLost):
            cp.run(None, tmp_path / "state")  # run() skips the up-front lease check: only the fence stops it
    finally:
        cp.release()
    snaps = snapshot.list_snapshots(store)
    assert [s.id for s in snaps] == [first]
    assert snapshot.latest_paths(store) is not None
    assert cp.stats.consecutive_failures == 1 and (cp.stats.last_error or "").startswith("LeaseLost")
    assert cp.stats.last_snapshot_id == first


def test_checkpoint_raises_when_the_lease_cannot_be_confirmed(tmp_path: Path) -> None:
    clock = Clock()
    store, src, lease, _keeper, cp = _setup(tmp_path, clock=clock)
    (src / "a.txt").write_text("one")
    cp.checkpoint()
    (src / "a.txt").write_text("two")
    clock.t += lease.timeout
    real_list = store.list

    def broken_list(prefix: str = "") -> Any:
        if prefix.startswith("locks/"):
            raise StoreError("store down (test)")
        return real_list(prefix)

    store.list = broken_list  # the renewal fails: the lease stays held but unconfirmed
    with pytest.raises(LeaseLost):
        cp.checkpoint()
    assert len(snapshot.list_snapshots(store)) == 1 and cp.stats.consecutive_failures == 1


def test_another_nodes_lease_means_nothing_is_written(tmp_path: Path) -> None:
    store, src, _lease, _keeper, cp = _setup(tmp_path)
    other = Lease(store, "node-b", 10.0)
    assert other.tick()
    (src / "a.txt").write_text("one")
    assert cp.checkpoint() == []
    assert snapshot.list_snapshots(store) == [] and cp.stats.syncs == 0


class _AbortOnPack(PosixStore):
    """Aborts the running checkpoint from inside its first pack upload, as the final pass would."""

    cp: Checkpointer | None = None

    def put(self, key: str, data: bytes, *, exclusive: bool = False) -> None:
        if key.startswith("packs/") and self.cp is not None:
            self.cp.abort_running()
        super().put(key, data, exclusive=exclusive)


def test_an_aborted_checkpoint_never_commits(tmp_path: Path) -> None:
    store = _AbortOnPack(str(tmp_path / "ckpt"))
    _store, src, _lease, _keeper, cp = _setup(tmp_path, store=store)
    (src / "a.txt").write_text("one")
    cp.checkpoint()
    assert len(snapshot.list_snapshots(store)) == 1
    (src / "a.txt").write_text("two, in a new pack")
    store.cp = cp
    with pytest.raises((CheckpointAborted, StoreError)):
        cp.checkpoint()
    store.cp = None
    assert len(snapshot.list_snapshots(store)) == 1
    assert cp.checkpoint() == ["a.txt"]  # the next run is not aborted: abort only hits the running ones
    assert len(snapshot.list_snapshots(store)) == 2


def test_lock_serialises_checkpoints_and_reports_the_owner(tmp_path: Path) -> None:
    _store, _src, _lease, _keeper, cp = _setup(tmp_path)
    assert cp.acquire(0) and cp.lock_owner == threading.get_ident()
    got: list[bool] = []
    t = threading.Thread(target=lambda: got.append(cp.acquire(0.1)))
    t.start()
    t.join()
    assert got == [False]
    cp.release()
    assert cp.lock_owner is None and cp.acquire(0)
    cp.release()


def test_exclusive_lease_is_refused_while_held_and_released_after(tmp_path: Path) -> None:
    store = PosixStore(str(tmp_path / "ckpt"))
    holder = Lease(store, "app-node", 10.0)
    assert holder.tick()
    with pytest.raises(LeaseHeld, match="app-node"):
        with exclusive_lease(store, "cli", 10.0):
            pass
    with exclusive_lease(store, "cli", 10.0, force=True) as keeper:
        assert keeper is None  # forced: no fence, the holder keeps its lease
    assert holder.tick()
    holder.release()
    with exclusive_lease(store, "cli", 10.0) as keeper:
        assert keeper is not None and keeper.lease.valid()
        assert [k for k, _ in store.list("locks/")]
    assert list(store.list("locks/")) == []  # released on the way out


def test_stats_keep_app_paths_and_status_fields_keep_their_names() -> None:
    stats = CheckpointStats()
    res = CheckpointResult(snapshot_id="000000000002-x", stored=["root:a.txt", "scratch:s/b"], files=2, bytes=9,
                           skipped_busy=["root:busy"], kept_unrestored=["root:gone.txt"], uploaded_bytes=7)
    stats.failed(StoreError("down"))
    assert stats.consecutive_failures == 1 and stats.last_error == "StoreError: down"
    stats.succeeded(res, time.time() - 1)
    assert stats.last_stored == ["a.txt", "s/b"] and stats.kept_unrestored == ["gone.txt"]
    assert stats.consecutive_failures == 0 and stats.syncs == 1 and stats.last_snapshot_id == "000000000002-x"
    assert stats.last_sync_duration is not None and stats.last_sync_duration >= 1
    fields = status_fields(stats, lambda t: None if t is None else "iso")
    assert fields["last_stored_count"] == 2 and fields["last_uploaded_bytes"] == 7
    assert fields["last_skipped_busy"] == ["root:busy"] and fields["kept_unrestored"] == ["gone.txt"]
    assert fields["last_error"] == "StoreError: down" and fields["last_error_time_iso"] == "iso"
    assert set(fields) == {
        "last_sync_time", "last_sync_time_iso", "last_sync_start", "last_sync_start_iso", "last_sync_duration",
        "last_snapshot_id", "last_stored_count", "last_uploaded_bytes", "last_missed_deadline",
        "last_skipped_busy", "not_stored", "last_unsettled", "kept_unrestored", "files", "bytes", "syncs",
        "consecutive_failures", "last_error", "last_error_time", "last_error_time_iso"}


def test_one_shot_takes_the_lease_commits_and_releases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fractfs.checkpointer import one_shot
    from fractfs.config import load_config
    from fractfs.selection import Selection
    from fractfs.tiers import TierResolver

    root, vol = tmp_path / "app", tmp_path / "vol"
    root.mkdir()
    vol.mkdir()
    monkeypatch.setenv("fractfs_VOLUME_ROOT", str(vol))
    cfg = load_config(root)
    (root / "state.txt").write_text("v1")
    from fractfs.stores import open_store

    store = open_store(cfg.checkpoint_location or "", backend=cfg.backend)
    want = Selection(cfg, TierResolver(cfg), ())
    holder = Lease(store, "app-node", 10.0)
    assert holder.tick()
    with pytest.raises(LeaseHeld):
        one_shot(cfg, store, want, node_id="cli")
    assert snapshot.list_snapshots(store) == []
    holder.release()
    res = one_shot(cfg, store, want, node_id="cli")
    assert res.snapshot_id is not None and "root:state.txt" in res.stored
    assert [s.id for s in snapshot.list_snapshots(store)] == [res.snapshot_id]
    assert list(store.list("locks/")) == []  # given back
    assert holder.tick()  # so the app takes it again at once
    (root / "state.txt").write_text("v2")
    forced = one_shot(cfg, store, want, node_id="cli", force=True)
    assert forced.snapshot_id is not None and forced.parent == res.snapshot_id
