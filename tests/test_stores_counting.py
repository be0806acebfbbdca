"""Progress of long reads: CountingStore counts the bytes read through it, blob_total gives the total."""
from __future__ import annotations

import threading
from pathlib import Path

from operator_support import make_app, take_snapshot

from fractfs import snapshot
from fractfs.snapshot import catalog
from fractfs.snapshot.maint import blob_total
from fractfs.stores import PosixStore
from fractfs.stores.counting import CountingStore
from fractfs.stores.open import open_store


def test_counts_every_read_path_not_writes(tmp_path: Path) -> None:
    inner = PosixStore(str(tmp_path / "s"))
    c = CountingStore(inner)
    assert c.url == inner.url
    c.put("a", b"12345")
    c.put_file("b", _file(tmp_path / "f", b"x" * 100))
    assert c.read_bytes == 0
    assert c.get("a") == b"12345" and c.read_bytes == 5
    assert c.get_range("b", 10, 20) == b"x" * 20 and c.read_bytes == 25
    c.get_file("b", tmp_path / "back")
    assert c.read_bytes == 125 and (tmp_path / "back").read_bytes() == b"x" * 100
    assert sorted(k for k, _ in c.list()) == ["a", "b"] and c.size("a") == 5
    c.delete("a")
    assert inner.size("a") is None


def test_counts_from_many_threads(tmp_path: Path) -> None:
    c = CountingStore(PosixStore(str(tmp_path / "s")))
    c.put("k", b"y" * 1000)
    threads = [threading.Thread(target=lambda: [c.get("k") for _ in range(50)]) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.read_bytes == 8 * 50 * 1000


def test_batch_calls_only_when_the_inner_store_has_them(tmp_path: Path) -> None:
    inner = PosixStore(str(tmp_path / "s"))
    c = CountingStore(inner)
    has_batch = callable(getattr(inner, "get_many", None))
    assert callable(getattr(c, "get_many", None)) == has_batch
    if has_batch:
        c.put("a", b"aa")
        c.put("b", b"bbb")
        assert c.get_many(["a", "b"]) == [b"aa", b"bbb"] and c.read_bytes == 5  # type: ignore[attr-defined]


def test_verify_through_it_reads_what_blob_total_announces(tmp_path: Path) -> None:
    cfg = make_app(tmp_path)
    (cfg.root / "a.txt").write_bytes(b"a" * 3000)
    first = take_snapshot(cfg)
    (cfg.root / "b.txt").write_bytes(b"b" * 5000)
    second = take_snapshot(cfg)
    store = open_store(cfg)
    every = blob_total(store, None)
    one, two = blob_total(store, [first]), blob_total(store, [second])
    assert 0 < one < two <= every
    assert blob_total(store, ["not-an-id"]) == 0
    c = CountingStore(store)
    res = snapshot.verify(c, second)
    assert res.ok and c.read_bytes >= two  # the packs, plus the manifests it loads
    newest, _ = catalog.newest_valid(store)
    assert newest is not None and newest.id == second


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
