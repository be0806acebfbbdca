"""prune() and verify()."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from test_snapshot_support import everything, make_store, store_keys, write

from fractfs.errors import FractfsError
from fractfs.snapshot import catalog, checkpoint, list_snapshots, prune, restore, verify
from fractfs.snapshot.format import object_key, pack_key


def _gens(tmp_path: Path, n: int) -> tuple[object, dict[str, Path], list[str]]:
    store = make_store(tmp_path)
    src = {"root": tmp_path / "app"}
    write(src["root"], "stable", "never changes")
    write(src["root"], "big", os.urandom(50_000))
    ids = []
    for i in range(n):
        write(src["root"], "counter", f"generation {i}")
        write(src["root"], f"gen{i}", os.urandom(2000))
        res = checkpoint(
            store, src, everything, state_dir=tmp_path / "state", large_file=40_000, pack_size=4096
        )
        assert res.snapshot_id
        ids.append(res.snapshot_id)
    return store, src, ids


def test_prune_removes_unreferenced_and_keeps_referenced(tmp_path: Path) -> None:
    store, src, ids = _gens(tmp_path, 4)
    # crash leftovers: blobs no manifest references
    orphan = os.urandom(3000)
    store.put(pack_key(hashlib.sha256(orphan).hexdigest()), orphan)
    store.put(object_key(hashlib.sha256(b"o").hexdigest()), b"o")
    before = store_keys(store)

    dry = prune(store, keep=2, dry_run=True)
    assert store_keys(store) == before
    assert dry.deleted_snapshots == ids[:2] and dry.kept == ids[2:]
    assert pack_key(hashlib.sha256(orphan).hexdigest()) in dry.deleted_blobs

    res = prune(store, keep=2)
    assert res.deleted_blobs == dry.deleted_blobs and res.freed_bytes == dry.freed_bytes
    assert [s.id for s in list_snapshots(store)] == ids[2:]
    after = store_keys(store)
    assert pack_key(hashlib.sha256(orphan).hexdigest()) not in after
    assert object_key(hashlib.sha256(b"o").hexdigest()) not in after
    # everything the kept snapshots need is still there
    v = verify(store, "all")
    assert v.ok and v.snapshots == ids[2:] and v.files_checked > 0
    for sid in ids[2:]:
        dst = {"root": tmp_path / f"r-{sid[:12]}"}
        out = restore(store, dst, snapshot_id=sid)
        assert not out.errors
        assert (dst["root"] / "stable").read_text() == "never changes"
        assert (dst["root"] / "big").read_bytes() == (src["root"] / "big").read_bytes()
    # the pruned generations' own files are gone from the store, shared ones are not
    assert prune(store, keep=2).deleted_blobs == []


def test_checkpoint_after_prune_still_dedups_safely(tmp_path: Path) -> None:
    store, src, _ids = _gens(tmp_path, 3)
    prune(store, keep=1)
    write(src["root"], "counter", "after prune")
    res = checkpoint(store, src, everything, state_dir=tmp_path / "state", large_file=40_000, pack_size=4096)
    assert res.stored == ["root:counter"]
    assert verify(store).ok


def test_prune_refuses_with_a_manifest_it_cannot_read(tmp_path: Path) -> None:
    import gzip
    import json

    from fractfs.snapshot.format import SnapName

    store, _src, _ids = _gens(tmp_path, 2)
    data = gzip.compress(
        json.dumps({"format": "fractfs-snapshot", "version": 7, "seq": 50}).encode(), mtime=0
    )
    name = SnapName(50, hashlib.sha256(data).hexdigest())
    store.put(name.key, data)
    before = store_keys(store)
    with pytest.raises(FractfsError, match="version 7"):
        prune(store, keep=5)
    assert store_keys(store) == before


def test_verify_finds_missing_and_damaged_blobs(tmp_path: Path) -> None:
    store, _src, ids = _gens(tmp_path, 2)
    assert verify(store).ok
    (big,) = [e for e in catalog.newest_valid(store)[0].entries if e.path == "big"]  # type: ignore[union-attr]
    (ref,) = big.refs()  # 50 000 bytes: one chunk, alone in its pack (pack_size 4096)
    store.delete(pack_key(ref.pack))
    v = verify(store)
    assert not v.ok and v.bad_blobs == [pack_key(ref.pack)] and any("root:big" in d for d in v.damaged_files)
    assert verify(store, ids[0][:12].split("-")[0].lstrip("0") or "0").snapshots == [ids[0]]


def test_prune_keep_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(FractfsError):
        prune(make_store(tmp_path), keep=0)
