"""The head pointer: a listing that lags cannot make a cold node restore (and commit over) an older generation
(issue 11, point 6; docs/format.md, "The head")."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from faults import FaultyStore

from fractfs.snapshot import checkpoint, list_snapshots, prune, restore, verify
from fractfs.snapshot import catalog
from fractfs.snapshot.format import parse_snapshot_id
from fractfs.stores.posix import PosixStore


def lagging(inner: PosixStore) -> FaultyStore:
    """A store whose listing never shows what was written through it (a FUSE cache, ``/Volumes``)."""
    return FaultyStore(inner, rate=1.0, kinds=("stale_list",), keys=("snapshots/",), stale_window=3600)


def two_generations(tmp_path: Path) -> tuple[PosixStore, FaultyStore, str, str]:
    """Generation 1 visible in every listing, generation 2 committed through a store whose listing lags."""
    inner = PosixStore(tmp_path / "store")
    app = tmp_path / "app"
    app.mkdir()
    (app / "counter").write_text("1")
    first = checkpoint(inner, {"root": app}, None, state_dir=tmp_path / "state")
    fs = lagging(inner)
    (app / "counter").write_text("2")
    second = checkpoint(fs, {"root": app}, None, state_dir=tmp_path / "state")
    assert first.snapshot_id and second.snapshot_id
    listed = [k for k, _ in fs.list("snapshots/")]
    assert f"snapshots/{second.snapshot_id}.json.gz" not in listed  # the listing really lags
    return inner, fs, first.snapshot_id, second.snapshot_id


def test_commit_writes_the_head(tmp_path: Path) -> None:
    inner, _fs, _first, second = two_generations(tmp_path)
    assert catalog.read_head(inner) == parse_snapshot_id(second)
    assert inner.get(catalog.HEAD_KEY).startswith(b'{"format": "fractfs-head", "version": 1')


def test_cold_node_with_a_lagging_listing_restores_the_newest(tmp_path: Path) -> None:
    _inner, fs, _first, second = two_generations(tmp_path)
    cold = tmp_path / "cold"
    res = restore(fs, {"root": cold})
    assert res.snapshot_id == second
    assert (cold / "counter").read_text() == "2"
    # ... and its next commit extends generation 2 with a higher number, never generation 1
    (cold / "counter").write_text("3")
    third = checkpoint(fs, {"root": cold}, None, state_dir=tmp_path / "cold-state")
    assert third.parent == second
    t, s = parse_snapshot_id(third.snapshot_id or ""), parse_snapshot_id(second)
    assert t is not None and s is not None and t.seq == s.seq + 1


def test_prune_through_a_lagging_listing_keeps_the_headed_snapshot_whole(tmp_path: Path) -> None:
    inner, fs, first, second = two_generations(tmp_path)
    res = prune(fs, 1)
    assert [s.id for s in list_snapshots(inner)] == [second]
    assert res.deleted_snapshots and verify(inner, second).ok
    assert first not in [s.id for s in list_snapshots(inner)]


@pytest.mark.parametrize("content", [b"", b"not json", b'{"format": "fractfs-head", "version": 2}',
                                     b'{"format": "fractfs-head", "version": 1, "snapshot": "x", "seq": 1}',
                                     b'{"format": "fractfs-head", "version": 1, "snapshot": "000000000009-'
                                     + b"a" * 64 + b'", "seq": 8}'])
def test_an_unreadable_head_is_ignored_with_a_warning(tmp_path: Path, content: bytes,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    inner, _fs, first, second = two_generations(tmp_path)
    inner.put(catalog.HEAD_KEY, content)
    caplog.set_level(logging.WARNING, logger="fractfs")
    catalog._warned.clear()
    assert [n.id for n in catalog.list_names(inner)] == [first, second]
    assert catalog.HEAD_KEY in caplog.text


def test_a_head_naming_a_missing_manifest_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    inner, fs, first, second = two_generations(tmp_path)
    inner.delete(f"snapshots/{second}.json.gz")  # e.g. deleted by hand after the head was written
    caplog.set_level(logging.WARNING, logger="fractfs")
    catalog._warned.clear()
    assert [n.id for n in catalog.list_names(fs)] == [first]
    assert "not on the store" in caplog.text
    res = restore(fs, {"root": tmp_path / "r"})
    assert res.snapshot_id == first and (tmp_path / "r" / "counter").read_text() == "1"


def test_a_head_naming_a_damaged_manifest_falls_back(tmp_path: Path) -> None:
    inner, fs, first, second = two_generations(tmp_path)
    path = tmp_path / "store" / "snapshots" / f"{second}.json.gz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))
    res = restore(fs, {"root": tmp_path / "r"})
    assert res.snapshot_id == first and second in res.fell_back_from


def test_an_older_head_does_not_hide_newer_listed_snapshots(tmp_path: Path) -> None:
    inner, _fs, first, second = two_generations(tmp_path)
    old = parse_snapshot_id(first)
    assert old is not None
    inner.put(catalog.HEAD_KEY, catalog.encode_head(old))  # a slow writer's late head update
    assert catalog.newest_valid(inner)[0] is not None
    assert [n.id for n in catalog.list_names(inner)] == [first, second]
    m, _ = catalog.newest_valid(inner)
    assert m is not None and m.id == second


def test_a_failed_head_update_does_not_fail_the_commit(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    inner = PosixStore(tmp_path / "store")
    fs = FaultyStore(inner, rate=1.0, kinds=("fail",), ops=("put",), keys=(catalog.HEAD_KEY,))
    app = tmp_path / "app"
    app.mkdir()
    (app / "f").write_text("x")
    res = checkpoint(fs, {"root": app}, None, state_dir=tmp_path / "state")
    assert res.snapshot_id and [s.id for s in list_snapshots(inner)] == [res.snapshot_id]
    assert "could not be updated" in caplog.text
