"""fractfs.report: the one status schema (app and operator), the app's record on this node, the lease as seen
from outside, and the offline status the `fractfs status` command prints."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import run_py
from operator_support import env_for, make_app, take_snapshot

from fractfs import lease as lease_mod
from fractfs.lease import Lease, LeaseRecord
from fractfs.report import (
    STATUS_FILE,
    AppView,
    OfflineStatus,
    PersistedStatus,
    Status,
    human_bytes,
    offline_status,
    process_alive,
    read_app_status,
    read_lease,
    read_raw_app_status,
)
from fractfs.stores.open import open_store

APP = """
import json, os, fractfs
st = fractfs.init(start_daemon=False)
os.makedirs("state", exist_ok=True)
open("state/counter.txt", "w").write("1")
fractfs.sync_now()
print(json.dumps(sorted(fractfs.status())))
fractfs.shutdown(final_sync=False)
"""


def test_status_schema_is_exactly_what_the_runtime_returns_and_persists(tmp_path: Path) -> None:
    cfg = make_app(tmp_path)
    proc = run_py(APP, env=env_for(tmp_path), cwd=cfg.root)
    live_keys = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert live_keys == set(Status.__required_keys__)
    doc = read_raw_app_status(cfg)
    assert doc is not None and set(doc) == set(PersistedStatus.__required_keys__)
    assert set(PersistedStatus.__required_keys__) - set(Status.__required_keys__) == {"written_at"}
    assert doc["root"] == str(cfg.root) and doc["initialized"] is False  # written again at shutdown
    assert isinstance(doc["last_snapshot_id"], str)
    # the operator's view keeps the AppView keys only, and knows the app is gone
    view = read_app_status(cfg)
    assert view is not None and set(view) == set(AppView.__required_keys__)
    assert view["alive"] is False and view["pid"] == doc["pid"] and view["syncs"] == 1


def test_a_status_file_of_another_root_or_garbage_is_ignored(tmp_path: Path) -> None:
    cfg = make_app(tmp_path)
    cfg.state_dir.mkdir(parents=True)
    path = cfg.state_dir / STATUS_FILE
    path.write_text(json.dumps({"root": "/somewhere/else", "pid": os.getpid()}))
    assert read_raw_app_status(cfg) is None and read_app_status(cfg) is None
    path.write_text("{not json")
    assert read_raw_app_status(cfg) is None
    path.write_text(json.dumps({"root": str(cfg.root), "pid": os.getpid(), "initialized": True}))
    view = read_app_status(cfg)
    assert view is not None and view["alive"] is True and view["node_id"] is None


def test_process_alive() -> None:
    assert process_alive(os.getpid())
    assert not process_alive(None) and not process_alive(0) and not process_alive("1")
    if sys.platform.startswith("linux"):
        assert process_alive(1)  # owned by root: PermissionError for others still means "exists"


def _record(**kw: Any) -> LeaseRecord:
    base = dict(generation=3, node="other:1:x", token="t", beat=1, time=1000.0, acquired=900.0, timeout=30.0)
    base.update(kw)
    return LeaseRecord(**base)  # type: ignore[arg-type]


def test_lease_state_boundaries() -> None:
    """The status report judges a lease read once by LeaseRecord.state (30 s timeout + 120 s skew)."""
    rec = _record()
    assert rec.state(1000.0 + 30.0) == "live"
    assert rec.state(1000.0 + 30.1) == "uncertain"
    assert rec.state(1000.0 + 150.0) == "uncertain"
    assert rec.state(1000.0 + 150.1) == "stale"
    assert _record(released=True).state(1000.0) == "free"


def test_read_lease_from_a_real_store(tmp_path: Path) -> None:
    cfg = make_app(tmp_path)
    store = open_store(cfg)
    assert read_lease(store) is None and read_lease(None) is None
    holder = Lease(store, "other-node:42:abc", 30.0)
    holder.tick()
    assert holder.held
    seen = read_lease(store)
    assert seen is not None
    assert seen["state"] == "live" and seen["holder"] == "other-node:42:abc" and seen["blocks_writers"] is True
    assert seen["timeout"] == 30.0 and seen["generation"] == holder.generation
    later = read_lease(store, now=time.time() + 30.0 + lease_mod.MAX_CLOCK_SKEW + 5)
    assert later is not None and later["state"] == "stale" and later["blocks_writers"] is False
    holder.release()
    after = read_lease(store)
    assert after is None or (after["state"] == "free" and after["blocks_writers"] is False)


def test_an_unreadable_lease_blocks_writers(tmp_path: Path) -> None:
    store = open_store(make_app(tmp_path))
    store.put(lease_mod.lease_key(7), b"{torn")
    seen = read_lease(store)
    assert seen is not None and seen["state"] == "unknown" and seen["blocks_writers"] is True
    assert seen["key"] == lease_mod.lease_key(7) and "unreadable" in seen["error"]


def test_offline_status_with_a_snapshot(tmp_path: Path) -> None:
    cfg = make_app(tmp_path)
    (cfg.root / "state").mkdir()
    (cfg.root / "state" / "a.txt").write_text("hello")
    sid = take_snapshot(cfg)
    st: OfflineStatus = offline_status(cfg)
    assert st["store_error"] is None and st["snapshot_count"] == 1
    assert st["last_snapshot_id"] == sid and st["files"] is not None and st["files"] >= 1
    assert st["last_snapshot_node"] == "test-node" and st["last_snapshot_time_iso"] is not None
    assert st["dirs"]["data/blobs"]["state"] == "missing"  # init() has not linked it
    assert st["capabilities"] is not None and st["capabilities"]["exists"] is True
    assert st["initialized"] is None and st["app"] is None and st["lease"] is None
    assert st["root"] == str(cfg.root) and st["patterns"]["ignore"] == ["*.tmp", ".locks/"]
    json.dumps(st)  # --json prints it as is


def test_offline_status_of_an_unmounted_volume_and_of_passthrough(tmp_path: Path) -> None:
    cfg = make_app(tmp_path / "a", volume=False)
    st = offline_status(cfg, probe=False)
    assert st["store_error"] is not None and "does not exist or is not mounted" in st["store_error"]
    assert any(w.startswith("store: ") for w in st["warnings"])
    assert not (tmp_path / "a" / "volume").exists()

    root = tmp_path / "b"
    root.mkdir()
    from fractfs.config import load_config

    pt = offline_status(load_config(root, env={}))
    assert pt["passthrough"] is True and pt["store_error"] is None
    assert any("passthrough" in w for w in pt["warnings"])


@pytest.mark.parametrize("n, text", [(None, "?"), (0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"),
                                     (5 << 30, "5.0 GiB"), (3 << 40, "3.0 TiB"), (2048 << 40, "2048.0 TiB")])
def test_human_bytes(n: int | None, text: str) -> None:
    assert human_bytes(n) == text
