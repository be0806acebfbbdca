"""Reading format v2 snapshots (docs/format.md): restore of files stored as chunks, verify and prune
of v2 packs, a store holding v1 and v2 snapshots, and hostile v2 manifests.

The snapshots are built by hand (tests/v2_builder.py: pack2.PackWriter, the chunker and manifests.encode), so
these tests hold whatever the checkpoint writes; the stores are real: a POSIX directory, SeaweedFS over S3 and
an rclone FUSE mount.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import tracemalloc
from pathlib import Path
from typing import Any, Callable

import pytest
from test_reliability_support import put_object, put_pack, temp_files
from test_snapshot_support import everything
from v2_builder import V2Builder, random_bytes

from fractfs.errors import FractfsError, RestoreError
from fractfs.snapshot import catalog, checkpoint, chunked, restore, unrestored, verify
from fractfs.snapshot.format import FILE, ChunkRef, Entry, Manifest, SnapName, encode_manifest, pack_key
from fractfs.snapshot.maint import blob_total, prune
from fractfs.stores import PosixStore

BIG = 40 << 20
MTIME = 1_700_000_000_123_456_789


@pytest.fixture
def store(real_store: Any) -> Any:
    """The store kinds a snapshot is read from (conftest's ``real_store``: directory, S3, FUSE)."""
    return real_store


def _build(store: Any, seq: int = 1, seed: int = 1) -> tuple[SnapName, dict[str, bytes], list[Entry]]:
    """A snapshot with a 40 MiB chunked file at the area root (restored through a temp file), a chunked file
    in directories the restore creates (written in place in its tree), one-chunk, small and empty files,
    symlinks and directories."""
    b = V2Builder(store)
    files = {
        "big.bin": random_bytes(BIG, seed),
        "data/deep/mid.bin": random_bytes(3 << 20, seed + 1),
        "data/one-chunk.bin": random_bytes(100 << 10, seed + 2),
        "app.toml": b"answer = 42\n",
        "data/small": b"small",
        "empty": b"",
    }
    b.dir("data", mode=0o750)
    b.dir("data/deep")
    for path, data in files.items():
        b.file(path, data, mode=0o640 if path == "big.bin" else 0o644, mtime_ns=MTIME)
    b.link("data/link", "../app.toml")
    b.link("abs", "/nonexistent/target")
    name = b.commit(seq)
    return name, files, b.finished_entries()


def _entry(entries: list[Entry], path: str) -> Entry:
    return next(e for e in entries if e.path == path)


def _flip(store: Any, c: ChunkRef, at: int = 5) -> None:
    """Damage one byte of a chunk where it is stored (through the store: the same on every kind)."""
    key = pack_key(c.pack)
    data = bytearray(store.get(key))
    data[c.offset + at] ^= 0x40
    store.put(key, bytes(data))


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and not p.is_symlink()}


