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
    # docs/format.md §10: decimal, 12 digits; anything else under locks/ is not a lease generation
    assert lease_key(7) == "locks/lease.000000000007"
    assert parse_generation("locks/lease.000000000007") == 7
    for foreign in ("locks/lease.7", "locks/lease.abcdefghijkl", "locks/lease.0000000000071", "locks/other"):
        assert parse_generation(foreign) is None, foreign


def test_a_record_as_docs_format_md_shows_it_decodes() -> None:
    # the wire format (docs/format.md §10) does not change with the code: a literal version-1 record
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
    from fractfs.lease import MAX_RECORD_TIMEOUT, heartbeat_state

    now = 1_700_000_000.0

    def rec(t: float, timeout: float, released: bool = False) -> LeaseRecord:
        return LeaseRecord(generation=1, node="n", token="t", beat=0, time=t, acquired=t, timeout=timeout,
                           released=released)

    assert heartbeat_state(rec(now - 5, 30), now, 120)[0] == "live"
    assert heartbeat_state(rec(now - 60, 30), now, 120)[0] == "uncertain"
    assert heartbeat_state(rec(now - 500, 30), now, 120)[0] == "stale"
    assert heartbeat_state(rec(now - 5, 30, released=True), now, 120)[0] == "free"
    # forged: a heartbeat dated far in the future, an endless timeout, NaN
    assert heartbeat_state(rec(now + 10**9, 30), now, 120)[0] == "stale"
    assert heartbeat_state(rec(now - MAX_RECORD_TIMEOUT - 121, 1e30), now, 120)[0] == "stale"
    assert heartbeat_state(rec(now - 200, float("nan")), now, 120)[0] == "stale"
    assert heartbeat_state(rec(float("nan"), 30), now, 120)[0] == "stale"
