"""When the node goes away (issue 11, runtime side): a Volume that vanishes and comes back under a running app,
several processes on one root, init() before fork(), a slow store and the lease, an unwritable scratch, absolute
symlinks, and the ``healthy``/``problems`` status a monitor polls. Real processes, signals and mounts."""
from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fractfs import snapshot
from fractfs.checkpointer import Checkpointer
from fractfs.lease import Lease, LeaseKeeper
from fractfs.snapshot.engine import Options
from fractfs.stores.posix import PosixStore

import _services
from faults import SlowStore
from helpers import App, Node, files_under, read_back




# -- point 3: the Volume vanishes under a running app ------------------------------------------------------
VOLUME_APP = """
fractfs.init()
n = 0
last = 0.0
while True:
    n += 1
    put("counter", str(n))
    if time.monotonic() - last > 0.2:
        last = time.monotonic()
        st = fractfs.status()
        out(n=n, healthy=st["healthy"], kinds=[p["kind"] for p in st["problems"]], syncs=st["syncs"],
            writer=st["writer"], last_sync_time=st["last_sync_time"], failures=st["consecutive_failures"])
    time.sleep(0.1)  # not a hot file (that is point 2's business): every value can be captured
"""


def test_volume_unmounted_and_remounted_under_a_running_app(
    tmpfs_factory: Callable[..., Path], bind_mount: Callable[[Path, Path], None], tmp_path: Path
) -> None:
    backing = tmpfs_factory("64m")  # the Volume's real contents; `vol` is where the app sees it
    vol = tmp_path / "mnt" / "vol"
    bind_mount(backing, vol)
    app = App(tmp_path, str(vol))
    child = app.spawn(VOLUME_APP, fractfs_SYNC_INTERVAL="1")
    try:
        child.expect("syncs", None, timeout=30)
        first = child.expect("healthy", True, timeout=30)
        while child.expect("healthy", True, timeout=30)["syncs"] < 1:
            pass
        before = files_under(backing)
        assert any(f.startswith("_checkpoint/snapshots/") for f in before), before

        _services.unmount(vol)
        assert not os.path.ismount(vol) and os.listdir(vol) == []
        gone = time.time()
        missing = child.expect("healthy", False, timeout=30)
        assert "volume-missing" in missing["kinds"], missing
        assert "lease-lost" not in missing["kinds"]
        time.sleep(3)  # several daemon rounds (every 1 s, then every 2 s while the Volume is missing)
        assert files_under(vol) == [], "checkpoints were written to the empty mountpoint on local disk"
        still = child.expect("n", None)
        assert not still["healthy"] and still["writer"] in (True, False)

        bind_mount(backing, vol)
        back = time.time()
        while True:  # recovered by itself: healthy again and a checkpoint made after the remount
            msg = child.expect("healthy", True, timeout=30)
            if msg["last_sync_time"] and msg["last_sync_time"] > back:
                break
        assert msg["writer"] is True and msg["failures"] == 0
        rc, _took = child.stop_like_the_platform(8.0)
        assert rc != -9, child.stderr()
    finally:
        if child.proc.poll() is None:
            child.proc.kill()
            child.finish()
    final_value = (app.root / "counter").read_text()
    assert int(final_value) > first["n"]
    assert gone < back
    assert read_back(app, "counter") == {"counter": final_value}
    err = child.stderr()
    assert "checkpoints paused" in err and "Volume" in err and "is back" in err, err[-3000:]


def test_volume_missing_at_sigterm_then_back_still_saves(
    tmpfs_factory: Callable[..., Path], bind_mount: Callable[[Path, Path], None], tmp_path: Path
) -> None:
    backing = tmpfs_factory("64m")
    vol = tmp_path / "mnt" / "vol"
    bind_mount(backing, vol)
    app = App(tmp_path, str(vol))
    child = app.spawn(VOLUME_APP, fractfs_SYNC_INTERVAL="1", fractfs_LEASE_TIMEOUT="4")
    try:
        while child.expect("healthy", True, timeout=30)["syncs"] < 1:
            pass
        _services.unmount(vol)
        child.expect("healthy", False, timeout=30)
        time.sleep(3)  # longer than the lease's validity (timeout / 2): the lease must not be taken as lost
        bind_mount(backing, vol)
        rc, _took = child.stop_like_the_platform(8.0)
        assert rc != -9, child.stderr()
    finally:
        if child.proc.poll() is None:
            child.proc.kill()
            child.finish()
    final_value = (app.root / "counter").read_text()
    assert read_back(app, "counter") == {"counter": final_value}
    assert "final checkpoint" in child.stderr()


