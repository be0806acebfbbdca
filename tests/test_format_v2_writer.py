"""Checkpoints write format v2 (issue 12): chunks, v2 packs, v2 manifests, dedup, and the way from a v1 store.

Multi-chunk files are read back here straight from the store (:func:`_content`: every chunk fetched by range
and checked against its SHA-256), so these tests do not depend on the restorer.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import sqlite3
import stat
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from test_snapshot_support import everything, make_store, tree, write

from fractfs.errors import StoreError
from fractfs.snapshot import capture as capture_mod
from fractfs.snapshot import catalog, checkpoint, chunker, manifest2, pack2, restore
from fractfs.snapshot.format import (
    DIR,
    FILE,
    SYMLINK,
    Entry,
    Manifest,
    encode_manifest,
    object_key,
    pack_key,
    blob_id_from_key,
)
from fractfs.stores import PosixStore

MiB = 1 << 20


class CountingPuts(PosixStore):
    """A PosixStore that counts the bytes written under ``packs/`` (what a checkpoint uploaded for content)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.pack_bytes = 0
        self.lock = threading.Lock()

    def put(self, key: str, data: bytes, *, exclusive: bool = False) -> None:
        super().put(key, data, exclusive=exclusive)
        if key.startswith("packs/"):
            with self.lock:
                self.pack_bytes += len(data)

    def take(self) -> int:
        with self.lock:
            n, self.pack_bytes = self.pack_bytes, 0
        return n


def _rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _newest(store: PosixStore) -> Manifest:
    m, _ = catalog.newest_valid(store)
    assert m is not None
    return m


def _entries(store: PosixStore) -> dict[str, Entry]:
    return {e.path: e for e in _newest(store).entries if e.area == "root"}


def _content(store: PosixStore, e: Entry) -> bytes:
    """A file's bytes as the store holds them, every chunk checked against its digest."""
    parts = []
    for ref in e.refs():
        data = store.get_range(pack_key(ref.pack), ref.offset, ref.length)
        assert hashlib.sha256(data).hexdigest() == ref.sha256, ref
        parts.append(data)
    out = b"".join(parts)
    assert len(out) == e.size
    return out


def _doc(store: PosixStore) -> dict[str, object]:
    name = _newest(store).name
    assert name is not None
    doc: dict[str, object] = json.loads(gzip.decompress(store.get(name.key)))
    return doc


def _areas(tmp_path: Path, name: str = "app") -> dict[str, Path]:
    return {"root": tmp_path / name}


# -- what a checkpoint writes ---------------------------------------------------------------------------------

