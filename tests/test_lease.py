"""The lease object on its own (in-process, a fake clock where time matters): the cases the mutation run of
lease.py showed no test would notice (tools/mutation.py, docs/reliability.md §8)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from fractfs.errors import StoreError
from fractfs.lease import Lease, LeaseRecord, lease_key, parse_generation
from fractfs.stores.posix import PosixStore


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def record(generation: int, node: str, token: str = "other-token", **kw: Any) -> bytes:
    now = time.time()  # a live heartbeat: an ancient one would be taken over at once
    rec = LeaseRecord(generation=generation, node=node, token=token, beat=0, time=now, acquired=now,
                      timeout=10, **kw)
    return rec.encode()


@pytest.fixture
def store(tmp_path: Path) -> PosixStore:
    return PosixStore(tmp_path / "ckpt")


def test_key_format_and_foreign_names(store: PosixStore) -> None:
    # docs/format.md §B10: decimal, 12 digits; anything else under locks/ is not a lease generation
    assert lease_key(7) == "locks/lease.000000000007"
    assert parse_generation("locks/lease.000000000007") == 7
    for foreign in ("locks/lease.7", "locks/lease.abcdefghijkl", "locks/lease.0000000000071", "locks/other"):
        assert parse_generation(foreign) is None, foreign


def test_a_record_as_docs_format_md_shows_it_decodes() -> None:
    # the wire format (docs/format.md §B10) does not change with the code: a literal version-1 record
    raw = (b'{"acquired": 1700000000.0, "beat": 3, "format": "fractfs-lease", "generation": 2, "host": "h", '
           b'"node": "h:1:ab", "pid": 1, "released": false, "time": 1700000001.0, "timeout": 30.0, '
           b'"token": "t", "version": 1}')
    rec = LeaseRecord.decode(raw)
    assert rec is not None and (rec.generation, rec.node, rec.beat, rec.released) == (2, "h:1:ab", 3, False)


def test_record_decoding_is_strict_and_defaults_to_live() -> None:
    doc = json.loads(record(3, "n"))
    assert LeaseRecord.decode(json.dumps(doc).encode()) is not None
    for bad in ({**doc, "version": 2}, {**doc, "format": "other"}, [doc]):
        assert LeaseRecord.decode(json.dumps(bad).encode()) is None, bad
    minimal = {k: v for k, v in doc.items() if k not in ("released", "pid", "host")}
    rec = LeaseRecord.decode(json.dumps(minimal).encode())
    assert rec is not None and rec.released is False and rec.pid == 0  # a record without the flag is live


def test_timeouts(store: PosixStore) -> None:
    assert Lease(store, "a", 0.5).timeout == 0.5  # sub-second timeouts are valid (the tests use them)
    with pytest.raises(ValueError):
        Lease(store, "a", 0)
    lease = Lease(store, "a", 10)
    # renewals come well inside the validity window: a quarter of the timeout, validity is half of it
    assert lease.beat_period == 2.5


def test_valid_for_exactly_half_the_timeout_after_a_renewal(store: PosixStore) -> None:
    mono = Clock()
    a = Lease(store, "A", 10, clock=mono)
    assert a.tick() is True
    mono.t += 4.99
    assert a.valid() is True
    mono.t += 0.01
    assert a.valid() is False


def test_holder_stands_down_when_a_newer_generation_appears(store: PosixStore) -> None:
    a = Lease(store, "A", 10)
    assert a.tick() is True and a.generation == 1
    store.put(lease_key(2), record(2, "B"))  # A's own object is still there: only the listing tells
    assert a.tick() is False and a.held is False


def test_holder_stands_down_when_its_object_is_gone_or_not_its_own(store: PosixStore) -> None:
    a = Lease(store, "A", 10)
    assert a.tick() is True
    store.put(lease_key(1), record(1, "B"))  # same generation, another token (an emulated exclusive create)
    assert a.tick() is False and a.held is False

    b = Lease(store, "B2", 10)
    for k, _ in list(store.list("locks/")):
        store.delete(k)
    assert b.tick() is True

    class StaleListing(PosixStore):  # still lists B2's object after it was deleted
        def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
            yield from [(lease_key(1), 10)] if prefix.startswith("locks") else super().list(prefix)

    b.store = StaleListing(store.root)
    store.delete(lease_key(1))
    assert b.tick() is False and b.held is False


def test_renewal_removes_leftover_older_generations(store: PosixStore) -> None:
    store.put(lease_key(1), record(1, "gone", released=True))
    a = Lease(store, "A", 10)
    assert a.tick() is True and a.generation == 2  # a released record is free at once
    store.put(lease_key(1), record(1, "gone"))  # a leftover an earlier holder failed to delete
    assert a.tick() is True
    assert [k for k, _ in store.list("locks/")] == [lease_key(2)]


def test_losing_the_race_shows_the_winner(store: PosixStore) -> None:
    a = Lease(store, "A", 10)
    assert a.tick() is True

    class EmptyListing(PosixStore):  # B does not see A's object yet, so it races for generation 1
        def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
            return iter(()) if prefix.startswith("locks") else super().list(prefix)

    b = Lease(EmptyListing(store.root), "B", 10)
    assert b.tick() is False
    assert b.describe()["holder"] == "A" and b.describe()["state"] == "standby"


def test_an_exclusive_create_the_store_only_emulated_is_confirmed(store: PosixStore) -> None:
    class LastWriterWins(PosixStore):  # "exclusive" put that another node overwrites right after
        def put(self, key: str, data: bytes, *, exclusive: bool = False) -> None:
            super().put(key, data)
            if exclusive and key.startswith("locks/"):
                super().put(key, record(1, "B", token="b-token"))

    a = Lease(LastWriterWins(store.root), "A", 10)
    assert a.tick() is False and a.held is False


def test_release_stops_committing_and_never_deletes_someone_elses_object(store: PosixStore) -> None:
    a = Lease(store, "A", 10)
    assert a.tick() is True
    a.release()
    assert a.held is False and a.valid() is False and list(store.list("locks/")) == []
    assert a.describe()["state"] == "free" and a.describe()["holder"] is None

    assert a.tick() is True
    store.put(lease_key(a.generation or 0), record(a.generation or 0, "B", token="b-token"))
    a.release()
    assert [k for k, _ in store.list("locks/")] == [lease_key(1)]  # B's object stays


def test_store_errors_are_recorded(store: PosixStore) -> None:
    class Down(PosixStore):
        def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
            raise StoreError("the store is down (test)")

        def delete(self, key: str) -> None:
            raise StoreError("the store is down (test)")

    a = Lease(Down(store.root), "A", 10)
    with pytest.raises(StoreError):
        a.tick()
    assert "the store is down" in (a.describe()["last_error"] or "")
    assert a.describe()["state"] == "unknown"

    b = Lease(store, "B", 10)
    assert b.tick() is True
    b.store = Down(store.root)
    b.release()  # not fatal: the lease goes stale instead
    assert "the store is down" in (b.last_error or "")


def test_describe_for_a_standby_node(store: PosixStore) -> None:
    mono = Clock()
    a = Lease(store, "A", 10, clock=mono)
    b = Lease(store, "B", 10, clock=mono)
    assert a.tick() is True and b.tick() is False
    mono.t += 3
    d = b.describe()
    assert d["holder_heartbeat_age"] == 3 and d["key"] == lease_key(1) and d["generation"] == 1
    assert a.describe()["key"] == lease_key(1) and a.describe()["holder_heartbeat_age"] is None


# -- forged lease objects (issue 16, point 4): someone who can write the Volume plants a lease ----------------

def test_a_forged_top_generation_delays_a_takeover_by_one_timeout_only(store: PosixStore) -> None:
    # lease.999999999999 is the largest name 12 digits hold: g + 1 has no name, and today's code looped on it
    from fractfs.lease import MAX_GENERATION

    mono = Clock()
    forged = lease_key(MAX_GENERATION)
    assert forged == "locks/lease.999999999999"
    store.put(forged, record(MAX_GENERATION, "forger"))
    b = Lease(store, "B", 10, clock=mono)
    assert b.tick() is False and b.describe()["state"] == "standby"  # looks live until it fails to beat
    mono.t += 10
    assert b.describe()["state"] == "stale"  # never called live after one timeout without a beat
    assert b.tick() is True and b.generation == 1
    assert [k for k, _ in store.list("locks/")] == [lease_key(1)]
    assert b.tick() is True  # renewals go on: the node keeps committing


def test_a_holder_displaced_by_a_forged_generation_takes_it_back_after_one_timeout(store: PosixStore) -> None:
    from fractfs.lease import MAX_GENERATION

    mono = Clock()
    a = Lease(store, "A", 10, clock=mono)
    assert a.tick() is True and a.generation == 1
    store.put(lease_key(MAX_GENERATION), b"\x00garbage, not a lease record")
    assert a.tick() is False  # a newer generation appeared: A stands down (it cannot tell forged from real)
    mono.t += 5
    assert a.tick() is False
    mono.t += 10
    assert a.tick() is True and a.generation == 2  # counted from the generations below the forged one
    assert sorted(k for k, _ in store.list("locks/")) == [lease_key(2)]


def test_names_that_are_not_generations_are_ignored_with_a_warning(store: PosixStore,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    for name in ("locks/lease.9999999999999", "locks/lease.99999999999999999999", "locks/lease.x",
                 "locks/lease.\u0663\u0663\u0663\u0663\u0663\u0663\u0663\u0663\u0663\u0663\u0663\u0663"):
        store.put(name, record(5, "forger"))
        assert parse_generation(name) is None, name
    b = Lease(store, "B", 10)
    with caplog.at_level("WARNING", logger="fractfs"):
        assert b.tick() is True and b.generation == 1
        assert b.tick() is True
    warned = [r.getMessage() for r in caplog.records if "not a lease generation" in r.getMessage()]
    assert len(warned) == 4  # once per name, not at every beat


def test_a_one_shot_reader_bounds_what_a_forged_record_claims() -> None:
    # LeaseRecord.state is the one judgement (fractfs status, sync, prune); the record's own numbers are bounded
    from fractfs.lease import MAX_RECORD_TIMEOUT

    now = 1_700_000_000.0

    def rec(t: float, timeout: float, released: bool = False) -> LeaseRecord:
        return LeaseRecord(generation=1, node="n", token="t", beat=0, time=t, acquired=t, timeout=timeout,
                           released=released)

    assert rec(now - 5, 30).state(now) == "live"
    assert rec(now - 60, 30).state(now) == "uncertain"
    assert rec(now - 500, 30).state(now) == "stale"
    assert rec(now - 5, 30, released=True).state(now) == "free"
    # forged: a heartbeat dated far in the future, an endless timeout, NaN
    assert rec(now + 10**9, 30).state(now) == "stale"
    assert rec(now - MAX_RECORD_TIMEOUT - 121, 1e30).state(now) == "stale"
    assert rec(now - MAX_RECORD_TIMEOUT + 1, 1e30).state(now) == "live"  # believed up to the cap
    assert rec(now - 200, float("nan")).state(now) == "stale"
    assert rec(now - 5, -1.0).state(now) == "uncertain"  # a negative timeout counts as 0
    assert rec(float("nan"), 30).state(now) == "stale"
    # the reader's own timeout, when given, is not capped: it is ours, not the record's
    assert rec(now - 2 * MAX_RECORD_TIMEOUT, 1e30).state(now, timeout=3 * MAX_RECORD_TIMEOUT) == "live"


def test_a_running_node_waits_out_a_future_heartbeat_instead_of_taking_it_at_once(store: PosixStore) -> None:
    # stale to a one-shot reader, but a node watches the bytes: two nodes with clocks minutes apart must not
    # each call the other's fresh lease ancient and take it in turn
    mono = Clock()
    store.put(lease_key(1), LeaseRecord(generation=1, node="ahead", token="t", beat=0, time=time.time() + 3600,
                                        acquired=time.time(), timeout=10).encode())
    b = Lease(store, "B", 10, clock=mono)
    assert b.tick() is False  # not ancient: dated in the future
    mono.t += 10
    assert b.tick() is True and b.generation == 2  # one timeout without a beat: taken as any silent holder


# -- LeaseRecord.state: the one place that says live / uncertain / stale / free ----------------------------

def test_record_state_by_the_writers_heartbeat_time() -> None:
    from fractfs.lease import FREE, LIVE, MAX_CLOCK_SKEW, STALE, UNCERTAIN

    rec = LeaseRecord(generation=1, node="n", token="t", beat=0, time=1000.0, acquired=1000.0, timeout=10.0)
    assert rec.state(1000.0) == LIVE
    assert rec.state(1010.0) == LIVE  # exactly the timeout: still live
    assert rec.state(1010.5) == UNCERTAIN
    assert rec.state(1010.0 + MAX_CLOCK_SKEW) == UNCERTAIN
    assert rec.state(1010.1 + MAX_CLOCK_SKEW) == STALE
    assert rec.state(1025.0, timeout=30.0) == LIVE  # the reader's own timeout wins when given
    assert rec.state(999.0) == LIVE  # a writer clock ahead of ours is not stale
    rec.released = True
    assert rec.state(1000.0) == FREE and rec.state(10**9) == FREE


def test_newest_reads_the_highest_generation(store: PosixStore) -> None:
    from fractfs.lease import newest

    assert newest(store) is None
    store.put(lease_key(1), record(1, "old"))
    store.put(lease_key(3), record(3, "current"))
    store.put("locks/not-a-lease", b"x")
    got = newest(store)
    assert got is not None and got[0] == lease_key(3) and got[1] is not None and got[1].node == "current"
    store.put(lease_key(4), b"torn")
    got = newest(store)
    assert got is not None and got[0] == lease_key(4) and got[1] is None


# -- LeaseKeeper: heartbeat, transitions, may_write, fence --------------------------------------------------

def test_keeper_tick_reports_transitions_and_never_raises(store: PosixStore) -> None:
    from fractfs.lease import LeaseKeeper

    events: list[str] = []
    a = Lease(store, "node-a", 10.0)
    ka = LeaseKeeper(a, where="s", on_acquired=lambda: events.append("acquired"),
                     on_lost=lambda: events.append("lost"))
    assert ka.tick() and events == ["acquired"]
    assert ka.tick() and events == ["acquired"]  # a renewal is not a transition
    b = Lease(store, "node-b", 10.0)
    kb = LeaseKeeper(b, where="the store")
    assert not kb.tick() and not kb.may_write(eager=True)
    assert "node-a holds the checkpoint lease on the store" in kb.standby_message()
    # the holder's store goes away: tick reports it and returns instead of raising
    real = store.list
    store.list = lambda prefix="": (_ for _ in ()).throw(StoreError("down (test)"))  # type: ignore[method-assign]
    try:
        assert ka.tick() is True  # still valid for a while: the last renewal is recent
        assert ka.failing
    finally:
        store.list = real  # type: ignore[method-assign]
    assert ka.tick() and not ka.failing
    a.release()
    assert kb.tick() and b.held
    ka.tick()
    assert events[-1] == "acquired"  # a released: it did not hold it any more, so no "lost" from a release


def test_keeper_may_write_and_fence_with_an_overdue_renewal(store: PosixStore) -> None:
    from fractfs.errors import LeaseLost
    from fractfs.lease import LeaseKeeper

    clock = Clock()
    lease = Lease(store, "node-a", 10.0, clock=clock)
    keeper = LeaseKeeper(lease, where="s")
    assert keeper.may_write(eager=True)
    keeper.fence()  # valid: no exception
    clock.t += 6.0  # past timeout / 2 since the last renewal: the fence renews once (issue 11, point 5)
    keeper.fence()
    assert lease.valid() and lease.remaining() == pytest.approx(5.0)
    clock.t += 6.0
    real = store.list
    store.list = lambda prefix="": (_ for _ in ()).throw(StoreError("down (test)"))  # type: ignore[method-assign]
    try:
        with pytest.raises(LeaseLost):
            keeper.fence()  # overdue and the renewal fails: refused
        with pytest.raises(LeaseLost, match="cannot confirm"):
            keeper.may_write(eager=True)
    finally:
        store.list = real  # type: ignore[method-assign]
    assert keeper.may_write(eager=True)  # renewed on the spot once the store answers
    keeper.fence()


def test_keeper_thread_renews_and_beating_covers_a_long_checkpoint(store: PosixStore) -> None:
    from fractfs.lease import LeaseKeeper

    lease = Lease(store, "node-a", 0.4)
    keeper = LeaseKeeper(lease, where="s")
    assert keeper.tick()
    with keeper.beating():  # no thread: a temporary heartbeat keeps it valid past timeout / 2
        time.sleep(0.6)
        assert lease.valid()
    time.sleep(0.3)
    assert not lease.valid()  # nobody renews it any more
    keeper.start()
    try:
        assert keeper.running
        time.sleep(0.6)
        assert lease.valid() and lease.held
    finally:
        keeper.stop()
    assert not keeper.running
