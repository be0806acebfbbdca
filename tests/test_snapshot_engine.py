"""checkpoint(): round trips, change detection, dedup, busy files, deadlines, SQLite."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import pytest
from test_snapshot_support import everything, make_store, store_keys, temp_leftovers, tree, write

from fractfs.snapshot import checkpoint, latest_paths, list_snapshots, restore
from fractfs.snapshot import capture as capture_mod
from fractfs.snapshot import engine as engine_mod
from fractfs.snapshot import pack2
from fractfs.snapshot.format import SQLITE_MAGIC
from fractfs.stores import PosixStore


def _areas(tmp_path: Path, name: str = "app") -> dict[str, Path]:
    return {"root": tmp_path / name, "scratch": tmp_path / f"{name}-scratch"}


def _populate(root: Path) -> None:
    write(root, "a.txt", "alpha\n", mode=0o644, mtime_ns=1_600_000_000_123_456_789)
    write(root, "empty", b"")
    write(root, "bin/run.sh", "#!/bin/sh\necho hi\n", mode=0o755)
    write(root, "deep/er/and/deeper/leaf.bin", os.urandom(5000), mode=0o600)
    write(root, "private/secret", "s3cr3t", mode=0o640)
    (root / "emptydir").mkdir()
    os.chmod(root / "private", 0o750)
    os.symlink("a.txt", root / "link-to-a")
    os.symlink("deep/er", root / "dirlink")
    os.symlink("missing-target", root / "dangling")


def test_round_trip_files_dirs_symlinks_modes_mtimes(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    src = _areas(tmp_path)
    _populate(src["root"])
    write(src["scratch"], "data/blobs/manifest.json", '{"v": 1}')
    res = checkpoint(store, src, everything, state_dir=tmp_path / "state", node_id="node-a")
    assert res.snapshot_id is not None
    assert res.files == 6 and res.parent is None
    assert "root:a.txt" in res.stored and "scratch:data/blobs/manifest.json" in res.stored

    dst = _areas(tmp_path, "fresh")
    out = restore(store, dst)
    assert out.snapshot_id == res.snapshot_id
    assert not out.errors and not out.refused and not out.fell_back_from
    assert tree(dst["root"], mtimes=True) == tree(src["root"], mtimes=True)
    assert tree(dst["scratch"]) == tree(src["scratch"])
    assert temp_leftovers(dst["root"]) == []
    info = list_snapshots(store)
    assert [i.id for i in info] == [res.snapshot_id]
    assert info[0].node == "node-a" and info[0].valid and info[0].files == 6
    assert ("root", "a.txt") in latest_paths(store)
    assert ("root", "emptydir") not in latest_paths(store)
    assert ("root", "emptydir") in latest_paths(store, include_dirs=True)


def test_selection_is_the_callers(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    src = _areas(tmp_path)
    write(src["root"], "keep/x", "x")
    write(src["root"], "skipdir/y", "y")
    write(src["root"], "z.tmp", "z")
    calls: list[tuple[str, str, bool]] = []

    def want(area: str, rel: str, is_dir: bool) -> bool:
        calls.append((area, rel, is_dir))
        return not rel.endswith(".tmp") and rel != "skipdir"

    checkpoint(store, src, want, state_dir=tmp_path / "state")
    assert ("root", "skipdir", True) in calls
    assert not any(c[1] == "skipdir/y" for c in calls)  # a refused dir is not descended into
    assert latest_paths(store) == {("root", "keep/x")}


def test_deleted_file_is_absent_after_restore(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    src = _areas(tmp_path)
    write(src["root"], "stay", "1")
    write(src["root"], "go/away", "2")
    sd = tmp_path / "state"
    first = checkpoint(store, src, everything, state_dir=sd)
    (src["root"] / "go" / "away").unlink()
    second = checkpoint(store, src, everything, state_dir=sd)
    assert second.snapshot_id and second.snapshot_id != first.snapshot_id
    assert second.deleted == ["root:go/away"]
    assert second.parent == first.snapshot_id
    dst = _areas(tmp_path, "fresh")
    restore(store, dst)
    assert (dst["root"] / "stay").read_text() == "1"
    assert not (dst["root"] / "go" / "away").exists()
    # point-in-time restore of the older snapshot still has it
    old = _areas(tmp_path, "old")
    restore(store, old, snapshot_id=first.snapshot_id)
    assert (old["root"] / "go" / "away").read_text() == "2"


def test_noop_checkpoint_writes_nothing(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    src = _areas(tmp_path)
    _populate(src["root"])
    sd = tmp_path / "state"
    first = checkpoint(store, src, everything, state_dir=sd)
    keys = store_keys(store)
    # a no-op must not even re-read the stat cache rows or files
    read_calls: list[str] = []
    orig = capture_mod.capture

    def spy(path: str, ctx: object) -> object:
        read_calls.append(path)
        return orig(path, ctx)  # type: ignore[arg-type]

    capture_mod.capture = spy  # type: ignore[assignment]
    try:
        again = checkpoint(store, src, everything, state_dir=sd)
    finally:
        capture_mod.capture = orig
    assert again.snapshot_id is None and again.stored == [] and again.deleted == []
    assert again.files == first.files and again.bytes == first.bytes
    assert read_calls == []
    assert store_keys(store) == keys


def test_touch_without_content_change_uploads_nothing(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    src = _areas(tmp_path)
    write(src["root"], "f", "same")
    sd = tmp_path / "state"
    checkpoint(store, src, everything, state_dir=sd)
    blobs = store_keys(store, "packs/")
    os.utime(src["root"] / "f", ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    res = checkpoint(store, src, everything, state_dir=sd)
    assert res.snapshot_id is not None  # the mtime is part of the snapshot
    assert res.stored == [] and res.uploaded_bytes < 2000  # only the manifest
    assert store_keys(store, "packs/") == blobs


def test_identical_content_is_stored_once(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    src = _areas(tmp_path)
    blob = os.urandom(100_000)
    for i in range(5):
        write(src["root"], f"copy{i}", blob)
    res = checkpoint(store, src, everything, state_dir=tmp_path / "state")
    assert res.stored == [f"root:copy{i}" for i in range(5)]  # every new file is listed ...
    # ... and the bytes are stored once: one pack member, plus the pack's index record and trailer
    assert sum(s for _, s in store.list("packs/")) == len(blob) + pack2.RECORD.size + pack2.TRAILER.size
    dst = _areas(tmp_path, "fresh")
    restore(store, dst)
    assert all((dst["root"] / f"copy{i}").read_bytes() == blob for i in range(5))


def test_content_hash_catches_same_size_same_mtime_edit(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    src = _areas(tmp_path)
    p = write(src["root"], "cfg", "value=1")
    sd = tmp_path / "state"
    checkpoint(store, src, everything, state_dir=sd, content_hash=True)
    st = os.stat(p)
    p.write_text("value=2")
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(p).st_size == st.st_size and os.stat(p).st_mtime_ns == st.st_mtime_ns
    res = checkpoint(store, src, everything, state_dir=sd, content_hash=True)
    assert res.stored == ["root:cfg"]
    dst = _areas(tmp_path, "fresh")
    restore(store, dst)
    assert (dst["root"] / "cfg").read_text() == "value=2"
    # unchanged content is hashed but not uploaded again
    again = checkpoint(store, src, everything, state_dir=sd, content_hash=True)
    assert again.snapshot_id is None and again.stored == []


def test_same_size_same_mtime_edit_without_content_hash_is_caught_by_ctime(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    src = _areas(tmp_path)
    p = write(src["root"], "cfg", "value=1")
    sd = tmp_path / "state"
    checkpoint(store, src, everything, state_dir=sd)
    st = os.stat(p)
    p.write_text("value=2")
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    res = checkpoint(store, src, everything, state_dir=sd)
    assert res.stored == ["root:cfg"]


def test_file_changing_during_read_is_never_recorded_torn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = make_store(tmp_path)
    src = _areas(tmp_path)
    write(src["root"], "log", "v1 " * 100)
    write(src["root"], "other", "fine")
    sd = tmp_path / "state"
    first = checkpoint(store, src, everything, state_dir=sd)

    # v2 on disk when the checkpoint starts; every read of it is followed by a rewrite in place (same size,
    # other bytes each time): no two reads agree, so no version can be proven
    write(src["root"], "log", "v2 " * 100)
    write(src["root"], "other", "changed")
    rewrites = iter(range(10**6))

    def scribble(path: str) -> None:
        if path.endswith("/log"):
            with open(path, "r+b") as f:
                f.write(b"%06d" % next(rewrites))

    monkeypatch.setattr(capture_mod, "_after_read_hook", scribble)
    with caplog.at_level(logging.INFO, logger="fractfs"):
        res = checkpoint(store, src, everything, state_dir=sd)
    assert res.skipped_busy == ["root:log"]
    assert "root:log" not in res.stored and res.stored == ["root:other"]
    assert any("kept changing" in r.message for r in caplog.records)
    dst = _areas(tmp_path, "fresh")
    restore(store, dst)
    # the busy file keeps its previous, whole version; it was not dropped
    assert (dst["root"] / "log").read_text() == "v1 " * 100
    assert (dst["root"] / "other").read_text() == "changed"

    # next round, once it is quiet, the file is taken
    monkeypatch.setattr(capture_mod, "_after_read_hook", None)
    res2 = checkpoint(store, src, everything, state_dir=sd)
    assert res2.stored == ["root:log"] and first.snapshot_id != res2.snapshot_id and res2.unsettled == []
    dst2 = _areas(tmp_path, "fresh2")
    restore(store, dst2)
    assert (dst2["root"] / "log").read_bytes() == (src["root"] / "log").read_bytes()


def test_file_growing_in_a_thread_is_consistent(tmp_path: Path) -> None:
    """A real writer thread appends whole lines: before some checkpoints it adds a chunk and stops, during others
    it keeps appending until the checkpoint returns. Each checkpoint either stores the file as a prefix of
    whole lines that extends the previous one (while it grows: the stable prefix of two reads), or reports it
    busy and keeps the previous version (never drops it); once the writer stops, the next checkpoint stores
    exactly what is on disk."""
    store = make_store(tmp_path)
    src = _areas(tmp_path)
    sd = tmp_path / "state"
    p = write(src["root"], "journal", "".join(f"line {i:08d}\n" for i in range(10)))
    first = checkpoint(store, src, everything, state_dir=sd)
    assert first.stored == ["root:journal"]
    prev = p.read_text()
    appending = threading.Event()  # set: the writer appends without pause
    chunk = threading.Event()  # set: the writer appends 100 lines, then clears it
    stop = threading.Event()

    def writer() -> None:
        i = 10
        with open(p, "a") as f:
            while not stop.is_set():
                if not (appending.is_set() or chunk.is_set()):
                    time.sleep(0.001)
                    continue
                for _ in range(100):  # one write() per line: the file always ends at a line break
                    f.write(f"line {i:08d}\n")
                    f.flush()
                    i += 1
                chunk.clear()

    def stored_journal(snapshot_id: str | None) -> str:
        dst = _areas(tmp_path, f"r{len(outcomes)}")
        out = restore(store, dst, snapshot_id=snapshot_id)
        assert out.errors == [] and out.refused == []
        return (dst["root"] / "journal").read_text()

    outcomes: list[str] = []
    t = threading.Thread(target=writer)
    t.start()
    try:
        for during in (False, True, False, True, False, True):
            size = p.stat().st_size
            (appending if during else chunk).set()
            deadline = time.monotonic() + 30
            while p.stat().st_size == size or chunk.is_set():  # the file did change (and a chunk is whole)
                assert time.monotonic() < deadline, "the writer thread made no progress"
                time.sleep(0.002)
            r = checkpoint(store, src, everything, state_dir=sd)
            appending.clear()
            if r.stored:
                assert r.stored == ["root:journal"] and r.skipped_busy == [] and r.snapshot_id
                got = stored_journal(r.snapshot_id)
                lines = got.splitlines()
                assert got.endswith("\n") and lines == [f"line {i:08d}" for i in range(len(lines))]
                assert got.startswith(prev) and len(got) > len(prev)
                prev = got
                outcomes.append("stored")
            else:
                assert r.skipped_busy == ["root:journal"] and r.snapshot_id is None, r
                assert stored_journal(None) == prev  # the previous whole version is kept, not dropped
                outcomes.append("busy")
    finally:
        stop.set()
        t.join()
    # a file that was quiet is stored; one that grows all through a checkpoint is stored too since issue 11
    # (point 2), as the stable prefix two reads agreed on: a whole-line prefix extending the previous one
    assert outcomes[0::2] == ["stored"] * 3 and outcomes.count("busy") <= 1, outcomes
    last = checkpoint(store, src, everything, state_dir=sd)
    assert last.stored == ["root:journal"] and last.skipped_busy == []
    assert stored_journal(last.snapshot_id) == p.read_text()


def test_new_busy_file_is_left_out_and_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_store(tmp_path)
    src = _areas(tmp_path)
    write(src["root"], "hot", "x")
    flips = iter(range(10**6))

    def scribble(path: str) -> None:
        with open(path, "wb") as f:
            n = next(flips)
            f.write(bytes([65 + n % 26]) * (1 + n % 3))  # other bytes (and size) after every read

    monkeypatch.setattr(capture_mod, "_after_read_hook", scribble)
    res = checkpoint(store, src, everything, state_dir=tmp_path / "state")
    assert res.skipped_busy == ["root:hot"]
    assert ("root", "hot") not in latest_paths(store)


@pytest.mark.parametrize("size", [300, 9 << 20], ids=["packed", "object"])
def test_file_appended_after_every_read_is_stored_as_its_stable_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """Issue 11 point 2: a file that grows between every two reads is never settled, but two reads agree on
    the first one's bytes: that prefix (a state the file really had) is stored, and read again next time."""
    store = make_store(tmp_path)
    src = _areas(tmp_path)
    sd = tmp_path / "state"
    body = b"".join(b"line %08d\n" % i for i in range(size // 14 + 1))
    write(src["root"], "log", body)
    appended: list[int] = []

    def grow(path: str) -> None:
        with open(path, "ab") as f:
            f.write(b"line %08d\n" % (10**7 + len(appended)))
        appended.append(os.path.getsize(path))

    monkeypatch.setattr(capture_mod, "_after_read_hook", grow)
    res = checkpoint(store, src, everything, state_dir=sd)
    monkeypatch.setattr(capture_mod, "_after_read_hook", None)
    assert res.stored == ["root:log"] and res.unsettled == ["root:log"] and res.skipped_busy == []
    dst = _areas(tmp_path, "fresh")
    restore(store, dst)
    got = (dst["root"] / "log").read_bytes()
    now = (src["root"] / "log").read_bytes()
    assert now.startswith(got) and len(got) in [len(body)] + appended  # exactly a size the file had
    assert list((sd / "tmp").iterdir()) == []  # the copies of the large one's reads are gone
    # never remembered as read: the next (quiet) checkpoint reads it again and stores all of it
    res2 = checkpoint(store, src, everything, state_dir=sd)
    assert res2.stored == ["root:log"] and res2.unsettled == []
    dst2 = _areas(tmp_path, "fresh2")
    restore(store, dst2)
    assert (dst2["root"] / "log").read_bytes() == now


def test_file_rewritten_in_place_between_reads_is_stored_when_two_reads_agree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file rewritten faster than the racy-timestamp guard can wait is stored once two whole reads return the
    same bytes, even though its mtime keeps moving; such a capture is not cached as read."""
    store = make_store(tmp_path)
    src = _areas(tmp_path)
    sd = tmp_path / "state"
    p = write(src["root"], "progress", b"n=000001".ljust(64))
    reads = [0]

    def touch(path: str) -> None:
        reads[0] += 1
        st = os.stat(path)
        # the first pass's reads each see a new version; afterwards only the timestamps move
        data = (b"n=%06d" % reads[0]).ljust(64) if reads[0] <= 3 else p.read_bytes()
        with open(path, "r+b") as f:
            f.write(data)
        os.utime(path, ns=(st.st_atime_ns, time.time_ns()))

    monkeypatch.setattr(capture_mod, "_after_read_hook", touch)
    res = checkpoint(store, src, everything, state_dir=sd)
    monkeypatch.setattr(capture_mod, "_after_read_hook", None)
    assert res.stored == ["root:progress"] and res.unsettled == ["root:progress"], res
    dst = _areas(tmp_path, "fresh")
    restore(store, dst)
    assert (dst["root"] / "progress").read_bytes() == p.read_bytes()


def test_deadline_stores_newest_first_and_reports_the_rest(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    src = _areas(tmp_path)
    sd = tmp_path / "state"
    write(src["root"], "old", "o")
    checkpoint(store, src, everything, state_dir=sd)
    now = time.time_ns()
    for i in range(20):
        write(src["root"], f"f{i:02d}", os.urandom(1000), mtime_ns=now - (20 - i) * 1_000_000_000)
    # a deadline already in the past: nothing new fits, the previous state is kept, and we say so
    res = checkpoint(store, src, everything, state_dir=sd, deadline=time.monotonic() - 1)
    assert len(res.missed_deadline) == 20 and res.stored == []
    assert res.missed_deadline[0] == "root:f19"  # most recently modified first
    # plenty of time: everything goes
    res = checkpoint(store, src, everything, state_dir=sd, deadline=time.monotonic() + 60)
    assert res.missed_deadline == [] and len(res.stored) == 20
    assert res.stored[0] == "root:f19"


def test_deadline_commits_what_finished_and_abandons_an_upload_that_did_not(tmp_path: Path) -> None:
    """Issue 11 point 1: under a deadline nothing is estimated. Small files go first, large ones after, and
    at the cutoff (the deadline minus the manifest's reserve) an upload still running is abandoned: the rest
    is committed in time and the large file keeps its previous version, listed in missed_deadline."""

    class SlowBigPacks(PosixStore):
        def put(self, key: str, data: bytes, *, exclusive: bool = False) -> None:
            if key.startswith("packs/") and len(data) > 1 << 20:
                time.sleep(2.5)  # the large file's packs cannot land before the cutoff
            super().put(key, data, exclusive=exclusive)

    store = SlowBigPacks(tmp_path / "store")
    src = _areas(tmp_path)
    sd = tmp_path / "state"
    write(src["root"], "small", "s1")
    big_a, big_b = os.urandom(9_000_000), os.urandom(9_000_000)  # random: no chunk repeats within the file
    write(src["root"], "big", big_a)
    checkpoint(store, src, everything, state_dir=sd)
    write(src["root"], "big", big_b)
    write(src["root"], "small", "s2")
    t0 = time.monotonic()
    res = checkpoint(store, src, everything, state_dir=sd, deadline=t0 + 1.5)
    took = time.monotonic() - t0
    assert took < 1.5, took  # the manifest was written before the deadline, not after the slow upload
    assert res.snapshot_id and res.stored == ["root:small"] and res.missed_deadline == ["root:big"], res
    dst = _areas(tmp_path, "fresh")
    restore(store, dst)
    assert (dst["root"] / "small").read_text() == "s2"
    assert (dst["root"] / "big").read_bytes() == big_a
    time.sleep(2.5)  # the abandoned upload ends (aborted or finished); the next checkpoint stores the file
    res2 = checkpoint(store, src, everything, state_dir=sd)
    assert res2.stored == ["root:big"]


def test_keep_trims_old_manifests(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    src = _areas(tmp_path)
    sd = tmp_path / "state"
    ids = []
    for i in range(5):
        write(src["root"], "counter", str(i))
        ids.append(checkpoint(store, src, everything, state_dir=sd, keep=3).snapshot_id)
    assert [s.id for s in list_snapshots(store)] == ids[-3:]


def test_large_files_are_chunked_into_packs_and_round_trip(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    src = _areas(tmp_path)
    big = os.urandom(3 * 1024 * 1024 + 17)
    write(src["root"], "big.bin", big)
    write(src["root"], "small", "s")
    res = checkpoint(
        store, src, everything, state_dir=tmp_path / "state", large_file=1024 * 1024, pack_size=4096
    )
    assert sorted(res.stored) == ["root:big.bin", "root:small"]
    assert store_keys(store, "objects/") == set()  # format v2: no objects, every chunk in a pack
    assert len(store_keys(store, "packs/")) >= 3  # packs sealed at pack_size: about one per chunk here
    dst = _areas(tmp_path, "fresh")
    restore(store, dst)
    assert (dst["root"] / "big.bin").read_bytes() == big


def test_many_small_files_fill_several_packs(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    src = _areas(tmp_path)
    for i in range(300):
        write(src["root"], f"d{i % 7}/f{i}", os.urandom(1000 + i))
    res = checkpoint(store, src, everything, state_dir=tmp_path / "state", pack_size=64 * 1024, transfers=4)
    assert res.files == 300
    assert 4 <= len(store_keys(store, "packs/")) <= 10
    dst = _areas(tmp_path, "fresh")
    out = restore(store, dst, transfers=3)
    assert len(out.restored) == 300
    assert tree(dst["root"]) == tree(src["root"])


def test_state_dir_inside_an_area_is_not_checkpointed(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    src = _areas(tmp_path)
    write(src["root"], "f", "x")
    checkpoint(store, src, everything, state_dir=src["scratch"] / ".state")
    assert latest_paths(store) == {("root", "f")}


def test_lost_state_dir_rehashes_but_stores_nothing_new(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    src = _areas(tmp_path)
    for i in range(10):
        write(src["root"], f"f{i}", f"content {i}")
    checkpoint(store, src, everything, state_dir=tmp_path / "state1")
    res = checkpoint(store, src, everything, state_dir=tmp_path / "state2")
    assert res.snapshot_id is None and res.stored == []


def test_restore_seeds_the_stat_cache(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    src = _areas(tmp_path)
    for i in range(10):
        write(src["root"], f"f{i}", f"content {i}")
    checkpoint(store, src, everything, state_dir=tmp_path / "state1")
    dst = _areas(tmp_path, "node2")
    restore(store, dst, state_dir=tmp_path / "state2")
    reads: list[str] = []
    orig = capture_mod.capture

    def spy(path: str, ctx: object) -> object:
        reads.append(path)
        return orig(path, ctx)  # type: ignore[arg-type]

    capture_mod.capture = spy  # type: ignore[assignment]
    try:
        res = checkpoint(store, dst, everything, state_dir=tmp_path / "state2")
    finally:
        capture_mod.capture = orig
    assert res.snapshot_id is None and reads == []


def test_sqlite_sidecars_are_not_recorded_and_wal_growth_is_seen(tmp_path: Path) -> None:
    import sqlite3

    store = make_store(tmp_path)
    src = _areas(tmp_path)
    db = src["root"] / "state" / "app.db"
    db.parent.mkdir(parents=True)
    con = sqlite3.connect(db)
    con.execute("pragma journal_mode=wal")
    con.execute("create table t(x)")
    con.execute("insert into t values (1)")
    con.commit()
    assert (db.parent / "app.db-wal").exists()
    sd = tmp_path / "state"
    res = checkpoint(store, src, everything, state_dir=sd)
    assert res.stored == ["root:state/app.db"]
    assert latest_paths(store) == {("root", "state/app.db")}
    main_stat = os.stat(db)
    con.execute("insert into t values (2)")
    con.commit()
    assert os.stat(db).st_mtime_ns == main_stat.st_mtime_ns  # only the -wal moved
    res2 = checkpoint(store, src, everything, state_dir=sd)
    assert res2.stored == ["root:state/app.db"]
    con.close()
    dst = _areas(tmp_path, "fresh")
    restore(store, dst)
    r = sqlite3.connect(dst["root"] / "state" / "app.db")
    assert r.execute("pragma integrity_check").fetchone() == ("ok",)
    assert r.execute("select x from t order by x").fetchall() == [(1,), (2,)]
    r.close()


def test_sqlite_header_but_not_a_database_is_copied_raw(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    src = _areas(tmp_path)
    junk = SQLITE_MAGIC + b"\xff" * 200
    write(src["root"], "fake.db", junk)
    res = checkpoint(store, src, everything, state_dir=tmp_path / "state")
    assert res.stored == ["root:fake.db"]
    dst = _areas(tmp_path, "fresh")
    restore(store, dst)
    assert (dst["root"] / "fake.db").read_bytes() == junk


def test_unreadable_directory_keeps_previous_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory that cannot be listed (EACCES, a dying FUSE mount) is not the same as an empty one."""
    from fractfs.snapshot import scan

    store = make_store(tmp_path)
    src = _areas(tmp_path)
    write(src["root"], "locked/f", "x")
    write(src["root"], "open/g", "y")
    sd = tmp_path / "state"
    checkpoint(store, src, everything, state_dir=sd)
    real = os.scandir

    def scandir(path: str):  # type: ignore[no-untyped-def]
        if str(path).endswith("/locked"):
            raise PermissionError(13, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(scan.os, "scandir", scandir)
    write(src["root"], "open/g", "changed")
    res = checkpoint(store, src, everything, state_dir=sd)
    assert res.deleted == [] and res.stored == ["root:open/g"]
    assert ("root", "locked/f") in latest_paths(store)
    # the next round (directory readable again) does not trust the no-op shortcut blindly
    monkeypatch.setattr(scan.os, "scandir", real)
    (src["root"] / "locked" / "f").unlink()
    res = checkpoint(store, src, everything, state_dir=sd)
    assert res.deleted == ["root:locked/f"]


def test_round_trip_through_an_fsspec_store(tmp_path: Path) -> None:
    """The engine only uses the Store protocol (and put_many/get_many when offered): any backend works."""
    pytest.importorskip("fsspec")
    import uuid

    from fractfs.stores import FsspecStore

    store = FsspecStore(f"memory://fractfs-test-{uuid.uuid4().hex}/ck")
    src = _areas(tmp_path)
    _populate(src["root"])
    for i in range(40):
        write(src["scratch"], f"many/{i}", os.urandom(3000))
    big = os.urandom(300_000)
    write(src["root"], "big", big)
    sd = tmp_path / "state"
    res = checkpoint(store, src, everything, state_dir=sd, pack_size=16_384, large_file=200_000)
    assert res.snapshot_id and checkpoint(store, src, everything, state_dir=sd).snapshot_id is None
    dst = _areas(tmp_path, "fresh")
    out = restore(store, dst)
    assert not out.errors and not out.refused
    assert tree(dst["root"], mtimes=True) == tree(src["root"], mtimes=True)
    assert tree(dst["scratch"]) == tree(src["scratch"])


def test_restore_temp_files_are_never_recorded_and_old_ones_are_removed(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_store(tmp_path)
    src = _areas(tmp_path)
    write(src["root"], "real", "x")
    fresh = write(src["root"], "sub/.fractfs-tmp-abc-1", "being written by a restore")
    old = write(src["root"], ".fractfs-tmp-dead-7", "left by a crashed restore")
    monkeypatch.setattr(engine_mod, "STALE_TEMP_NS", 10**9 * 3600)
    checkpoint(store, src, everything, state_dir=tmp_path / "state")
    assert latest_paths(store) == {("root", "real")}
    assert fresh.exists() and old.exists()  # both too young to be called stale
    monkeypatch.setattr(engine_mod, "STALE_TEMP_NS", -1)
    checkpoint(store, src, everything, state_dir=tmp_path / "state")
    assert not old.exists() and not fresh.exists()
