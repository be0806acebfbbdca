"""fractfs.explain: tier, rule, physical location and checkpoint status of a path, for `fractfs explain`."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from operator_support import make_app, take_snapshot

from fractfs.config import Config
from fractfs.errors import FractfsError
from fractfs.explain import Explainer
from fractfs.provision import provision
from fractfs.selection import save_bundle
from fractfs.tiers import TierResolver


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    c = make_app(tmp_path)
    provision(c, TierResolver(c))
    (c.root / "state").mkdir()
    (c.root / "state" / "counter.txt").write_text("1")
    (c.root / "app.py").write_text("print('bundle')\n")
    (c.root / "cache.tmp").write_text("junk")
    (c.root / "data" / "blobs" / "blob.bin").write_bytes(b"B" * 10)
    return c


def test_tiers_locations_and_checkpointing(cfg: Config) -> None:
    save_bundle(cfg, {"app.py", ".fractfs.toml"})
    ex = Explainer(cfg, store_lookup=False)
    state = ex.explain("state/counter.txt")
    assert state["tier"] == "default" and state["checkpointed"] is True and state["location_kind"] == "local"
    assert state["rule_text"] == "no rule matched: default tier" and state["in_snapshot"] is None

    tmp = ex.explain("cache.tmp")
    assert tmp["tier"] == "ignore" and tmp["checkpointed"] is False
    assert tmp["rule_text"] == "[ignore].patterns '*.tmp'" and "never checkpointed" in tmp["checkpoint_reason"]

    blob = ex.explain("data/blobs/blob.bin")
    assert blob["tier"] == "dirs" and blob["location_kind"] == "volume" and blob["checkpointed"] is False
    assert cfg.dirs_root is not None and blob["location"] == str(cfg.dirs_root / "data/blobs/blob.bin")

    pinned = ex.explain("data/blobs/manifest.json")
    assert pinned["tier"] == "local" and pinned["location_kind"] == "scratch" and pinned["checkpointed"] is True
    assert pinned["location"] == str(cfg.scratch / "data/blobs/manifest.json")
    assert "through the pin" in pinned["location_note"]

    bundle = ex.explain("app.py")
    assert bundle["checkpointed"] is False and "deploy bundle (recorded by the app's init()" in \
        bundle["checkpoint_reason"]
    assert ex.bundle().source == "recorded"

    new = ex.explain("not/yet/there.txt")
    assert new["exists"] is False and new["checkpointed"] is True


def test_absolute_and_outside_paths(cfg: Config) -> None:
    ex = Explainer(cfg, store_lookup=False)
    assert ex.explain(str(cfg.root / "state" / "counter.txt"))["path"] == "state/counter.txt"
    assert cfg.dirs_root is not None
    assert ex.explain(str(cfg.dirs_root / "data" / "blobs" / "blob.bin"))["path"] == "data/blobs/blob.bin"
    with pytest.raises(FractfsError, match="outside the app root"):
        ex.explain("/definitely/not/in/the/app")


def test_in_snapshot_and_the_detected_bundle(cfg: Config) -> None:
    sid = take_snapshot(cfg)  # app.py is in it: not a bundle file any more once a snapshot knows it
    (cfg.root / "late.txt").write_text("after the snapshot")
    ex = Explainer(cfg)
    counter = ex.explain("state/counter.txt")
    assert counter["in_snapshot"] is True and counter["snapshot_id"] == sid
    late = ex.explain("late.txt")
    # no bundle record on this node: detected as init() would, i.e. present and in no snapshot
    assert ex.bundle().source == "detected" and "late.txt" in ex.bundle().files
    assert late["checkpointed"] is False and "present but in no snapshot" in late["checkpoint_reason"]
    assert ex.explain("app.py")["checkpointed"] is True and ex.store_error is None


def test_store_unreachable_is_reported_not_raised(cfg: Config) -> None:
    assert cfg.volume_root is not None
    shutil.rmtree(cfg.volume_root)
    ex = Explainer(cfg)
    doc = ex.explain("state/counter.txt")
    assert doc["in_snapshot"] is None and ex.store_error is not None and "not mounted" in ex.store_error
    assert ex.bundle().source == "unknown" and ex.bundle().files == {".fractfs.toml"}
