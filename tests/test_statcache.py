"""The stat cache (snapshot/statcache.py): named rows, load/save, damage handling, the state lock, seeding."""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from fractfs.snapshot import checkpoint, restore, statcache
from fractfs.snapshot.format import FILE, Entry, Manifest, encode_manifest
from fractfs.snapshot.statcache import CacheHeader, CacheRow, StateLock
from fractfs.stores.posix import PosixStore


def _row(sha: str = "ab" * 32, facts: tuple[int, ...] | None = (0o100644, 3, 5, 7, 9)) -> CacheRow:
    return CacheRow.of(Entry("root", "a.txt", FILE, mode=0o644, size=3, mtime_ns=5, sha256=sha, pack="p" * 64,
                             offset=12), facts, None)


def test_row_round_trips_through_the_file_with_its_field_names(tmp_path: Path) -> None:
    row = _row()
    assert row.entry("root", "a.txt") == Entry("root", "a.txt", FILE, mode=0o644, size=3, mtime_ns=5,
                                               sha256="ab" * 32, pack="p" * 64, offset=12)
    hdr = CacheHeader(snapshot="000000000001-x", snapshot_size=10, digest="d", files=1, bytes=3)
    statcache.write_cache(tmp_path, hdr, {"root": {"a.txt": row}})
    got, at = statcache.read_header(tmp_path)
    assert got is not None and got.snapshot == "000000000001-x" and got.snapshot_size == 10
    assert got.digest == "d" and got.files == 1 and got.bytes == 3 and at > 0
    rows = statcache.read_rows(tmp_path, got, at)
    assert rows is not None
    back = rows["root"]["a.txt"]
    assert isinstance(back, CacheRow) and back == row
    assert back.facts == (0o100644, 3, 5, 7, 9) and back.sha256 == "ab" * 32 and back.side is None


def test_damaged_payload_or_header_is_ignored_not_trusted(tmp_path: Path) -> None:
    statcache.write_cache(tmp_path, CacheHeader(snapshot="s"), {"root": {"a.txt": _row()}})
    path = tmp_path / statcache.CACHE_FILE
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # a flipped bit in the payload
    path.write_bytes(bytes(data))
    hdr, at = statcache.read_header(tmp_path)
    assert hdr is not None
    assert statcache.read_rows(tmp_path, hdr, at) is None
    path.write_bytes(b"not json\n")
    assert statcache.read_header(tmp_path) == (None, 0)
    statcache.drop_cache(tmp_path)
    statcache.drop_cache(tmp_path)  # already gone is fine
    assert not path.exists() and statcache.read_header(tmp_path) == (None, 0)


def test_state_lock_excludes_a_second_holder(tmp_path: Path) -> None:
    order: list[str] = []
    entered = threading.Event()

    def second() -> None:
        entered.set()
        with StateLock(tmp_path):
            order.append("second")

    with StateLock(tmp_path):
        t = threading.Thread(target=second)
        t.start()
        entered.wait(5)
        time.sleep(0.2)
        order.append("first")
    t.join(5)
    assert order == ["first", "second"]