# -- point 4: several processes on one root ----------------------------------------------------------------
WORKER = """
fractfs.init()
me = os.getpid()
def report(**kw):
    st = fractfs.status()
    out(pid=me, writer=st["writer"], role=st.get("process_role"), **kw)
report(started=True)
for i in range(__N__):
    put(f"w{me}-{i}.txt", f"{me}:{i}")
    time.sleep(0.01)
report(written=True)
was = fractfs.status()["writer"]
while True:
    time.sleep(0.1)
    now = fractfs.status()["writer"]
    if now and not was:
        for i in range(__N__, 2 * __N__):
            put(f"w{me}-{i}.txt", f"{me}:{i}")
        report(took_over=True, second_batch=True)
    was = now
"""


@pytest.mark.parametrize("start", ["together", "staggered"])
def test_two_worker_processes_on_one_root_lose_nothing(tmp_path: Path, start: str) -> None:
    n = 15
    vol = tmp_path / "vol"
    app = App(tmp_path, str(vol))
    body = WORKER.replace("__N__", str(n))
    a = app.spawn(body)
    ra: dict[str, Any] = {}
    if start == "staggered":
        ra = a.expect("written", True, timeout=30)  # the second worker starts once the first wrote files
    b = app.spawn(body)
    try:
        ra = ra or a.expect("written", True, timeout=30)
        rb = b.expect("written", True, timeout=30)
        writers = [r for r in (ra, rb) if r["writer"]]
        assert len(writers) == 1, (ra, rb, a.stderr(), b.stderr())
        writer, standby = (a, b) if ra["writer"] else (b, a)
        spid = (rb if writer is a else ra)["pid"]
        wpid = writers[0]["pid"]
        rc, _ = writer.stop_like_the_platform(8.0)
        assert rc != -9
        standby.expect("took_over", True, timeout=30)
        rc, _ = standby.stop_like_the_platform(8.0)
        assert rc != -9
    finally:
        for c in (a, b):
            if c.proc.poll() is None:
                c.proc.kill()
                c.finish()
    names = [f"w{wpid}-{i}.txt" for i in range(n)] + [f"w{spid}-{i}.txt" for i in range(2 * n)]
    got = read_back(app, *names)
    missing = [k for k, v in got.items() if v is None]
    assert missing == [], f"lost {len(missing)} of {len(names)}: {missing[:5]}\n{standby.stderr()[-3000:]}"
    assert all(v == f"{k[1:].split('-')[0]}:{k.split('-')[1][:-4]}" for k, v in got.items())


FORKER = """
fractfs.init()
put("parent-1.txt", "p1")
assert fractfs.sync_now() == ["parent-1.txt"]
from fractfs.stores import open_store
store = open_store(os.environ["fractfs_VOLUME_ROOT"].rstrip("/") + "/_checkpoint")
lease_keys = sorted(k for k, _ in store.list("locks/"))
snaps = sorted(k for k, _ in store.list("snapshots/") if k.endswith(".json.gz"))
pid = os.fork()
if pid == 0:
    put("child.txt", "c")
    stored = fractfs.sync_now()
    st = fractfs.status()
    out(child_stored=stored, child_role=st.get("process_role"), child_writer=st["writer"])
    sys.exit(0)  # the exit hooks run: they must not checkpoint nor release the parent's lease
_, code = os.waitpid(pid, 0)
after_keys = sorted(k for k, _ in store.list("locks/"))
after_snaps = sorted(k for k, _ in store.list("snapshots/") if k.endswith(".json.gz"))
st = fractfs.status()
put("parent-2.txt", "p2")
stored = fractfs.sync_now()
out(code=code, lease_before=lease_keys, lease_after=after_keys, snaps_before=snaps, snaps_after=after_snaps,
    parent_writer=st["writer"], parent_stored=sorted(stored))
"""


def test_init_then_fork_the_child_is_never_the_writer(tmp_path: Path) -> None:
    app = App(tmp_path, str(tmp_path / "vol"))
    child = app.spawn(FORKER, fractfs_LEASE_TIMEOUT="30")
    try:
        forked = child.expect("child_stored", timeout=30)
        parent = child.expect("code", timeout=30)
        rc = child.finish()
    finally:
        if child.proc.poll() is None:
            child.proc.kill()
            child.finish()
    assert rc == 0, child.stderr()
    assert forked == {"child_stored": [], "child_role": "forked-child", "child_writer": False}
    assert parent["code"] == 0
    assert parent["lease_after"] == parent["lease_before"] != []  # the child did not release the parent's lease
    assert parent["snaps_after"] == parent["snaps_before"]        # nor commit anything
    assert parent["parent_writer"] is True
    assert parent["parent_stored"] == ["child.txt", "parent-2.txt"]  # the writer saves the shared root
    assert "fork() child" in child.stderr()