def test_small_files_are_one_slice_each_in_a_v2_pack_under_a_v2_manifest(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    src = _areas(tmp_path)
    write(src["root"], "a.txt", "hello")
    write(src["root"], "sub/b.bin", _rand(100_000, 1), mode=0o600)
    write(src["root"], "empty", b"")
    os.symlink("a.txt", src["root"] / "link")
    res = checkpoint(store, src, everything, state_dir=tmp_path / "state")
    assert sorted(res.stored) == ["root:a.txt", "root:empty", "root:sub/b.bin"]
    doc = _doc(store)
    assert doc["version"] == 2 and doc["chunking"] == manifest2.CHUNKING
    ents = _entries(store)
    assert _newest(store).version == 2
    for rel, data in [("a.txt", b"hello"), ("sub/b.bin", (src["root"] / "sub/b.bin").read_bytes())]:
        e = ents[rel]
        # one chunk: a pack slice like v1's, its id the SHA-256 of the bytes (no second hash)
        assert e.chunks == () and e.pack and e.sha256 == hashlib.sha256(data).hexdigest()
        assert _content(store, e) == data
    assert ents["empty"].size == 0 and not ents["empty"].stored
    assert ents["link"].type == SYMLINK and ents["sub"].type == DIR
    # every pack is a v2 pack whose key is the SHA-256 of its index
    for key, size in store.list("packs/"):
        blob = store.get(key)
        index_len = pack2.read_trailer(blob[-pack2.TRAILER.size:], size)
        index = blob[-pack2.TRAILER.size - index_len:-pack2.TRAILER.size]
        members = pack2.parse_index(index, size, blob_id_from_key(key) or "")
        assert all(hashlib.sha256(blob[m.offset:m.offset + m.length]).digest() == m.sha256 for m in members)
    dst = _areas(tmp_path, "fresh")
    restore(store, dst)  # one-slice files restore with any reader of v1 slices
    assert tree(dst["root"]) == tree(src["root"])
    assert not list(store.list("objects/"))


def test_a_file_read_into_memory_is_cut_where_the_chunker_cuts(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    src = _areas(tmp_path)
    data = _rand(5 * MiB + 123, 2)
    write(src["root"], "mid.bin", data)
    checkpoint(store, src, everything, state_dir=tmp_path / "state")  # 5 MiB: below large_file (8 MiB)
    e = _entries(store)["mid.bin"]
    assert [(c.length) for c in e.chunks] == [n for _o, n in chunker.cut_points(data)]
    assert len(e.chunks) >= 3 and e.sha256 == manifest2.content_id(e.chunks)
    assert _content(store, e) == data


@pytest.mark.parametrize("size, large_file", [(64 * MiB, 8 * MiB), (48 * MiB, 64 * MiB)],
                         ids=["streamed", "in-memory"])
def test_a_4k_edit_in_the_middle_of_a_large_file_uploads_about_one_chunk(
    tmp_path: Path, size: int, large_file: int
) -> None:
    store = CountingPuts(tmp_path / "store")
    src = _areas(tmp_path)
    sd = tmp_path / "state"
    p = write(src["root"], "big.bin", _rand(size, 3))
    first = checkpoint(store, src, everything, state_dir=sd, large_file=large_file)
    assert store.take() >= size and first.uploaded_bytes >= size
    with open(p, "r+b") as f:
        f.seek(size // 2 + 1000)
        f.write(_rand(4096, 4))
    res = checkpoint(store, src, everything, state_dir=sd, large_file=large_file)
    sent = store.take()
    assert res.stored == ["root:big.bin"]
    assert 4096 < sent < 4 * MiB, sent  # the chunk(s) around the edit, not the file
    assert res.uploaded_bytes < 4 * MiB + 100_000  # plus the manifest
    e = _entries(store)["big.bin"]
    assert len(e.chunks) > 48 and _content(store, e) == p.read_bytes()


def test_an_append_uploads_the_last_chunks_only(tmp_path: Path) -> None:
    store = CountingPuts(tmp_path / "store")
    src = _areas(tmp_path)
    sd = tmp_path / "state"
    p = write(src["root"], "log.bin", _rand(40 * MiB, 5))
    checkpoint(store, src, everything, state_dir=sd)
    before = {c.sha256 for c in _entries(store)["log.bin"].chunks}
    store.take()
    with open(p, "ab") as f:
        f.write(_rand(MiB, 6))
    checkpoint(store, src, everything, state_dir=sd)
    assert store.take() < 4 * MiB
    after = _entries(store)["log.bin"].chunks
    assert sum(c.sha256 not in before for c in after) <= 4  # the old last chunk, recut, and the new ones
    assert _content(store, _entries(store)["log.bin"]) == p.read_bytes()


def test_equal_chunks_are_stored_once_across_files_and_snapshots(tmp_path: Path) -> None:
    store = CountingPuts(tmp_path / "store")
    src = _areas(tmp_path)
    sd = tmp_path / "state"
    a = _rand(20 * MiB, 7)
    write(src["root"], "a.bin", a)
    write(src["root"], "copy-of-a.bin", a)  # the same file twice (both streamed: large_file 8 MiB)
    write(src["root"], "mid-copy.bin", a[: 6 * MiB])  # in memory; its chunks are a's first ones (but the last)
    checkpoint(store, src, everything, state_dir=sd)
    assert store.take() < 20 * MiB + 3 * MiB
    ents = _entries(store)
    assert ents["a.bin"].chunks == ents["copy-of-a.bin"].chunks
    # a later snapshot: a new file holding a's bytes, and a's bytes inside a bigger file
    write(src["root"], "later.bin", a)
    write(src["root"], "wrapped.bin", a + _rand(MiB, 8))
    res = checkpoint(store, src, everything, state_dir=sd)
    assert sorted(res.stored) == ["root:later.bin", "root:wrapped.bin"]
    assert store.take() < 4 * MiB  # a's tail chunk, recut, and the new bytes
    ents = _entries(store)
    assert ents["later.bin"].chunks == ents["a.bin"].chunks
    assert _content(store, ents["wrapped.bin"]) == a + (src["root"] / "wrapped.bin").read_bytes()[len(a):]


def test_a_large_file_changing_while_it_is_chunked_is_busy_and_not_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(tmp_path)
    src = _areas(tmp_path)
    sd = tmp_path / "state"
    old = _rand(12 * MiB, 9)
    p = write(src["root"], "hot.bin", old)
    write(src["root"], "new-hot.bin", _rand(12 * MiB, 10))
    write(src["root"], "calm.txt", "c1")
    checkpoint(store, src, everything, state_dir=sd)
    write(src["root"], "calm.txt", "c2")
    write(src["root"], "newer-hot.bin", _rand(12 * MiB, 11))
    p.write_bytes(_rand(12 * MiB, 12))
    writes = iter(range(10**6))

    def scribble(path: str) -> None:  # another version after every read of the two hot files
        if "hot" in os.path.basename(path) and "new-hot" not in path:
            with open(path, "r+b") as f:
                f.seek(5 * MiB)
                f.write(b"%08d" % next(writes))

    monkeypatch.setattr(capture_mod, "_after_read_hook", scribble)
    res = checkpoint(store, src, everything, state_dir=sd)
    monkeypatch.setattr(capture_mod, "_after_read_hook", None)
    assert sorted(res.skipped_busy) == ["root:hot.bin", "root:newer-hot.bin"], res
    assert res.stored == ["root:calm.txt"]
    ents = _entries(store)
    assert "newer-hot.bin" not in ents  # new: left out
    assert _content(store, ents["hot.bin"]) == old  # changed: its previous version is kept
    assert _content(store, ents["calm.txt"]) == b"c2"


def test_a_large_database_is_chunked_from_its_backup_and_a_page_change_costs_about_a_chunk(tmp_path: Path) -> None:
    store = CountingPuts(tmp_path / "store")
    src = _areas(tmp_path)
    sd = tmp_path / "state"
    src["root"].mkdir(parents=True)
    db = src["root"] / "app.db"
    con = sqlite3.connect(db)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
    rng = random.Random(13)
    con.executemany("INSERT INTO t VALUES (?, ?)", [(i, rng.randbytes(3000)) for i in range(8000)])
    con.commit()
    checkpoint(store, src, everything, state_dir=sd, large_file=2 * MiB)
    assert store.take() > 20 * MiB
    con.execute("UPDATE t SET v = ? WHERE id = 4000", (b"x" * 3000,))
    con.commit()
    res = checkpoint(store, src, everything, state_dir=sd, large_file=2 * MiB)
    con.close()
    assert res.stored == ["root:app.db"]
    assert store.take() < 6 * MiB  # the header page's chunk and the changed page's (of ~24 MiB)
    e = _entries(store)["app.db"]
    assert e.sqlite and len(e.chunks) > 10
    back = tmp_path / "back.db"
    back.write_bytes(_content(store, e))
    got = sqlite3.connect(back)
    assert got.execute("SELECT v FROM t WHERE id = 4000").fetchone()[0] == b"x" * 3000
    assert got.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    got.close()


def test_a_large_file_is_never_held_in_memory_whole(tmp_path: Path) -> None:
    """Packs are sealed and sent while the file is read, and reading waits for the store: memory stays at a
    few packs plus the chunker's buffers, whatever the file's size and however slow the store."""

    class Slow(PosixStore):
        def put(self, key: str, data: bytes, *, exclusive: bool = False) -> None:
            time.sleep(0.01)
            super().put(key, data, exclusive=exclusive)

    store = Slow(tmp_path / "store")
    src = _areas(tmp_path)
    p = write(src["root"], "huge.bin", b"")
    with open(p, "wb") as f:
        for i in range(12):
            f.write(_rand(16 * MiB, 100 + i))  # 192 MiB
    tracemalloc.start()
    try:
        res = checkpoint(store, src, everything, state_dir=tmp_path / "state", pack_size=2 * MiB, transfers=2)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert res.stored == ["root:huge.bin"]
    # chunker: 3 x 8 MiB buffers; packer: 4 sealed packs of <= 4 MiB waiting, one filling; one being joined
    assert peak < 60 * MiB, peak / MiB


def test_under_a_deadline_small_files_do_not_wait_behind_a_large_one(tmp_path: Path) -> None:
    """The bounded final checkpoint: the small files' pack is sealed before a large file is chunked, so a
    large file whose packs cannot all land before the cutoff does not take the small ones down with it."""

    class SlowBigPacks(PosixStore):
        def put(self, key: str, data: bytes, *, exclusive: bool = False) -> None:
            if key.startswith("packs/") and len(data) > MiB:
                time.sleep(2.5)
            super().put(key, data, exclusive=exclusive)

    store = SlowBigPacks(tmp_path / "store")
    src = _areas(tmp_path)
    sd = tmp_path / "state"
    write(src["root"], "small", "s1")
    write(src["root"], "z-big", b"")
    checkpoint(store, src, everything, state_dir=sd)
    write(src["root"], "small", "s2")
    write(src["root"], "z-big", _rand(9 * MiB, 14))
    t0 = time.monotonic()
    res = checkpoint(store, src, everything, state_dir=sd, deadline=t0 + 1.5)
    assert time.monotonic() - t0 < 1.5
    assert res.stored == ["root:small"] and res.missed_deadline == ["root:z-big"], res
    ents = _entries(store)
    assert _content(store, ents["small"]) == b"s2" and ents["z-big"].size == 0


# -- from a version 1 store ------------------------------------------------------------------------------------

def _v1_snapshot(store: PosixStore, top: Path, large: int, seq: int = 1) -> Manifest:
    """What fractfs 0.3 wrote for the tree at ``top``: files below ``large`` in one v1 pack (id = SHA-256 of
    the pack's bytes), larger ones as ``objects/``, a version 1 manifest."""
    entries: list[Entry] = []
    pack: list[bytes] = []
    slices: list[tuple[str, os.stat_result, int, str]] = []
    off = 0
    for dirpath, dirnames, filenames in os.walk(top):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            rel = p.relative_to(top).as_posix()
            st = os.lstat(p)
            if stat.S_ISDIR(st.st_mode):
                entries.append(Entry("root", rel, DIR, mode=stat.S_IMODE(st.st_mode)))
            elif stat.S_ISLNK(st.st_mode):
                entries.append(Entry("root", rel, SYMLINK, mtime_ns=st.st_mtime_ns, target=os.readlink(p)))
            else:
                data = p.read_bytes()
                sha = hashlib.sha256(data).hexdigest()
                if len(data) >= large:
                    store.put(object_key(sha), data)
                    entries.append(Entry("root", rel, FILE, mode=stat.S_IMODE(st.st_mode), size=len(data),
                                         mtime_ns=st.st_mtime_ns, sha256=sha, object=sha))
                elif data:
                    pack.append(data)
                    slices.append((rel, st, off, sha))
                    off += len(data)
                else:
                    entries.append(Entry("root", rel, FILE, mode=stat.S_IMODE(st.st_mode), mtime_ns=st.st_mtime_ns,
                                         sha256=sha))
    blob = b"".join(pack)
    pid = hashlib.sha256(blob).hexdigest()
    store.put(pack_key(pid), blob)
    for rel, st, at, sha in slices:
        entries.append(Entry("root", rel, FILE, mode=stat.S_IMODE(st.st_mode), size=st.st_size,
                             mtime_ns=st.st_mtime_ns, sha256=sha, pack=pid, offset=at))
    m = Manifest(seq=seq, created_ns=time.time_ns(), node="old-node", parent=None,
                 entries=sorted(entries, key=lambda e: e.path))
    name, data = encode_manifest(m)
    store.put(name.key, data)
    return _newest(store)


def _v1_tree(top: Path) -> dict[str, bytes]:
    files = {
        "small.txt": b"small file",
        "sub/page.bin": _rand(100_000, 20),
        "medium.bin": _rand(3 * MiB, 21),  # one v1 slice over 2 MiB: must be chunked anew
        "large.bin": _rand(10 * MiB, 22),  # a v1 object: must be chunked anew
        "empty": b"",
    }
    for rel, data in files.items():
        write(top, rel, data)
    os.symlink("small.txt", top / "link")
    return files


@pytest.mark.parametrize("seeded", [True, False], ids=["after-restore", "fresh-state"])
def test_the_first_checkpoint_of_a_v1_store_writes_v2_and_loses_nothing(tmp_path: Path, seeded: bool) -> None:
    store = CountingPuts(tmp_path / "store")
    old = tmp_path / "old"
    files = _v1_tree(old)
    v1 = _v1_snapshot(store, old, large=8 * MiB)
    assert v1.version == 1 and list(store.list("objects/"))
    v1_pack = next(e.pack for e in v1.entries if e.path == "small.txt")
    store.take()
    node = _areas(tmp_path, "node")
    sd = tmp_path / "state"
    if seeded:  # the stat cache then vouches for every file: only the v1-only ones are read again
        restore(store, node, state_dir=sd)
        # nothing changed since the restore: nothing to write, in any version
        assert checkpoint(store, node, everything, state_dir=sd).snapshot_id is None
    else:  # no cache: every file is read, the small ones found stored already
        restore(store, node)
    write(node["root"], "note.txt", "n")
    files["note.txt"] = b"n"
    res = checkpoint(store, node, everything, state_dir=sd)
    assert res.snapshot_id is not None and _newest(store).version == 2
    # unchanged files are not "stored"; without a stat cache nothing is known unchanged, and a file of several
    # chunks has a new content id (the hash of its chunks' hashes), so it reads as new content
    assert sorted(res.stored) == ([] if seeded else ["root:large.bin", "root:medium.bin"]) + ["root:note.txt"]
    sent = store.take()
    assert 13 * MiB <= sent < 13 * MiB + 100_000  # medium and large, chunked; the small ones stay where they are
    ents = _entries(store)
    for rel, data in files.items():
        assert _content(store, ents[rel]) == data, rel
    assert ents["small.txt"].pack == v1_pack and ents["sub/page.bin"].pack == v1_pack
    assert len(ents["large.bin"].chunks) > 2 and ents["medium.bin"].chunks
    assert ents["link"].target == "small.txt"
    # done: the next checkpoint has nothing to do
    again = checkpoint(store, node, everything, state_dir=sd)
    assert again.snapshot_id is None and store.take() == 0


def test_a_v1_file_that_cannot_be_read_again_keeps_the_snapshot_v1_until_it_can(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(tmp_path)
    old = tmp_path / "old"
    files = _v1_tree(old)
    _v1_snapshot(store, old, large=8 * MiB)
    node = _areas(tmp_path, "node")
    sd = tmp_path / "state"
    restore(store, node, state_dir=sd)
    write(node["root"], "new-small.txt", "n")
    new_mid = _rand(5 * MiB, 23)
    write(node["root"], "new-mid.bin", new_mid)  # several chunks: v1 cannot describe it
    write(node["root"], "small.txt", "edited")
    flips = iter(range(10**6))

    def scribble(path: str) -> None:  # large.bin changes after every read: it cannot be chunked this time
        if path.endswith("large.bin"):
            with open(path, "r+b") as f:
                f.write(b"%08d" % next(flips))

    monkeypatch.setattr(capture_mod, "_after_read_hook", scribble)
    res = checkpoint(store, node, everything, state_dir=sd)
    monkeypatch.setattr(capture_mod, "_after_read_hook", None)
    m = _newest(store)
    assert m.version == 1, "v2 cannot point at large.bin's object: the snapshot stays v1"
    assert sorted(res.skipped_busy) == ["root:large.bin", "root:new-mid.bin"], res
    ents = _entries(store)
    assert _content(store, ents["small.txt"]) == b"edited" and _content(store, ents["new-small.txt"]) == b"n"
    assert ents["large.bin"].object and "new-mid.bin" not in ents
    dst = _areas(tmp_path, "fresh")
    restore(store, dst)  # a v1 snapshot whose new slices are in a v2 pack restores as any v1 snapshot
    assert (dst["root"] / "large.bin").read_bytes() == files["large.bin"]
    assert (dst["root"] / "small.txt").read_text() == "edited"
    # the file settles: the next checkpoint migrates
    res = checkpoint(store, node, everything, state_dir=sd)
    assert _newest(store).version == 2 and res.skipped_busy == []
    ents = _entries(store)
    assert _content(store, ents["large.bin"]) == (node["root"] / "large.bin").read_bytes()
    assert _content(store, ents["new-mid.bin"]) == new_mid


def test_a_crash_in_the_first_v2_checkpoint_leaves_the_v1_snapshot_newest(tmp_path: Path) -> None:
    class Failing(PosixStore):
        fail_at = "snapshots/"

        def put(self, key: str, data: bytes, *, exclusive: bool = False) -> None:
            if key.startswith(self.fail_at):
                raise StoreError(f"injected failure writing {key}")
            super().put(key, data, exclusive=exclusive)

    store = Failing(tmp_path / "store")
    old = tmp_path / "old"
    files = _v1_tree(old)
    Failing.fail_at = "nothing"
    v1 = _v1_snapshot(store, old, large=8 * MiB)
    node = _areas(tmp_path, "node")
    sd = tmp_path / "state"
    restore(store, node, state_dir=sd)
    write(node["root"], "small.txt", "edited")
    for fail_at in ("packs/", "snapshots/"):  # while uploading chunks; at the manifest, after all of them
        Failing.fail_at = fail_at
        with pytest.raises(StoreError, match="injected"):
            checkpoint(store, node, everything, state_dir=sd)
        assert _newest(store).id == v1.id and _newest(store).version == 1
        dst = _areas(tmp_path, f"fresh-{fail_at[:-1]}")
        restore(store, dst)
        assert {r: (dst["root"] / r).read_bytes() for r in files} == files
    Failing.fail_at = "nothing"
    checkpoint(store, node, everything, state_dir=sd)
    assert _newest(store).version == 2
    assert _content(store, _entries(store)["small.txt"]) == b"edited"


def test_a_small_file_holding_a_chunked_files_digests_is_not_mistaken_for_it(tmp_path: Path) -> None:
    """A file's content id is the SHA-256 of its bytes when it is one chunk, and the SHA-256 of its chunks'
    digests when it has several: a small file whose bytes are exactly those digests has the same id. It must
    get its own bytes stored, not the big file's chunks."""
    store = make_store(tmp_path)
    src = _areas(tmp_path)
    sd = tmp_path / "state"
    write(src["root"], "big.bin", _rand(12 * MiB, 30))
    checkpoint(store, src, everything, state_dir=sd)
    big = _entries(store)["big.bin"]
    digests = b"".join(bytes.fromhex(c.sha256) for c in big.chunks)
    write(src["root"], "digests", digests)
    for state in (sd, tmp_path / "fresh-state"):  # with the stat cache, and comparing with the store's manifest
        checkpoint(store, src, everything, state_dir=state)
        e = _entries(store)["digests"]
        assert e.sha256 == big.sha256 and e.size == len(digests) and not e.chunks
        assert _content(store, e) == digests


class _CrashAt:
    """Any store, with writes under one prefix failing (a node dying there, as far as the store can tell)."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.fail_at = "nothing"

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def put(self, key: str, data: bytes, *, exclusive: bool = False) -> None:
        if key.startswith(self.fail_at):
            raise StoreError(f"injected failure writing {key}")
        self.inner.put(key, data, exclusive=exclusive)

    def put_file(self, key: str, path: Path) -> None:
        if key.startswith(self.fail_at):
            raise StoreError(f"injected failure writing {key}")
        self.inner.put_file(key, path)


def test_a_v1_store_on_every_store_kind_survives_a_crash_in_its_first_v2_checkpoint_then_upgrades(
        tmp_path: Path, real_store: Any) -> None:
    """v1 -> v2 on real stores: a crash while the first v2 checkpoint uploads chunks, and one at its manifest,
    each leave the v1 snapshot newest and restorable; the next checkpoint writes v2 with every file intact."""
    store = _CrashAt(real_store)
    old = tmp_path / "old"
    files = _v1_tree(old)
    v1 = _v1_snapshot(store, old, large=8 * MiB)
    node = _areas(tmp_path, "node")
    sd = tmp_path / "state"
    restore(store, node, state_dir=sd)
    write(node["root"], "small.txt", "edited")
    files["small.txt"] = b"edited"
    for fail_at in ("packs/", "snapshots/"):
        store.fail_at = fail_at
        with pytest.raises(StoreError, match="injected"):
            checkpoint(store, node, everything, state_dir=sd)
        store.fail_at = "nothing"
        newest = _newest(store)
        assert newest.id == v1.id and newest.version == 1, fail_at
        dst = _areas(tmp_path, f"fresh-{fail_at[:-1]}")
        out = restore(store, dst)
        assert out.snapshot_id == v1.id and not out.errors
        assert (dst["root"] / "large.bin").read_bytes() == files["large.bin"]
        assert (dst["root"] / "small.txt").read_bytes() == b"small file"
    res = checkpoint(store, node, everything, state_dir=sd)
    upgraded = _newest(store)
    assert upgraded.id == res.snapshot_id and upgraded.version == 2
    dst = _areas(tmp_path, "fresh-v2")
    out = restore(store, dst)
    assert out.snapshot_id == res.snapshot_id and not out.errors and not out.refused
    assert {r: (dst["root"] / r).read_bytes() for r in files} == files
    assert os.readlink(dst["root"] / "link") == "small.txt"