def test_seed_after_restore_lets_the_next_checkpoint_skip_reading(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("hello")
    (src / "b.txt").write_text("world")
    store = PosixStore(str(tmp_path / "store"))
    res = checkpoint(store, {"root": src}, None, state_dir=tmp_path / "state1")
    assert res.snapshot_id
    dst = tmp_path / "dst"
    dst.mkdir()
    restore(store, {"root": dst}, state_dir=tmp_path / "state2")
    hdr, at = statcache.read_header(tmp_path / "state2")
    assert hdr is not None and hdr.snapshot == res.snapshot_id and hdr.files == 2
    rows = statcache.read_rows(tmp_path / "state2", hdr, at)
    assert rows is not None
    st = os.lstat(dst / "a.txt")
    assert rows["root"]["a.txt"].facts == statcache.stat_facts(st)
    # nothing changed since the restore: no new snapshot
    again = checkpoint(store, {"root": dst}, None, state_dir=tmp_path / "state2")
    assert again.snapshot_id is None and again.parent == res.snapshot_id


def test_seed_lists_every_entry_and_facts_only_where_given(tmp_path: Path) -> None:
    entries = [Entry("root", "a", FILE, size=1, sha256="a" * 64, object="a" * 64),
               Entry("root", "b", FILE, size=1, sha256="b" * 64, object="b" * 64)]
    m = Manifest(seq=1, created_ns=1, node="n", parent=None, entries=entries)
    m.name = encode_manifest(m)[0]
    statcache.seed(tmp_path / "s", m, lambda e: (1, 2, 3, 4, 5) if e.path == "a" else None)
    hdr, at = statcache.read_header(tmp_path / "s")
    assert hdr is not None and hdr.snapshot == m.id and hdr.files == 2 and hdr.digest is None
    rows = statcache.read_rows(tmp_path / "s", hdr, at)
    assert rows is not None and set(rows["root"]) == {"a", "b"}
    assert rows["root"]["a"].facts == (1, 2, 3, 4, 5) and rows["root"]["b"].facts is None


def test_a_cache_written_in_another_row_layout_is_ignored_not_fatal(tmp_path: Path) -> None:
    """Another fractfs version may have left rows of another width in the same scratch: they are dropped
    (files re-hashed), never read into wrong fields and never an exception out of a checkpoint."""
    row = CacheRow._make(("f", 0o644, 2, 1, "ab" * 32, "", 0, "", "", False, (), None, None))
    statcache.write_raw(tmp_path, CacheHeader(), {"root": {"a.txt": tuple(row) + ("extra",)}})
    hdr, at = statcache.read_header(tmp_path)
    assert hdr is not None
    assert statcache.read_rows(tmp_path, hdr, at) is None
    statcache.write_raw(tmp_path, CacheHeader(), {"root": {"a.txt": tuple(row)}})
    hdr, at = statcache.read_header(tmp_path)
    assert hdr is not None and statcache.read_rows(tmp_path, hdr, at) == {"root": {"a.txt": row}}


def test_a_fork_during_a_checkpoint_does_not_keep_the_state_lock(tmp_path: Path) -> None:
    """Web servers fork workers from the process that called init(); one forked while a checkpoint holds the
    state-dir lock inherits the lock's file descriptor. flock() locks belong to the open file, so closing our
    descriptor alone left the lock held by the child for its whole life: every later checkpoint blocked."""
    sdir = tmp_path / "state"
    sdir.mkdir()
    with StateLock(sdir):
        pid = os.fork()
        if pid == 0:  # a worker that lives on (it never touches the lock)
            time.sleep(5)
            os._exit(0)
    try:
        got = threading.Event()

        def take() -> None:
            with StateLock(sdir):
                got.set()

        threading.Thread(target=take, daemon=True).start()
        assert got.wait(3), "the state lock is still held by the forked child"
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def test_a_checkpoint_waits_for_the_stat_cache_a_restore_writes_in_the_background(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """init() returns once the files are in place and writes the stat cache on a thread. A checkpoint that
    starts before that thread is done must wait for the cache, not find none and re-read every file."""
    from fractfs.snapshot import catalog, diff

    src = tmp_path / "app"
    for i in range(30):
        (src / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        (src / f"d{i % 3}" / f"f{i}").write_text(f"content {i}")
    store = PosixStore(tmp_path / "store")
    checkpoint(store, {"root": src}, lambda *_: True, state_dir=tmp_path / "state")

    slow_rows = statcache._seed_rows

    def seed_rows(*a: Any, **k: Any) -> Any:
        time.sleep(0.5)  # the seed is still running when the checkpoint below starts
        return slow_rows(*a, **k)

    monkeypatch.setattr(statcache, "_seed_rows", seed_rows)
    dst = tmp_path / "fresh"
    out = restore(store, {"root": dst}, state_dir=tmp_path / "s2", seed_in_background=True)
    assert len(out.restored) == 30 and out.seeding is not None
    out.seeding.start()  # the caller starts it (init() does once its own threads run)

    def boom(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("the checkpoint did not wait for the restore's stat cache")

    monkeypatch.setattr(diff, "compare", boom)
    monkeypatch.setattr(catalog, "newest_valid", boom)
    res = checkpoint(store, {"root": dst}, lambda *_: True, state_dir=tmp_path / "s2")
    assert res.snapshot_id is None and res.files == 30
    assert not out.seeding.is_alive()
# -- the payload in batches (cache version 3) ------------------------------------------------------------

def _plain_row(i: int) -> tuple[object, ...]:
    return ("file", 0o644, i, 7, "ab" * 32, "", 0, "", "", False, (), (0o100644, i, 7, 1000 + i, 9), None)


def _frames(path: Path) -> list[int]:
    """Byte lengths of the payload's batches, read the way the layout says (docs/format.md)."""
    data = path.read_bytes()
    at = data.index(b"\n") + 1
    out = []
    while at < len(data):
        n = int.from_bytes(data[at:at + 4], "little")
        out.append(n)
        at += 4 + n
    assert at == len(data)
    return out


def test_payload_is_written_and_read_in_batches(tmp_path: Path) -> None:
    n = 2 * statcache.BATCH_ROWS + 5
    raw = {"root": {f"d/f{i}": _plain_row(i) for i in range(n)}, "cache": {"x": _plain_row(1)}}
    statcache.write_raw(tmp_path, CacheHeader(snapshot="s", files=n + 1), raw)
    assert len(_frames(tmp_path / statcache.CACHE_FILE)) == 4  # three batches of "root", one of "cache"
    hdr, at = statcache.read_header(tmp_path)
    assert hdr is not None and hdr.files == n + 1
    assert statcache.read_raw(tmp_path, hdr, at) == raw
    rows = statcache.read_rows(tmp_path, hdr, at)
    assert rows is not None and rows["root"]["d/f7"].facts == (0o100644, 7, 7, 1007, 9)


def test_a_damaged_or_cut_batch_makes_the_cache_ignored_not_trusted(tmp_path: Path) -> None:
    raw = {"root": {f"f{i}": _plain_row(i) for i in range(3 * statcache.BATCH_ROWS)}}
    statcache.write_raw(tmp_path, CacheHeader(snapshot="s"), raw)
    path = tmp_path / statcache.CACHE_FILE
    good = path.read_bytes()
    hdr, at = statcache.read_header(tmp_path)
    assert hdr is not None and statcache.read_raw(tmp_path, hdr, at) == raw
    first = _frames(path)[0]
    middle = at + 4 + first + 4 + 100  # inside the second batch
    for damaged in (good[:middle] + bytes([good[middle] ^ 1]) + good[middle + 1:],  # a flipped bit
                    good[:-10],  # cut short
                    good[:at + 4 + first]):  # whole batches missing
        path.write_bytes(damaged)
        assert statcache.read_raw(tmp_path, hdr, at) is None
        assert statcache.read_rows(tmp_path, hdr, at) is None
    # a payload whose checksum matches but whose batches do not parse (another writer's bug): still ignored
    for body in (good[at:at + 4 + first] + b"\x05\x00\x00\x00ab",  # ends inside a batch
                 (3).to_bytes(4, "little") + __import__("marshal").dumps([1])):  # not (area, rows)
        path.write_bytes(good[:at] + body)
        hdr.payload_sha256 = hashlib.sha256(body).hexdigest()
        assert statcache.read_raw(tmp_path, hdr, at) is None


def test_a_cache_of_the_previous_version_is_ignored(tmp_path: Path) -> None:
    """Version 2 stored the rows as one marshal'd dict: read as batches it would be nonsense, so its header is
    refused and the files are read again."""
    payload = __import__("marshal").dumps({"root": {"a": _plain_row(1)}}, 4)
    head = json.dumps({"magic": statcache.CACHE_MAGIC, "v": 2, "snapshot": "s", "files": 1,
                       "payload_sha256": hashlib.sha256(payload).hexdigest()}).encode()
    (tmp_path / statcache.CACHE_FILE).write_bytes(head + b"\n" + payload)
    assert statcache.read_header(tmp_path) == (None, 0)


def test_header_written_last_may_take_counts_known_only_at_the_end(tmp_path: Path) -> None:
    hdr = CacheHeader(snapshot="000000000001-" + "a" * 64, snapshot_size=5)
    with statcache.writing(tmp_path, hdr) as put:
        put("root", {"a": _plain_row(1)})
        hdr.files, hdr.bytes, hdr.expect, hdr.digest = 10**12, 2**80, "e" * 64, "d" * 64
    got, at = statcache.read_header(tmp_path)
    assert got == hdr and statcache.read_raw(tmp_path, got, at) == {"root": {"a": _plain_row(1)}}
    # a field that was not given room must not grow: the writer refuses, the old cache stays, no temp left
    before = (tmp_path / statcache.CACHE_FILE).read_bytes()
    short = CacheHeader(snapshot="s")
    with pytest.raises(ValueError, match="room"), statcache.writing(tmp_path, short) as put:
        put("root", {"b": _plain_row(2)})
        short.snapshot = "s" * 1000
    assert (tmp_path / statcache.CACHE_FILE).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [statcache.CACHE_FILE]


def test_write_header_copies_the_payload_and_refuses_one_that_changed(tmp_path: Path) -> None:
    raw = {"root": {f"f{i}": _plain_row(i) for i in range(5000)}}
    statcache.write_raw(tmp_path, CacheHeader(snapshot="s"), raw)
    hdr, at = statcache.read_header(tmp_path)
    assert hdr is not None
    hdr.digest = "d" * 64
    statcache.write_header(tmp_path, hdr, at)
    got, at2 = statcache.read_header(tmp_path)
    assert got is not None and got.digest == "d" * 64 and statcache.read_raw(tmp_path, got, at2) == raw
    before = (tmp_path / statcache.CACHE_FILE).read_bytes()
    got.payload_sha256 = "0" * 64  # as if another writer had replaced the rows meanwhile
    with pytest.raises(OSError, match="changed while in use"):
        statcache.write_header(tmp_path, got, at2)
    assert (tmp_path / statcache.CACHE_FILE).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [statcache.CACHE_FILE]


def test_seed_writes_rows_as_it_makes_them(tmp_path: Path) -> None:
    """A cold start seeds a row per file: the seed must hold one batch at a time, never every row and the
    whole encoded payload (at a million files that was the restore's peak memory, issue 13)."""
    n = 60_000
    entries = [Entry("root", f"d{i // 40:04d}/f{i:06d}", FILE, mode=0o644, mtime_ns=1_700_000_000_000_000_000 + i,
                     sha256="e" * 64) for i in range(n)]
    m = Manifest(seq=1, created_ns=1, node="n", parent=None, entries=entries)
    m.name = encode_manifest(m)[0]
    facts = statcache.FactsTable(n)
    for i in range(n):
        facts.set(i, (0o100644, 0, 1_700_000_000_000_000_000 + i, 10_000_000 + i, 1_700_000_000_000_000_000 + i))
    tracemalloc.start()
    try:
        statcache.seed(tmp_path / "s", m, None, facts=facts, snapshot_size=1)
        _cur, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    size = (tmp_path / "s" / statcache.CACHE_FILE).stat().st_size
    assert size > 4 << 20
    # before: every row and the payload at once, about 4x the file (30 MB here); now a batch of rows, its
    # encoding and the expect digest's buffer, about 2 MB whatever the number of entries
    assert peak < size // 2, (peak, size)
    hdr, at = statcache.read_header(tmp_path / "s")
    assert hdr is not None and hdr.files == n and hdr.expect and len(_frames(tmp_path / "s" / statcache.CACHE_FILE)) > 1
    rows = statcache.read_rows(tmp_path / "s", hdr, at)
    assert rows is not None and len(rows["root"]) == n
    assert rows["root"]["d0010/f000400"].facts == facts.get(400)


def test_facts_table_keeps_facts_by_position_and_what_arrays_cannot_hold(tmp_path: Path) -> None:
    t = statcache.FactsTable(4)
    assert len(t) == 4 and [t.get(i) for i in range(4)] == [None] * 4
    t.set(0, (0o100644, 3, -5, 2**64 - 1, 9))  # inode numbers are unsigned 64-bit, times may be negative
    t.set(1, (0o100644, 3, 2**70, 1, 9))  # a timestamp no 64-bit field holds
    p = tmp_path / "f"
    p.write_text("x")
    st = os.lstat(p)
    t.set_stat(2, st)
    assert t.get(0) == (0o100644, 3, -5, 2**64 - 1, 9) and t.get(1) == (0o100644, 3, 2**70, 1, 9)
    assert t.get(2) == statcache.stat_facts(st) and t.get(3) is None
    t.clear(1)
    t.clear(2)
    assert t.get(1) is None and t.get(2) is None and t.odd == {}
