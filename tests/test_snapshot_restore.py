"""restore(): verification, fallback from damaged snapshots, hostile manifests, overwrite rules, disk full."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from test_snapshot_support import everything, make_store, temp_leftovers, tree, write

from fractfs.errors import CorruptCheckpointError, RestoreError
from fractfs.snapshot import checkpoint, latest_paths, list_snapshots, restore, verify
from fractfs.snapshot.format import FORMAT_NAME, SnapName, object_key
from fractfs.stores import PosixStore
from test_reliability_support import put_object, put_pack


def _areas(tmp_path: Path, name: str = "app") -> dict[str, Path]:
    return {"root": tmp_path / name}


def _raw_manifest(
    store: PosixStore, seq: int, entries: list[dict[str, Any]], *, version: int = 1, **extra: Any
) -> SnapName:
    """Write a manifest exactly as given (valid checksum name), bypassing every check of the writer."""
    doc = {
        "format": FORMAT_NAME,
        "version": version,
        "seq": seq,
        "created_ns": 1,
        "node": "evil",
        "parent": None,
        "entries": entries,
        **extra,
    }
    data = gzip.compress(json.dumps(doc).encode(), mtime=0)
    name = SnapName(seq, hashlib.sha256(data).hexdigest())
    store.put(name.key, data)
    return name


_put_pack = put_pack  # one hand-made-pack helper for the restore and the hostile-snapshot tests


def _file(path: str, pid: str, loc: tuple[int, int, str], area: str = "root", **kw: Any) -> dict[str, Any]:
    off, n, sha = loc
    d = {
        "area": area,
        "path": path,
        "type": "file",
        "mode": 0o644,
        "size": n,
        "mtime_ns": 1,
        "sha256": sha,
        "pack": pid,
        "offset": off,
        "length": n,
    }
    d.update(kw)
    return d


def test_bit_flip_in_a_pack_skips_that_file_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = make_store(tmp_path)
    src = _areas(tmp_path)
    for i in range(5):
        write(src["root"], f"f{i}", f"file number {i} " * 50)
    checkpoint(store, src, everything, state_dir=tmp_path / "state")
    ((pkey, _),) = list(store.list("packs/"))
    pack_path = store.root / pkey
    data = bytearray(pack_path.read_bytes())
    flen = len("file number 0 " * 50)
    data[2 * flen + 10] ^= 0x01  # inside f2 (files are packed in path order)
    pack_path.write_bytes(bytes(data))

    dst = _areas(tmp_path, "fresh")
    with caplog.at_level(logging.ERROR, logger="fractfs"):
        out = restore(store, dst)
    assert len(out.errors) == 1 and out.errors[0].startswith("root:f2:")
    assert any("f2" in r.message and r.levelno == logging.ERROR for r in caplog.records)
    assert sorted(out.restored) == ["root:f0", "root:f1", "root:f3", "root:f4"]
    assert not (dst["root"] / "f2").exists()
    assert temp_leftovers(dst["root"]) == []
    v = verify(store)
    assert (
        not v.ok and v.bad_blobs == [pkey] and len(v.damaged_files) == 1 and "root:f2" in v.damaged_files[0]
    )


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete-middle", "empty"])
def test_damaged_newest_manifest_falls_back(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = make_store(tmp_path)
    src = _areas(tmp_path)
    sd = tmp_path / "state"
    write(src["root"], "v", "one")
    first = checkpoint(store, src, everything, state_dir=sd)
    write(src["root"], "v", "two")
    second = checkpoint(store, src, everything, state_dir=sd)
    assert first.snapshot_id and second.snapshot_id
    path = store.root / f"snapshots/{second.snapshot_id}.json.gz"
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:20] + bytes([data[20] ^ 0x40]) + data[21:])
    elif damage == "delete-middle":
        path.write_bytes(data[:10] + data[30:])
    else:
        path.write_bytes(b"")
    dst = _areas(tmp_path, "fresh")
    with caplog.at_level(logging.ERROR, logger="fractfs"):
        out = restore(store, dst)
    assert out.snapshot_id == first.snapshot_id
    assert out.fell_back_from == [second.snapshot_id]
    assert any(second.snapshot_id in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    assert (dst["root"] / "v").read_text() == "one"
    infos = {i.id: i for i in list_snapshots(store)}
    assert not infos[second.snapshot_id].valid and infos[first.snapshot_id].valid
    # an explicit request for the damaged one is an error, not a silent fallback
    with pytest.raises(CorruptCheckpointError):
        restore(store, _areas(tmp_path, "x"), snapshot_id=second.snapshot_id)
    # the next checkpoint commits on top of the damaged one's sequence number
    if damage != "flip":
        # a manifest whose size changed is noticed from the listing alone: the unchanged tree is committed
        # again, on top of the newest valid snapshot
        third = checkpoint(store, src, everything, state_dir=sd)
        assert third.parent == first.snapshot_id
    else:
        # same size, different bytes: only verify() (or a restore) notices; the next change commits
        assert not verify(store, second.snapshot_id).ok
        write(src["root"], "v", "three")
        third = checkpoint(store, src, everything, state_dir=sd)
    assert third.snapshot_id and third.snapshot_id > second.snapshot_id
    again = _areas(tmp_path, "again")
    assert restore(store, again).snapshot_id == third.snapshot_id
    assert (again["root"] / "v").read_text() == ("three" if damage == "flip" else "two")


def test_unknown_format_version_is_skipped(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    src = _areas(tmp_path)
    write(src["root"], "v", "one")
    first = checkpoint(store, src, everything, state_dir=tmp_path / "state")
    future = _raw_manifest(store, 99, [], version=2)
    out = restore(store, _areas(tmp_path, "fresh"))
    assert out.snapshot_id == first.snapshot_id and out.fell_back_from == [future.id]


def test_hostile_manifest_entries_are_refused(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "target"
    target.mkdir()
    os.symlink(outside, target / "linkdir")  # already on disk: must not be written through
    (target / "plainfile").write_text("I am a file")
    payload = b"pwned\n"
    good = b"fine\n"
    pid, locs = _put_pack(store, [payload, good])
    bad, ok = locs[0], locs[1]
    entries = [
        _file("../escape", pid, bad),
        _file("/abs/escape", pid, bad),
        _file("a/../../escape", pid, bad),
        _file("a//b", pid, bad),
        _file("./dot", pid, bad),
        _file("nul\x00byte", pid, bad),
        _file("", pid, bad),
        _file("linkdir/payload", pid, bad),
        _file("plainfile/child", pid, bad),
        _file("sizelie", pid, bad, size=3),
        _file("dup", pid, bad),
        _file("dup", pid, ok),
        {"area": "root", "path": "weird", "type": "fifo", "mode": 0o644},
        {"area": "../root", "path": "x", "type": "dir", "mode": 0o755},
        {"area": "root", "path": "evil-rel", "type": "symlink", "target": "../../outside", "mtime_ns": 1},
        {"area": "root", "path": "evil-abs", "type": "symlink", "target": str(outside), "mtime_ns": 1},
        # chain: each link looks inside on its own, together they climb out
        {"area": "root", "path": "a", "type": "dir", "mode": 0o755},
        {"area": "root", "path": "a/up", "type": "symlink", "target": "..", "mtime_ns": 1},
        {"area": "root", "path": "chain", "type": "symlink", "target": "a/up/..", "mtime_ns": 1},
        # links that lead out are data (restored verbatim); writing through them is what is refused
        _file("evil-abs/payload", pid, bad),
        _file("chain/payload", pid, bad),
        # a file entry, then an entry below it
        _file("f", pid, ok),
        _file("f/g", pid, bad),
        # legit neighbours that must still restore
        _file("good/file", pid, ok),
        {"area": "root", "path": "good/link", "type": "symlink", "target": "file", "mtime_ns": 1},
        {
            "area": "root",
            "path": "abs-inside",
            "type": "symlink",
            "target": str(target / "good"),
            "mtime_ns": 1,
        },
    ]
    _raw_manifest(store, 1, entries)
    out = restore(store, {"root": target})
    refused = "\n".join(out.refused)
    for p in [
        "../escape",
        "/abs/escape",
        "a/../../escape",
        "a//b",
        "./dot",
        "linkdir/payload",
        "plainfile/child",
        "sizelie",
        "dup",
        "weird",
        "evil-abs/payload",
        "chain/payload",
        "f/g",
    ]:
        assert repr(p) in refused or f"root:{p}:" in refused, p
    assert "nul" in refused and "'../root'" in refused
    assert sorted(out.restored) == [
        "root:a/up",
        "root:abs-inside",
        "root:chain",
        "root:evil-abs",
        "root:evil-rel",
        "root:f",
        "root:good/file",
        "root:good/link",
    ]
    # nothing landed outside the target, and nothing was written through the pre-existing symlink
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "escape").exists()
    assert os.readlink(target / "chain") == "a/up/.." and os.readlink(target / "evil-abs") == str(outside)
    assert os.readlink(target / "evil-rel") == "../../outside"
    assert (target / "plainfile").read_text() == "I am a file"
    assert (target / "good" / "link").read_bytes() == good
    for dirpath, _dirs, files in os.walk(tmp_path):
        for name in files:
            p = Path(dirpath) / name
            if not str(p).startswith(str(store.root)) and not p.is_symlink():
                assert p.read_bytes() != payload, p


def test_default_restore_never_clobbers(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    src = _areas(tmp_path)
    write(src["root"], "a", "from snapshot")
    write(src["root"], "b", "from snapshot")
    os.symlink("a", src["root"] / "l")
    checkpoint(store, src, everything, state_dir=tmp_path / "state")
    dst = _areas(tmp_path, "fresh")
    write(dst["root"], "a", "local edit")
    os.symlink("b", dst["root"] / "l")
    out = restore(store, dst)
    assert out.restored == ["root:b"] and sorted(out.skipped_existing) == ["root:a", "root:l"]
    assert (dst["root"] / "a").read_text() == "local edit"
    assert os.readlink(dst["root"] / "l") == "b"


def test_overwrite_replaces_only_differing_content(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    src = _areas(tmp_path)
    write(src["root"], "same", "identical")
    write(src["root"], "diff", "from snapshot")
    os.symlink("same", src["root"] / "l")
    checkpoint(store, src, everything, state_dir=tmp_path / "state")
    dst = _areas(tmp_path, "fresh")
    write(dst["root"], "same", "identical")
    write(dst["root"], "diff", "local edit")
    os.symlink("diff", dst["root"] / "l")
    ino_same = os.stat(dst["root"] / "same").st_ino
    out = restore(store, dst, overwrite=True)
    assert sorted(out.restored) == ["root:diff", "root:l"] and out.skipped_existing == ["root:same"]
    assert (dst["root"] / "diff").read_text() == "from snapshot"
    assert os.stat(dst["root"] / "same").st_ino == ino_same
    assert os.readlink(dst["root"] / "l") == "same"


def test_overwrite_also_restores_missing_files_and_replaces_links_to_identical_content(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    src = _areas(tmp_path)
    write(src["root"], "gone", "only in the snapshot")
    write(src["root"], "file", "same bytes")
    checkpoint(store, src, everything, state_dir=tmp_path / "state")
    dst = _areas(tmp_path, "fresh")
    write(dst["root"], "elsewhere!", "same bytes")
    # a link whose own size (its target's name) and whose target's bytes both match: still not the file
    os.symlink("elsewhere!", dst["root"] / "file")
    out = restore(store, dst, overwrite=True)
    assert sorted(out.restored) == ["root:file", "root:gone"], out
    assert (dst["root"] / "gone").read_text() == "only in the snapshot"
    assert not (dst["root"] / "file").is_symlink() and (dst["root"] / "file").read_text() == "same bytes"


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    src = _areas(tmp_path)
    write(src["root"], "x/y", "1")
    checkpoint(store, src, everything, state_dir=tmp_path / "state")
    dst = _areas(tmp_path, "fresh")
    out = restore(store, dst, dry_run=True)
    assert out.restored == ["root:x/y"]
    assert not dst["root"].exists()


def test_restore_want_and_area_subset(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    src = {"root": tmp_path / "app", "scratch": tmp_path / "scr"}
    write(src["root"], "keep/a", "1")
    write(src["root"], "skip/b", "2")
    write(src["scratch"], "c", "3")
    checkpoint(store, src, everything, state_dir=tmp_path / "state")
    dst = tmp_path / "elsewhere"
    out = restore(store, {"root": dst}, want=lambda a, r, d: not r.startswith("skip"))
    assert out.restored == ["root:keep/a"]
    assert set(tree(dst)) == {"keep", "keep/a"}


def test_empty_store_restores_nothing(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    out = restore(store, _areas(tmp_path))
    assert out.snapshot_id is None and out.restored == [] and out.errors == []
    assert latest_paths(store) == set()


def test_missing_pack_is_an_error_for_its_files(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    src = _areas(tmp_path)
    write(src["root"], "a", "1")
    checkpoint(store, src, everything, state_dir=tmp_path / "state")
    for k, _ in list(store.list("packs/")):
        store.delete(k)
    out = restore(store, _areas(tmp_path, "fresh"))
    assert out.restored == [] and len(out.errors) == 1 and out.errors[0].startswith("root:a:")


@pytest.fixture
def small_tmpfs(tmp_path: Path):  # type: ignore[no-untyped-def]
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True,
                       check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("large", [False, True])
def test_disk_full_raises_and_leaves_no_partial_file(tmp_path: Path, small_tmpfs: Path, large: bool) -> None:
    store = make_store(tmp_path)
    src = _areas(tmp_path)
    blobs = {f"f{i}": os.urandom(300_000) for i in range(6)}  # 1.8 MB into a 1 MB disk
    for name, b in blobs.items():
        write(src["root"], name, b)
    kw = {"large_file": 100_000} if large else {}
    checkpoint(store, src, everything, state_dir=tmp_path / "state", **kw)
    with pytest.raises(RestoreError) as ei:
        restore(store, {"root": small_tmpfs / "app"}, transfers=2)
    msg = str(ei.value)
    assert "disk full" in msg and str(small_tmpfs) in msg
    assert temp_leftovers(small_tmpfs) == []
    # all or nothing: files are renamed into place only after every one was written and flushed
    assert [p for p in small_tmpfs.rglob("*") if p.is_file()] == []
    # with room to spare, the same restore goes through
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_tmpfs)], check=True)
    out = restore(store, {"root": small_tmpfs / "app"}, transfers=2)
    assert len(out.restored) == 6 and not out.errors
    assert all((small_tmpfs / "app" / n).read_bytes() == b for n, b in blobs.items())


def test_objects_missing_identical_or_with_masked_mode_bits(tmp_path: Path) -> None:
    """Files stored as objects (format v1's large files, in a v1 snapshot written by hand: checkpoints write
    v2, which has none): an object missing from the store is reported by name and leaves no temporary file; an
    identical local copy is left alone under ``overwrite``; a mode the umask would mask (0o666) is restored
    exactly."""
    store = make_store(tmp_path)
    kept, lost_oid = put_object(store, b"object one"), put_object(store, b"object two")
    pid, [loc] = _put_pack(store, [b"abc"])  # packed: written by the other path
    entries = [
        {"area": "root", "path": "kept", "type": "file", "mode": 0o666, "size": 10, "mtime_ns": 1,
         "sha256": kept, "object": kept},
        {"area": "root", "path": "lost", "type": "file", "mode": 0o644, "size": 10, "mtime_ns": 1,
         "sha256": lost_oid, "object": lost_oid},
        _file("packed", pid, loc, mode=0o666),
    ]
    _raw_manifest(store, 1, entries)
    lost = object_key(lost_oid)
    store.delete(lost)
    dst = _areas(tmp_path, "fresh")
    old = os.umask(0o022)
    try:
        out = restore(store, dst)
    finally:
        os.umask(old)
    assert sorted(out.restored) == ["root:kept", "root:packed"], out
    assert any("root:lost" in e and "missing" in e for e in out.errors), out
    assert os.stat(dst["root"] / "kept").st_mode & 0o777 == 0o666
    assert os.stat(dst["root"] / "packed").st_mode & 0o777 == 0o666
    assert temp_leftovers(dst["root"]) == [] and not (dst["root"] / "lost").exists()
    again = restore(store, dst, overwrite=True)
    assert sorted(again.skipped_existing) == ["root:kept", "root:packed"], again


# -- new directories are built under a temp name and renamed into place whole (issue 13) ---------------------

_CRASH_AT_FLUSH = r"""
import os, sys
from pathlib import Path
from fractfs.snapshot import restorer
from fractfs.stores import PosixStore
restorer._flush_filesystems = lambda roots: os._exit(9)  # the power cut: everything written, nothing placed
restorer.restore(PosixStore(Path(sys.argv[1])), {"root": Path(sys.argv[2])})
"""


def test_restore_killed_before_placing_leaves_no_final_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    import sys

    import fractfs
    from fractfs.snapshot import engine

    store = make_store(tmp_path)
    src = _areas(tmp_path)
    for i in range(30):
        write(src["root"], f"d{i % 3}/sub/f{i}", f"file {i} " * (i + 1))
    write(src["root"], "top.txt", "in the area root")
    checkpoint(store, src, everything, state_dir=tmp_path / "state")
    dst = _areas(tmp_path, "fresh")
    dst["root"].mkdir()
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(fractfs.__file__)))
    run = subprocess.run([sys.executable, "-c", _CRASH_AT_FLUSH, str(store.root), str(dst["root"])], env=env,
                         capture_output=True, text=True)
    assert run.returncode == 9, run.stderr
    # every file was written, but only under temp names: no final name holds anything yet
    left = sorted(p.name for p in dst["root"].iterdir())
    assert left and all(n.startswith(".fractfs-tmp-") for n in left), left
    assert sum(1 for _ in dst["root"].rglob("f*")) == 30  # the trees were full, just not placed

    # the next restore does it all again; the dead one's trees are invisible to it and to checkpoints
    out = restore(store, dst, state_dir=tmp_path / "state2")
    assert len(out.restored) == 31 and not out.errors
    assert {k: v for k, v in tree(dst["root"]).items() if ".fractfs-tmp-" not in k} == tree(src["root"])
    monkeypatch.setattr(engine, "STALE_TEMP_NS", -1)  # as if the dead restore were an hour old
    res = checkpoint(store, dst, everything, state_dir=tmp_path / "state2")
    assert res.snapshot_id is None and temp_leftovers(dst["root"]) == []


def test_first_checkpoint_after_restore_is_a_walk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fractfs.snapshot import catalog, diff, statcache

    store = make_store(tmp_path)
    src = _areas(tmp_path)
    for i in range(20):
        write(src["root"], f"a/b{i % 4}/f{i}", f"content {i}")
    os.symlink("a/b0/f0", src["root"] / "link")
    os.chmod(src["root"] / "a" / "b1", 0o750)
    checkpoint(store, src, everything, state_dir=tmp_path / "state")
    dst = _areas(tmp_path, "fresh")
    out = restore(store, dst, state_dir=tmp_path / "s2")
    assert len(out.restored) == 21
    hdr, _ = statcache.read_header(tmp_path / "s2")
    assert hdr is not None and hdr.expect and hdr.snapshot_size and hdr.digest is None

    def boom(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("the first checkpoint after a restore compared row by row")

    with monkeypatch.context() as mp:
        mp.setattr(diff, "compare", boom)
        mp.setattr(catalog, "newest_valid", boom)
        res = checkpoint(store, dst, everything, state_dir=tmp_path / "s2")
    assert res.snapshot_id is None and res.files == 20 and res.parent == out.snapshot_id
    hdr, _ = statcache.read_header(tmp_path / "s2")
    assert hdr is not None and hdr.digest and not hdr.expect
    # and the cache it left is right: a change is seen, nothing else is re-read
    write(dst["root"], "a/b2/f2", "changed after the restore")
    res = checkpoint(store, dst, everything, state_dir=tmp_path / "s2")
    assert res.snapshot_id is not None and res.stored == ["root:a/b2/f2"]


def test_first_checkpoint_after_restore_sees_a_change(tmp_path: Path) -> None:
    """The restore's fingerprint must not hide a file written between the restore and the checkpoint."""
    store = make_store(tmp_path)
    src = _areas(tmp_path)
    for i in range(6):
        write(src["root"], f"d/f{i}", f"content {i}")
    checkpoint(store, src, everything, state_dir=tmp_path / "state")
    dst = _areas(tmp_path, "fresh")
    restore(store, dst, state_dir=tmp_path / "s2")
    write(dst["root"], "d/f3", "the app wrote this")
    write(dst["root"], "d/new", "and this")
    res = checkpoint(store, dst, everything, state_dir=tmp_path / "s2")
    assert res.snapshot_id is not None and sorted(res.stored) == ["root:d/f3", "root:d/new"]


