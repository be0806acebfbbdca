"""The stat cache (snapshot/statcache.py): named rows, load/save, damage handling, the state lock, seeding."""
from __future__ import annotations

import os
import threading
import time
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

    slow_write = statcache.write_raw

    def write_raw(*a: Any, **k: Any) -> None:
        time.sleep(0.5)  # the seed is still running when the checkpoint below starts
        slow_write(*a, **k)

    monkeypatch.setattr(statcache, "write_raw", write_raw)
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