def test_restore_of_a_v2_snapshot(store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name, files, entries = _build(store)
    big = _entry(entries, "big.bin")
    assert len(big.chunks) > 40 and len({c.pack for c in big.chunks}) >= 3  # spans several packs
    one = _entry(entries, "data/one-chunk.bin")
    assert not one.chunks and one.pack  # a one-chunk file is a plain pack slice, as in v1

    dst = tmp_path / "dst"
    out = restore(store, {"root": dst}, state_dir=tmp_path / "state")
    assert out.snapshot_id == name.id and out.errors == [] and out.refused == []
    assert sorted(out.restored) == sorted(f"root:{p}" for p in [*files, "data/link", "abs"])
    assert out.bytes == sum(len(d) for d in files.values())
    assert _files(dst) == files
    assert (dst / "big.bin").stat().st_mode & 0o777 == 0o640
    assert (dst / "big.bin").stat().st_mtime_ns == MTIME
    assert (dst / "data/deep/mid.bin").stat().st_mtime_ns == MTIME
    assert (dst / "data").stat().st_mode & 0o777 == 0o750
    assert os.readlink(dst / "data/link") == "../app.toml"
    assert os.readlink(dst / "abs") == "/nonexistent/target"
    assert temp_files(dst) == []

    # the stat cache was seeded with what the restore wrote: the next checkpoint reads nothing back
    from fractfs.snapshot import diff

    monkeypatch.setattr(diff, "compare", lambda *_a, **_k: pytest.fail("compared the tree row by row"))
    res = checkpoint(store, {"root": dst}, everything, state_dir=tmp_path / "state")
    assert res.snapshot_id is None and res.parent == name.id


def test_a_tampered_chunk_refuses_its_file_only(store: Any, tmp_path: Path) -> None:
    name, files, entries = _build(store)
    big = _entry(entries, "big.bin")
    mid = _entry(entries, "data/deep/mid.bin")
    _flip(store, big.chunks[len(big.chunks) // 2])
    _flip(store, mid.chunks[1], at=1000)

    dst = tmp_path / "dst"
    out = restore(store, {"root": dst}, state_dir=tmp_path / "state")
    assert sorted(e.split(":")[1] for e in out.errors) == ["big.bin", "data/deep/mid.bin"], out.errors
    assert all("fails sha256 verification" in e for e in out.errors), out.errors
    # nothing of either file under its final name (nor anywhere else), everything else restored
    assert not (dst / "big.bin").exists() and not (dst / "data/deep/mid.bin").exists()
    assert temp_files(dst) == []
    assert _files(dst) == {p: d for p, d in files.items() if p not in ("big.bin", "data/deep/mid.bin")}
    assert os.readlink(dst / "data/link") == "../app.toml"
    # the app never had them: the next checkpoint keeps their last good reference (unrestored.py)
    assert set(unrestored.load(tmp_path / "state")) == {("root", "big.bin"), ("root", "data/deep/mid.bin")}

    v = verify(store)
    assert not v.ok
    assert v.bad_blobs == sorted({pack_key(big.chunks[len(big.chunks) // 2].pack), pack_key(mid.chunks[1].pack)})
    assert sorted(m.split(" ")[1].rstrip(":") for m in v.damaged_files) == ["root:big.bin", "root:data/deep/mid.bin"]


def test_a_truncated_pack_fails_the_files_in_its_lost_tail(tmp_path: Path) -> None:
    store = PosixStore(tmp_path / "store")
    _name, files, entries = _build(store)
    big = _entry(entries, "big.bin")
    first = big.chunks[0].pack  # big.bin was added first: its first pack holds nothing else
    key = pack_key(first)
    data = store.get(key)
    store.put(key, data[: len(data) // 2])

    dst = tmp_path / "dst"
    out = restore(store, {"root": dst})
    assert [e.split(":")[1] for e in out.errors] == ["big.bin"]
    assert "is not there" in out.errors[0] and key in out.errors[0]
    assert not (dst / "big.bin").exists() and temp_files(dst) == []
    assert _files(dst) == {p: d for p, d in files.items() if p != "big.bin"}
    v = verify(store)
    assert v.bad_blobs == [key] and [m.split(" ")[1] for m in v.damaged_files] == ["root:big.bin:"]


def test_verify_and_blob_total_of_a_v2_snapshot(store: Any) -> None:
    name, files, entries = _build(store)
    v = verify(store)
    assert v.ok, (v.bad_blobs, v.damaged_files)
    assert v.snapshots == [name.id]
    assert v.files_checked == len(files) and v.bytes_checked == sum(len(d) for d in files.values())
    packs = {k: n for k, n in store.list("packs/")}
    assert blob_total(store, [name.id]) == sum(packs.values()) == blob_total(store, None)


class _FlipsFirstRange:
    """A store whose first ranged read of each pack arrives with a bit flipped (damage in transit)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seen: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        data = self.inner.get_range(key, start, length)
        if key.startswith("packs/") and key not in self.seen and len(data) > 100:
            self.seen.add(key)
            return data[:100] + bytes([data[100] ^ 1]) + data[101:]
        return data


def test_damage_in_transit_is_read_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = PosixStore(tmp_path / "store")
    _name, files, _entries = _build(store)
    flaky = _FlipsFirstRange(store)
    with caplog.at_level(logging.WARNING, logger="fractfs"):
        out = restore(flaky, {"root": tmp_path / "dst"})  # type: ignore[arg-type]
    assert len(flaky.seen) >= 3 and out.errors == []
    assert _files(tmp_path / "dst") == files
    assert any("passed on a second read" in m and "big.bin" in m for m in caplog.messages)


def test_overwrite_compares_chunked_files_chunk_by_chunk(tmp_path: Path) -> None:
    store = PosixStore(tmp_path / "store")
    _name, files, _entries = _build(store)
    dst = tmp_path / "dst"
    restore(store, {"root": dst})
    changed = bytearray(files["data/deep/mid.bin"])
    changed[-3] ^= 1
    (dst / "data/deep/mid.bin").write_bytes(bytes(changed))
    out = restore(store, {"root": dst}, overwrite=True)
    assert "root:big.bin" in out.skipped_existing  # same bytes: not fetched again
    assert out.restored == ["root:data/deep/mid.bin"] and out.errors == []
    assert _files(dst) == files and temp_files(dst) == []


def test_adjacent_chunks_are_fetched_in_few_ranged_reads(tmp_path: Path) -> None:
    calls: list[tuple[str, int, int]] = []

    class Counting(PosixStore):
        def get_range(self, key: str, start: int, length: int) -> bytes:
            calls.append((key, start, length))
            return super().get_range(key, start, length)

    store = Counting(tmp_path / "store")
    b = V2Builder(store)
    data = random_bytes(BIG, 7)
    b.file("big.bin", data)
    b.commit(1)
    big = b.finished_entries()[0]
    out = restore(store, {"root": tmp_path / "dst"})
    assert out.errors == [] and (tmp_path / "dst/big.bin").read_bytes() == data
    # one read per run of neighbouring chunks (at most chunked.RUN_MAX each), not one per chunk
    assert len(calls) <= BIG // chunked.RUN_MAX + 2 * len(b.packs), calls
    assert len(calls) * 8 < len(big.chunks)
    assert max(n for _k, _s, n in calls) <= chunked.RUN_MAX


def test_plan_runs() -> None:
    p, q = "a" * 64, "b" * 64

    def ref(pack: str, off: int, n: int) -> ChunkRef:
        return ChunkRef(pack, off, n, "0" * 64)

    chunks = (ref(p, 0, 10), ref(p, 10, 10), ref(p, 25, 5),  # contiguous, then a small gap
              ref(q, 0, 10),  # another pack
              ref(q, 0, 10),  # the same chunk again (a file of repeated blocks): its own read
              ref(q, 100, 30), ref(q, 130, 30))  # would exceed run_max together
    runs = chunked.plan_runs(chunks, run_max=40, gap=5)
    assert [(r.pack, r.start, r.length) for r in runs] == [(p, 0, 30), (q, 0, 10), (q, 0, 10), (q, 100, 30),
                                                           (q, 130, 30)]
    assert [pc.file_offset for r in runs for pc in r.pieces] == [0, 10, 20, 25, 35, 45, 75]
    assert [pc.number for r in runs for pc in r.pieces] == list(range(7))


def test_memory_stays_bounded_for_a_large_chunked_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fractfs.snapshot import restorer

    store = PosixStore(tmp_path / "store")
    b = V2Builder(store)
    size = 96 << 20
    data = random_bytes(size, 3)
    digest = hashlib.sha256(data).hexdigest()
    b.file("huge.bin", data)
    b.commit(1)
    del data
    monkeypatch.setattr(restorer, "_CHUNK_BYTES_IN_FLIGHT", 2 * chunked.RUN_MAX)
    tracemalloc.start()
    try:
        out = restore(store, {"root": tmp_path / "dst"}, transfers=16)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.errors == []
    assert hashlib.sha256((tmp_path / "dst/huge.bin").read_bytes()).hexdigest() == digest
    # two runs in flight (each read may briefly exist twice while a store joins its parts), not the file
    assert peak < 5 * chunked.RUN_MAX, f"peak {peak >> 20} MiB"


def test_disk_full_during_a_chunked_file_leaves_nothing(tmp_path: Path,
                                                        tmpfs_factory: Callable[..., Path]) -> None:
    store = PosixStore(tmp_path / "store")
    _build(store)
    small = tmpfs_factory("24m")
    with pytest.raises(RestoreError, match="disk full"):
        restore(store, {"root": small / "app"})
    assert temp_files(small) == []
    assert not (small / "app" / "big.bin").exists()
    assert sum(p.stat().st_size for p in small.rglob("*") if p.is_file()) == 0


def test_restore_into_a_fuse_mount(tmp_path: Path, fuse_volume: Path) -> None:
    store = PosixStore(tmp_path / "store")
    b = V2Builder(store)
    files = {"a.bin": random_bytes(6 << 20, 11), "d/b.bin": random_bytes(5 << 20, 12)}
    for p, d in files.items():
        b.file(p, d)
    b.commit(1)
    dst = fuse_volume / "restored"
    out = restore(store, {"root": dst})
    assert out.errors == [] and _files(dst) == files and temp_files(dst) == []


# -- v1 and v2 in one store -----------------------------------------------------------------------------------

def _v1_snapshot(store: Any) -> tuple[SnapName, dict[str, bytes], str, str]:
    """A version 1 snapshot made by hand: a v1 pack of two files and a file in objects/."""
    a, b, obj = b"v1 file a\n", b"v1 file b\n", random_bytes(9 << 20, 21)
    pid, (la, lb) = put_pack(store, [a, b])
    oid = put_object(store, obj)
    entries = [Entry("root", "a.txt", FILE, mode=0o644, size=la[1], mtime_ns=1, sha256=la[2], pack=pid, offset=la[0]),
               Entry("root", "v1/b.txt", FILE, mode=0o644, size=lb[1], mtime_ns=1, sha256=lb[2], pack=pid,
                     offset=lb[0]),
               Entry("root", "v1/obj.bin", FILE, mode=0o644, size=len(obj), mtime_ns=1, sha256=oid, object=oid)]
    name, data = encode_manifest(Manifest(1, 1, "old-node", None, entries))
    store.put(name.key, data)
    return name, {"a.txt": a, "v1/b.txt": b, "v1/obj.bin": obj}, pid, oid


def test_a_store_with_v1_and_v2_snapshots(tmp_path: Path) -> None:
    store = PosixStore(tmp_path / "store")
    v1, v1_files, v1_pack, v1_obj = _v1_snapshot(store)
    b = V2Builder(store)
    v2_files = {"big.bin": random_bytes(5 << 20, 31), "a.txt": v1_files["a.txt"]}
    b.file("big.bin", v2_files["big.bin"])
    # an unchanged small file keeps pointing into its v1 pack (docs/format.md §A5)
    a = next(e for e in catalog.load(store, v1).entries if e.path == "a.txt")
    b.entries.append(a)
    v2 = b.commit(2, parent=v1.id)
    stray, _ = put_pack(store, [b"referenced by nothing"])
    assert catalog.load(store, v2).version == 2 and catalog.load(store, v1).version == 1

    for name, files in ((v1, v1_files), (v2, v2_files)):
        dst = tmp_path / f"dst-{name.seq}"
        out = restore(store, {"root": dst}, snapshot_id=name.id)
        assert out.snapshot_id == name.id and out.errors == [] and _files(dst) == files

    v = verify(store, "all")
    assert v.ok and v.files_checked == 5, (v.bad_blobs, v.damaged_files)
    assert blob_total(store, [v2.id]) == sum(n for k, n in store.list("packs/") if k != pack_key(stray))

    res = prune(store, keep=2)
    assert res.deleted_blobs == [pack_key(stray)] and res.deleted_snapshots == []
    res = prune(store, keep=1)
    assert res.deleted_snapshots == [v1.id]
    assert res.deleted_blobs == [f"objects/{v1_obj[:2]}/{v1_obj}"]  # the v1 pack is still used by v2
    left = {k for k, _ in store.list("")}
    assert pack_key(v1_pack) in left and all(pack_key(p) in left for p in b.packs)
    out = restore(store, {"root": tmp_path / "after"})
    assert out.errors == [] and _files(tmp_path / "after") == v2_files


def test_prune_keeps_v2_packs_in_use_and_deletes_the_rest(store: Any) -> None:
    first, _files1, entries1 = _build(store, seq=1, seed=1)
    second, files2, entries2 = _build(store, seq=2, seed=100)  # other content: other packs
    used1 = {c.pack for e in entries1 for c in e.refs()}
    used2 = {c.pack for e in entries2 for c in e.refs()}
    assert used1 and used2 and not used1 & used2
    res = prune(store, keep=1)
    assert res.deleted_snapshots == [first.id]
    assert sorted(res.deleted_blobs) == sorted(pack_key(p) for p in used1)
    assert {k for k, _ in store.list("packs/")} == {pack_key(p) for p in used2}
    assert verify(store).ok


def test_a_manifest_of_an_unknown_version_still_blocks_prune(tmp_path: Path) -> None:
    store = PosixStore(tmp_path / "store")
    _build(store, seq=1)
    doc = {"format": "fractfs-snapshot", "version": 3, "seq": 2, "created_ns": 1, "node": "newer", "parent": None}
    data = gzip.compress(json.dumps(doc).encode(), mtime=0)
    newer = SnapName(2, hashlib.sha256(data).hexdigest())
    store.put(newer.key, data)
    stray, _ = put_pack(store, [b"nobody's"])
    before = {k for k, _ in store.list("")}
    with pytest.raises(FractfsError, match="prune refused.*version 3"):
        prune(store, keep=1)
    assert {k for k, _ in store.list("")} == before


# -- hostile v2 manifests -------------------------------------------------------------------------------------

def _rewrite(store: Any, name: SnapName, seq: int, change: Callable[[dict[str, Any]], None]) -> SnapName:
    """Store a copy of manifest ``name`` as ``seq`` with its JSON document changed by ``change`` (the checksum
    in the new name matches: only the content lies)."""
    doc = json.loads(gzip.decompress(store.get(name.key)))
    doc["seq"] = seq
    change(doc)
    data = gzip.compress(json.dumps(doc).encode(), mtime=0)
    out = SnapName(seq, hashlib.sha256(data).hexdigest())
    store.put(out.key, data)
    return out


def test_hostile_chunk_refs_are_refused_per_entry(tmp_path: Path) -> None:
    store = PosixStore(tmp_path / "store")
    b = V2Builder(store)
    names = ["beyond", "count", "huge-offset", "length-0", "length-big", "negative", "no-pack", "ok", "short",
             "wrong-sha"]
    content = {n: random_bytes(1 << 20, i) for i, n in enumerate(names)}
    for n in names:
        b.file(n, content[n])
    honest = b.commit(1)
    pack_size = max(n for _k, n in store.list("packs/"))

    def spoil(doc: dict[str, Any]) -> None:
        ent, ch = doc["entries"], doc["chunks"]
        assert ent["name"] == names  # sorted, all in the area root
        first = {n: sum(ent["nchunks"][:i]) for i, n in enumerate(names)}
        assert all(ent["nchunks"][i] >= 2 for i in range(len(names)))
        ch["offset"][first["beyond"] + 1] = pack_size + 4096  # past the end of its pack
        ent["size"][names.index("count")] += 1  # lengths no longer add up to the size
        ch["offset"][first["huge-offset"]] = 2**63 - 10  # a range no store can serve
        ch["length"][first["length-0"]] = 0
        ch["length"][first["length-big"]] = 4 << 20  # longer than any chunk
        ch["offset"][first["negative"]] = -1
        ch["pack"][first["no-pack"]] = len(doc["packs"])  # pack index out of range
        k = first["short"] + 1  # a chunk that claims bytes the pack does not end with
        ch["offset"][k] = pack_size - ch["length"][k] // 2
        k = first["wrong-sha"]
        ch["sha256"] = ch["sha256"][:64 * k] + "0" * 64 + ch["sha256"][64 * k + 64:]

    hostile = _rewrite(store, honest, 2, spoil)
    dst = tmp_path / "dst"
    out = restore(store, {"root": dst}, state_dir=tmp_path / "state")
    assert out.snapshot_id == hostile.id
    refused = {r.split(":")[1] for r in out.refused}
    failed = {r.split(":")[1] for r in out.errors}
    assert refused == {"count", "length-0", "length-big", "negative", "no-pack"}, out.refused
    assert failed == {"beyond", "huge-offset", "short", "wrong-sha"}, out.errors
    assert _files(dst) == {"ok": content["ok"]} and temp_files(dst) == []
    v = verify(store, hostile.id)
    assert not v.ok and v.bad_blobs == []  # the packs are intact; the manifest lies about them
    assert {m.split(" ")[1].split(":")[1] for m in v.damaged_files} == refused | failed


def test_dry_run_identical_check_compares_chunked_files_chunk_by_chunk(tmp_path: Path) -> None:
    from fractfs.restore_target import identical_on_disk

    store = PosixStore(tmp_path / "store")
    name, files, _entries = _build(store)
    dst = tmp_path / "dst"
    restore(store, {"root": dst})
    changed = bytearray(files["data/deep/mid.bin"])
    changed[0] ^= 1
    (dst / "data/deep/mid.bin").write_bytes(bytes(changed))
    labels = ["root:big.bin", "root:data/deep/mid.bin", "root:app.toml"]
    assert identical_on_disk(store, name.id, labels, {"root": dst}) == {"root:big.bin", "root:app.toml"}