def test_directory_appearing_during_restore_is_merged_never_clobbered(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from fractfs.snapshot import restorer

    store = make_store(tmp_path)
    src = _areas(tmp_path)
    for name in ("a", "b", "deep/c"):
        write(src["root"], f"sub/{name}", f"restored {name}")
    checkpoint(store, src, everything, state_dir=tmp_path / "state")
    dst = _areas(tmp_path, "fresh")
    real_flush = restorer._flush_filesystems

    def someone_else_writes(roots: list[str]) -> None:  # after the files are written, before they are placed
        if not (dst["root"] / "sub").exists():
            write(dst["root"], "sub/a", "written by someone else meanwhile")
            write(dst["root"], "sub/mine", "theirs too")
        real_flush(roots)

    monkeypatch.setattr(restorer, "_flush_filesystems", someone_else_writes)
    out = restore(store, dst)
    assert sorted(out.restored) == ["root:sub/b", "root:sub/deep/c"] and out.skipped_existing == ["root:sub/a"]
    assert (dst["root"] / "sub" / "a").read_text() == "written by someone else meanwhile"
    assert (dst["root"] / "sub" / "mine").read_text() == "theirs too"
    assert (dst["root"] / "sub" / "deep" / "c").read_text() == "restored deep/c"
    assert temp_leftovers(dst["root"]) == [] and not out.errors


_GOOD_FILE = {"area": "root", "path": "a/b.txt", "type": "file", "mode": 0o644, "size": 5, "mtime_ns": 1,
              "sha256": "a" * 64, "pack": "b" * 64, "offset": 0, "length": 5}
_EMPTY_FILE = {"area": "root", "path": "a/b.txt", "type": "file", "mode": 0o644, "size": 0, "mtime_ns": 1,
               "sha256": "e" * 64}


@pytest.mark.parametrize(("field", "value"), [
    ("length", True), ("length", 4), ("size", True), ("mode", 0o10000), ("mode", -1), ("mtime_ns", 1.5),
    ("offset", -1), ("path", "a//b"), ("path", "./a"), ("path", "a/.."), ("path", "a/./b"), ("path", "/a"),
    ("path", "a/"), ("path", "a\x00b"), ("path", ""), ("sha256", "A" * 64), ("pack", "b" * 63),
    ("sqlite", 1), ("object", "c" * 64), ("area", "no spaces"), ("pack", None), ("pack", 0), ("mode", True),
    ("mtime_ns", True), ("offset", True),
])
@pytest.mark.parametrize("good", [_GOOD_FILE, _EMPTY_FILE], ids=["packed", "empty"])
def test_manifest_decode_fast_path_agrees_with_the_checks(field: str, value: Any, good: dict[str, Any]) -> None:
    """decode_manifest parses the common file entries on a fast path: it must refuse exactly what
    entry_from_json refuses, and make the same entry of what it accepts."""
    from fractfs.snapshot.format import BadEntry, decode_manifest, entry_from_json

    bad = dict(good, **{field: value})
    if value is True and field != "sqlite":
        bad = dict(bad, size=1, mode=1, mtime_ns=1, offset=1)  # equal to True, yet not an int
    if good is _EMPTY_FILE and field in ("length", "offset", "pack") and value is not None and value != 0:
        bad = dict(bad, size=3)  # without a pack these fields are unused: make the entry wrong another way
    try:
        expect = [entry_from_json(bad)]
    except BadEntry:
        expect = []
    doc = {"format": FORMAT_NAME, "version": 1, "seq": 1, "created_ns": 1, "node": "n", "parent": None,
           "entries": [dict(good, path="first"), bad]}
    data = gzip.compress(json.dumps(doc).encode(), mtime=0)
    m = decode_manifest(SnapName(1, hashlib.sha256(data).hexdigest()), data)
    assert m.entries[1:] == expect and len(m.bad) == 1 - len(expect)


def test_restore_of_an_unsorted_manifest_still_seeds_a_walk_only_checkpoint(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A manifest fractfs did not write may list entries in any order (children before their directory too):
    the restore handles it, and the fingerprint it leaves does not depend on the order."""
    from fractfs.snapshot import diff

    store = make_store(tmp_path)
    blobs = [f"blob {i}".encode() for i in range(4)]
    pid, locs = _put_pack(store, blobs)
    entries = [_file("z/b/f3", pid, locs[3]), _file("a/f0", pid, locs[0]), _file("z/b/f2", pid, locs[2]),
               {"area": "root", "path": "z/b", "type": "dir", "mode": 0o750},
               {"area": "root", "path": "z", "type": "dir", "mode": 0o755},
               {"area": "root", "path": "a", "type": "dir", "mode": 0o755}, _file("a/f1", pid, locs[1])]
    _raw_manifest(store, 1, entries)
    dst = _areas(tmp_path, "fresh")
    out = restore(store, dst, state_dir=tmp_path / "s")
    assert len(out.restored) == 4 and not out.errors and not out.refused
    assert (dst["root"] / "z" / "b").stat().st_mode & 0o777 == 0o750
    monkeypatch.setattr(diff, "compare", lambda *_a, **_k: pytest.fail("compared row by row"))
    res = checkpoint(store, dst, everything, state_dir=tmp_path / "s")
    assert res.snapshot_id is None and res.files == 4


def test_first_checkpoint_after_a_restore_into_existing_directories_skips_the_full_compare(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the restore's fingerprint (a directory already existed, so its facts are not the restore's), the
    first checkpoint still confirms the tree from the cache rows alone, and still sees a change."""
    from fractfs.snapshot import diff, statcache

    store = make_store(tmp_path)
    src = _areas(tmp_path)
    for i in range(8):
        write(src["root"], f"a/f{i}", f"content {i}")
    checkpoint(store, src, everything, state_dir=tmp_path / "state")
    dst = _areas(tmp_path, "fresh")
    (dst["root"] / "a").mkdir(parents=True)
    restore(store, dst, state_dir=tmp_path / "s")
    hdr, _ = statcache.read_header(tmp_path / "s")
    assert hdr is not None and hdr.expect is None and hdr.snapshot_size
    with monkeypatch.context() as mp:
        mp.setattr(diff, "compare", lambda *_a, **_k: pytest.fail("compared with the base snapshot"))
        res = checkpoint(store, dst, everything, state_dir=tmp_path / "s")
    assert res.snapshot_id is None and res.files == 8
    write(dst["root"], "a/f1", "edited")
    res = checkpoint(store, dst, everything, state_dir=tmp_path / "s")
    assert res.stored == ["root:a/f1"]


def test_a_tree_that_cannot_be_renamed_into_place_fails_its_files_alone(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The files written inside a directory tree the restore built are only known by their state per entry
    (no list of them is kept): if that tree cannot be renamed to its final name, each of them is an error, the
    tree is removed, the other trees are in place, and the stat cache claims no facts for the missing files."""
    import errno
    import re

    from fractfs.snapshot import restorer, statcache

    store = make_store(tmp_path)
    src = _areas(tmp_path)
    for name in ("keep/a", "keep/b", "lost/c", "lost/deep/d"):
        write(src["root"], name, f"content of {name}")
    checkpoint(store, src, everything, state_dir=tmp_path / "state")
    dst = _areas(tmp_path, "fresh")
    dst["root"].mkdir()
    real = restorer._Writer._rename_new

    def refuse_lost(self: Any, tmp: str, dest: str) -> bool:
        if dest.endswith("/lost") and re.search(r"-d\d+$", tmp):
            raise OSError(errno.EACCES, "Permission denied", dest)
        return bool(real(self, tmp, dest))

    monkeypatch.setattr(restorer._Writer, "_rename_new", refuse_lost)
    out = restore(store, dst, state_dir=tmp_path / "s")
    assert out.restored == ["root:keep/a", "root:keep/b"], out
    assert sorted(out.errors) == ["root:lost/c: cannot move into place: Permission denied",
                                  "root:lost/deep/d: cannot move into place: Permission denied"]
    assert sorted(p.name for p in dst["root"].iterdir()) == ["keep"] and temp_leftovers(dst["root"]) == []
    hdr, at = statcache.read_header(tmp_path / "s")
    assert hdr is not None and hdr.expect is None
    rows = statcache.read_rows(tmp_path / "s", hdr, at)
    assert rows is not None and rows["root"]["keep/a"].facts is not None
    assert rows["root"]["lost/c"].facts is None and rows["root"]["lost/deep/d"].facts is None


def _packed(path: str, offset: int, size: int) -> tuple[Any, str]:
    from fractfs.snapshot.format import Entry

    return Entry("root", path, "file", 0o644, size, 0, "0" * 64, "p" * 64, offset), f"/dst/{path}"


@pytest.mark.parametrize("piece", [64 << 10, 1 << 20, 1 << 40])
def test_pack_ranges_cover_every_file_in_bounded_pieces(piece: int) -> None:
    """The reads of one pack (restorer._pack_ranges): every file inside exactly one read, reads cut at file
    boundaries to at most ``piece`` (a larger file alone) and _RUN_MAX, the dense start read from byte 0,
    and no read across the gap before a hostile far-away entry."""
    from fractfs.snapshot import restorer

    rng = __import__("random").Random(piece)
    items, off = [], 0
    for i in range(3000):
        size = rng.choice([0, 1, 100, 4000, 9000, 300_000 if i % 500 == 0 else 5000])
        items.append(_packed(f"f{i}", off, size))
        if i % 97 == 0:
            items.append(_packed(f"dup{i}", off, size))  # the same bytes twice (deduplicated)
        off += size
    items.append(_packed("far", 1 << 40, 10))  # far past the rest: a hostile entry into a sparse pack
    rng.shuffle(items)
    ranges = restorer._pack_ranges(items, piece)
    assert sorted(id(it) for _s, _n, run in ranges for it in run) == sorted(id(it) for it in items)
    for start, length, run in ranges:
        assert all(start <= e.offset and e.offset + e.size <= start + length for e, _ in run)
        assert length <= min(piece, restorer._RUN_MAX) or len(run) == 1 or all(e.offset == start for e, _ in run)
        assert length <= max(restorer._RUN_MAX, max(e.size for e, _ in run))
    assert ranges[0][0] == 0
    assert sum(n for _s, n, _r in ranges) < off + (1 << 21)  # the 1 TiB gap is never read
    # the pack's first 200 files without their first one: still one read from byte 0 (no read per gap)
    dense = sorted((it for it in items if it[0].path != "far"), key=lambda it: it[0].offset)[1:200]
    got = restorer._pack_ranges(dense, piece)
    assert got[0][0] == 0 and (piece < (1 << 20) or len(got) == 1)


def test_a_restore_asked_not_to_list_what_it_restored_still_counts_it(tmp_path: Path) -> None:
    """init() asks for the number alone (list_restored=False): a million labels would be ~70 MB and a sort."""
    src = {"root": tmp_path / "src"}
    for i in range(50):
        write(src["root"], f"d{i % 5}/f{i}", f"file {i}")
    (src["root"] / "link").symlink_to("d0/f0")
    store = make_store(tmp_path)
    checkpoint(store, src, everything, state_dir=tmp_path / "s1")
    listed = restore(store, {"root": tmp_path / "a"})
    counted = restore(store, {"root": tmp_path / "b"}, list_restored=False)
    assert counted.restored == [] and counted.restored_count == listed.restored_count == len(listed.restored) == 51
    assert tree(tmp_path / "a") == tree(tmp_path / "b") == tree(src["root"])
