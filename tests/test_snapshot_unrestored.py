"""A file a restore could not write is not a file the app deleted: later checkpoints keep its entry."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from test_snapshot_support import everything, make_store, write

from fractfs.snapshot import catalog, checkpoint, latest_paths, restore
from fractfs.snapshot.unrestored import RECORD_FILE
from fractfs.stores import PosixStore

BAD = b"the bytes that will be damaged on the store " * 20


def _node(tmp_path: Path, name: str) -> tuple[dict[str, Path], Path]:
    return {"root": tmp_path / name / "app"}, tmp_path / name / "state"


def _damage(store: PosixStore, needle: bytes) -> tuple[Path, bytes]:
    """Flip one byte inside ``needle`` in whichever pack holds it; returns the pack and its good bytes."""
    for key, _ in store.list("packs/"):
        p = store.root / key
        good = p.read_bytes()
        at = good.find(needle)
        if at >= 0:
            bad = bytearray(good)
            bad[at + 5] ^= 0x20
            p.write_bytes(bytes(bad))
            return p, good
    raise AssertionError("needle not stored uncompressed in any pack")


def _seeded(tmp_path: Path) -> PosixStore:
    store = make_store(tmp_path)
    src, sdir = _node(tmp_path, "first")
    write(src["root"], "ok.txt", "fine")
    write(src["root"], "d/bad.bin", BAD)
    write(src["root"], "d/other.txt", "also fine")
    checkpoint(store, src, everything, state_dir=sdir)
    return store


def _restored_without_bad(tmp_path: Path) -> tuple[PosixStore, dict[str, Path], Path]:
    """A second node restored from a store whose copy of d/bad.bin is damaged."""
    store = _seeded(tmp_path)
    _damage(store, BAD)
    areas, sdir = _node(tmp_path, "second")
    restore(store, areas, state_dir=sdir)
    return store, areas, sdir


def test_unverified_file_stays_in_later_snapshots_and_restores_once_repaired(tmp_path: Path) -> None:
    store = _seeded(tmp_path)
    pack, good = _damage(store, BAD)
    areas, sdir = _node(tmp_path, "second")
    res = restore(store, areas, state_dir=sdir)
    assert [e.split(":")[1] for e in res.errors] == ["d/bad.bin"]
    assert not (areas["root"] / "d/bad.bin").exists()
    assert json.loads((sdir / RECORD_FILE).read_text())["entries"][0][:2] == ["root", "d/bad.bin"]

    # the app works on; its checkpoints must not record the file it never saw as deleted
    write(areas["root"], "new.txt", "work of the second node")
    r = checkpoint(store, areas, everything, state_dir=sdir)
    assert r.snapshot_id and r.deleted == [] and r.kept_unrestored == ["root:d/bad.bin"]
    assert ("root", "d/bad.bin") in latest_paths(store)
    write(areas["root"], "new.txt", "more work")
    r = checkpoint(store, areas, everything, state_dir=sdir)
    assert r.snapshot_id and r.deleted == [] and ("root", "d/bad.bin") in latest_paths(store)

    # once the operator repairs the pack, the newest snapshot gives the file back, byte for byte
    pack.write_bytes(good)
    third, tsdir = _node(tmp_path, "third")
    res = restore(store, third, state_dir=tsdir)
    assert res.errors == [] and (third["root"] / "d/bad.bin").read_bytes() == BAD
    assert (third["root"] / "new.txt").read_text() == "more work"
    assert not (tsdir / RECORD_FILE).exists()


def test_the_app_writing_the_path_wins(tmp_path: Path) -> None:
    store, areas, sdir = _restored_without_bad(tmp_path)
    write(areas["root"], "d/bad.bin", "the app's own new content")
    r = checkpoint(store, areas, everything, state_dir=sdir)
    assert r.kept_unrestored == [] and "root:d/bad.bin" in r.stored
    assert not (sdir / RECORD_FILE).exists()
    # and deleting it afterwards is an ordinary deletion
    (areas["root"] / "d/bad.bin").unlink()
    r = checkpoint(store, areas, everything, state_dir=sdir)
    assert r.deleted == ["root:d/bad.bin"] and ("root", "d/bad.bin") not in latest_paths(store)


def test_removing_its_directory_lets_it_go(tmp_path: Path) -> None:
    store, areas, sdir = _restored_without_bad(tmp_path)
    shutil.rmtree(areas["root"] / "d")
    r = checkpoint(store, areas, everything, state_dir=sdir)
    assert sorted(r.deleted) == ["root:d", "root:d/bad.bin", "root:d/other.txt"] and r.kept_unrestored == []
    assert not (sdir / RECORD_FILE).exists()


def test_a_path_that_is_no_longer_wanted_is_let_go(tmp_path: Path) -> None:
    store, areas, sdir = _restored_without_bad(tmp_path)

    def no_bins(_area: str, rel: str, _is_dir: bool) -> bool:  # e.g. *.bin moved to [ignore]
        return not rel.endswith(".bin")

    r = checkpoint(store, areas, no_bins, state_dir=sdir)
    assert r.kept_unrestored == [] and r.deleted == ["root:d/bad.bin"]


def test_a_damaged_record_only_costs_the_carry(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store, areas, sdir = _restored_without_bad(tmp_path)
    (sdir / RECORD_FILE).write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="fractfs"):
        r = checkpoint(store, areas, everything, state_dir=sdir)
    # the behaviour from before the record existed, said out loud, and the checkpoint itself goes through
    assert r.snapshot_id and r.deleted == ["root:d/bad.bin"]
    assert any(RECORD_FILE in m and "no longer kept" in m for m in caplog.messages)


def test_a_successful_restore_keeps_no_record(tmp_path: Path) -> None:
    store = _seeded(tmp_path)
    areas, sdir = _node(tmp_path, "second")
    res = restore(store, areas, state_dir=sdir)
    assert res.errors == [] and not (sdir / RECORD_FILE).exists()
    r = checkpoint(store, areas, everything, state_dir=sdir)
    assert r.kept_unrestored == []


class _FlipsFirstRead:
    """A store whose first read of each key comes back with one bit flipped (damage in transit)."""

    def __init__(self, inner: PosixStore):
        self.inner = inner
        self.seen: set[str] = set()
        self.flipped = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def _spoil(self, key: str, data: bytes) -> bytes:
        if key in self.seen or not data:
            return data
        self.seen.add(key)
        self.flipped += 1
        return bytes([data[0] ^ 1]) + data[1:]

    def get(self, key: str) -> bytes:
        return self._spoil(key, self.inner.get(key))

    def get_range(self, key: str, start: int, length: int) -> bytes:
        return self._spoil(key, self.inner.get_range(key, start, length))

    def get_file(self, key: str, path: Path) -> None:
        self.inner.get_file(key, path)
        if key.startswith(("packs/", "objects/")) and key not in self.seen:
            path.write_bytes(self._spoil(key, path.read_bytes()))


@pytest.mark.parametrize("large", [False, True], ids=["packed", "chunked"])
def test_damage_in_transit_is_read_again_not_reported(
    tmp_path: Path, large: bool, caplog: pytest.LogCaptureFixture
) -> None:
    store = make_store(tmp_path)
    src, sdir = _node(tmp_path, "first")
    body = b"x" * (9 << 20) if large else b"small file"
    write(src["root"], "f.bin", body)
    checkpoint(store, src, everything, state_dir=sdir, large_file=1 << 20)
    (e,) = [e for e in catalog.newest_valid(store)[0].entries if e.path == "f.bin"]  # type: ignore[union-attr]
    assert bool(e.chunks) == large  # 9 MiB: several chunks (each read and checked on its own)
    flaky = _FlipsFirstRead(store)
    areas, sdir2 = _node(tmp_path, "second")
    with caplog.at_level(logging.WARNING, logger="fractfs"):
        res = restore(flaky, areas, state_dir=sdir2)  # type: ignore[arg-type]
    assert flaky.flipped >= 1 and res.errors == [] and res.restored == ["root:f.bin"]
    assert (areas["root"] / "f.bin").read_bytes() == body
    assert any("passed on a second read" in m for m in caplog.messages)