# -- point 5: a slow store and the lease --------------------------------------------------------------------
def test_slow_store_does_not_lose_the_lease_of_the_only_node(tmp_path: Path) -> None:
    # Scaled from the Files API (0.1-0.5 s a request, lease_timeout 30): a renewal (list, get, put: 0.3-0.54 s
    # here) takes longer than a heartbeat period (0.275 s) but less than the lease's validity (0.55 s from the
    # start of a renewal). With beats spaced from the end of the previous one, the validity lapsed for a while
    # before every beat, and a commit whose fence fell in that gap failed with LeaseLost although no other node
    # exists (11 of 20 checkpoints before the fix).
    store = SlowStore(PosixStore(tmp_path / "ckpt"), 0.14, jitter=0.04, seed=11)
    src = tmp_path / "app"
    src.mkdir()
    lease = Lease(store, "only-node", 1.1)
    keeper = LeaseKeeper(lease, where="slow store")
    cp = Checkpointer(store, areas=lambda: {"root": src}, want=lambda: (lambda _a, _r, _d: True),
                      state_dir=tmp_path / "state", options=Options(node_id="only-node"), keeper=keeper)
    assert keeper.tick()
    keeper.start()
    try:
        for i in range(12):
            (src / "counter").write_text(str(i))
            assert cp.checkpoint(None, eager=False) == ["counter"], cp.stats.last_error
    finally:
        keeper.stop()
    assert cp.stats.consecutive_failures == 0 and cp.stats.syncs == 12
    assert snapshot.list_snapshots(PosixStore(tmp_path / "ckpt"))[-1].id == cp.stats.last_snapshot_id


# -- point 8: scratch and symlinks ---------------------------------------------------------------------------
def test_unwritable_scratch_is_refused_at_init(tmpfs_factory: Callable[..., Path], tmp_path: Path) -> None:
    scratch = tmpfs_factory("8m")
    subprocess.run(["mount", "-o", "remount,ro", str(scratch)], check=True, capture_output=True, timeout=30)
    node = Node(tmp_path / "node", tmp_path / "vol", "", env={"fractfs_BACKEND": "volumes"})
    (tmp_path / "vol").mkdir()
    proc = node.run("""
        try:
            fractfs.init()
        except fractfs.ProvisionError as exc:
            print(json.dumps({"error": str(exc)}))
        else:
            print(json.dumps({"error": None}))
    """, fractfs_SCRATCH=str(scratch))
    assert proc["error"] is not None
    assert "fractfs_SCRATCH" in proc["error"] and str(scratch) in proc["error"], proc["error"]


def test_absolute_symlink_is_restored_verbatim(tmp_path: Path) -> None:
    releases = tmp_path / "opt" / "app" / "releases" / "3"
    releases.mkdir(parents=True)
    (releases / "version").write_text("3")
    app = App(tmp_path, str(tmp_path / "vol"))
    app.run(f"""
        fractfs.init(start_daemon=False)
        os.symlink({str(releases)!r}, "current")
        os.symlink("../../outside/anything", "up")
        stored = fractfs.sync_now()
        fractfs.shutdown(final_sync=False)
    """)
    app.wipe()
    got: dict[str, Any] = app.run("""
        st = fractfs.init(start_daemon=False)
        out(current=os.readlink("current") if os.path.islink("current") else None,
            up=os.readlink("up") if os.path.islink("up") else None, refused=st["restore"]["refused"],
            healthy=st["healthy"])
        fractfs.shutdown(final_sync=False)
    """)
    assert got == {"current": str(releases), "up": "../../outside/anything", "refused": [], "healthy": True}
    assert (releases / "version").read_text() == "3"  # nothing written through the link


# -- health ---------------------------------------------------------------------------------------------------
def test_status_json_carries_health(tmp_path: Path) -> None:
    app = App(tmp_path, str(tmp_path / "vol"))
    st = app.run("""
        st = fractfs.init(start_daemon=False)
        out(healthy=st["healthy"], problems=st["problems"], role=st["process_role"])
        fractfs.shutdown(final_sync=False)
    """)
    assert st == {"healthy": True, "problems": [], "role": "writer"}
    persisted = json.loads((app.scratch / ".fractfs-state" / "status.json").read_text())
    assert persisted["healthy"] is True and persisted["problems"] == []
