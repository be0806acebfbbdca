"""Lifecycle: the sync daemon, SIGTERM/exit final checkpoints within the grace, change-driven sync, and the
single-writer lease. App code runs in fresh processes (signals and exit hooks need a real interpreter)."""

from __future__ import annotations

import signal
import textwrap
import threading
import time
from pathlib import Path

import pytest
from helpers import App, read_back

from fractfs import snapshot
from fractfs.errors import StoreError
from fractfs.lease import MAX_CLOCK_SKEW, Lease, LeaseLost, lease_key
from fractfs.runtime import CheckpointAborted
from fractfs.snapshot import catalog, engine
from fractfs.snapshot.statcache import StateLock
from fractfs.stores.wrappers import abortable
from fractfs.stores import open_store
from fractfs.stores.posix import PosixStore

def node_of(app: App) -> list[str]:
    return [s.node for s in snapshot.list_snapshots(app.store()) if s.valid]


# -- graceful stop ---------------------------------------------------------------------------------------

def test_sigterm_final_checkpoint_default_handler(tmp_path: Path, volume: Path) -> None:
    """SIGTERM with a 3600 s interval: the last write is restorable, the process ends by itself as a plain
    SIGTERM death before the platform's SIGKILL at the end of the grace, and the lease is given back."""
    app = App(tmp_path, str(volume))
    child = app.spawn("""
        fractfs.init()
        put("state.txt", "the last write before SIGTERM")
        out(event="ready")
        time.sleep(60)
    """, fractfs_GRACE="8")
    child.expect("event", "ready")
    rc, took = child.stop_like_the_platform(grace=8)
    assert rc == -signal.SIGTERM, f"exit code {rc} after {took:.2f}s (grace 8 s)\n{child.stderr()}"
    assert not [k for k, _ in app.store().list("locks/")], "the lease must be released at shutdown"
    assert read_back(app, "state.txt") == {"state.txt": "the last write before SIGTERM"}


@pytest.mark.parametrize("when", ["before-init", "after-init"])
def test_sigterm_chains_to_app_handler(tmp_path: Path, when: str) -> None:
    """The app's own handler still runs and decides the exit code; what it writes on the way out is saved
    too (the exit hook runs after it, in what is left of the grace)."""
    app = App(tmp_path, str(tmp_path / "vol"))
    install = """
        def handler(signum, frame):
            put("handler.txt", "the app's handler ran")
            sys.exit(3)
        signal.signal(signal.SIGTERM, handler)
    """
    body = """
        fractfs.init()
        put("state.txt", "v1")
        out(event="ready")
        time.sleep(60)
    """
    code = (textwrap.dedent(install) + textwrap.dedent(body)) if when == "before-init" else (
        textwrap.dedent(body).replace('out(event="ready")', textwrap.dedent(install) + 'out(event="ready")'))
    child = app.spawn(code, fractfs_GRACE="8")
    child.expect("event", "ready")
    rc, took = child.stop_like_the_platform(grace=8)  # the app's exit code, before the platform's SIGKILL
    assert rc == 3, f"exit code {rc} after {took:.2f}s (grace 8 s)\n{child.stderr()}"
    assert read_back(app, "state.txt", "handler.txt") == {"state.txt": "v1", "handler.txt": "the app's handler ran"}


def test_sigint_keeps_python_behaviour(tmp_path: Path) -> None:
    """SIGINT: checkpoint, then Python's own KeyboardInterrupt, exiting exactly as it would without fractfs."""
    app = App(tmp_path, str(tmp_path / "vol"), "app")
    # as in an interactive program: a shell that starts jobs in the background hands them SIGINT ignored
    body = """
        signal.signal(signal.SIGINT, signal.default_int_handler)
        {init}
        put("state.txt", "saved at ctrl-c")
        try:
            out(event="ready")
            time.sleep(60)
        except KeyboardInterrupt:
            out(event="kbd")
            raise
    """
    codes = {}
    control = App(tmp_path, str(tmp_path / "unused"), "control")
    for label, node, init in (("control", control, "pass"), ("fractfs", app, "fractfs.init()")):
        child = node.spawn(body.format(init=init))
        child.expect("event", "ready")
        child.signal(signal.SIGINT)
        codes[label] = child.finish()
        assert any(m.get("event") == "kbd" for m in child.seen), child.stderr()
    assert codes["fractfs"] == codes["control"]
    assert read_back(app, "state.txt") == {"state.txt": "saved at ctrl-c"}


def test_exit_without_shutdown_runs_final_checkpoint(tmp_path: Path) -> None:
    """A script that just ends: the exit hook checkpoints (it must run before concurrent.futures shuts its
    pools down at interpreter exit, or the uploads would be refused), after the app's own non-daemon threads
    are done, and releases the lease."""
    app = App(tmp_path, str(tmp_path / "vol"))
    app.run("""
        import threading
        fractfs.init()
        put("state.txt", "written just before the end of the script")
        def worker():
            time.sleep(0.5)
            put("worker.txt", "written by a thread after the main thread returned")
        threading.Thread(target=worker).start()
        out(done=True)
    """)
    assert not [k for k, _ in app.store().list("locks/")]
    assert read_back(app, "state.txt", "worker.txt") == {
        "state.txt": "written just before the end of the script",
        "worker.txt": "written by a thread after the main thread returned"}


def test_sync_interval_zero_checkpoints_only_when_asked_and_at_the_end(tmp_path: Path) -> None:
    """fractfs_SYNC_INTERVAL=0, as fractfs 0.1.0 read it: no periodic checkpoint, and in watch mode no
    change-driven one either (no sync or watch thread runs); sync_now() and the final checkpoint at SIGTERM
    still save."""
    app = App(tmp_path, str(tmp_path / "vol"))
    child = app.spawn("""
        import threading
        st = fractfs.init()
        put("state.txt", "saved by sync_now")
        stored = fractfs.sync_now()
        put("state.txt", "saved by the final checkpoint")
        out(event="ready", stored=stored, interval=st["sync_interval"], mode=st["sync_mode"],
            configured=st["sync_mode_configured"], daemon=st["daemon_running"], watch=st["watch"],
            threads=sorted(t.name for t in threading.enumerate()))
        time.sleep(60)
    """, fractfs_SYNC_INTERVAL="0", fractfs_SYNC_MODE="watch", fractfs_GRACE="4")
    ready = child.expect("event", "ready")
    assert ready["stored"] == ["state.txt"] and ready["interval"] == 0
    assert (ready["mode"], ready["configured"], ready["daemon"], ready["watch"]) == ("manual", "watch", False, None)
    assert not {"fractfs-sync", "fractfs-watch"} & set(ready["threads"]), ready["threads"]
    assert "fractfs-lease" in ready["threads"]  # the lease is still held and renewed for the final checkpoint
    assert len(node_of(app)) == 1
    child.signal(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM, child.stderr()
    assert len(node_of(app)) == 2
    assert read_back(app, "state.txt") == {"state.txt": "saved by the final checkpoint"}
    # a script that just ends: the exit hook runs the final checkpoint too
    app.run("""
        fractfs.init()
        put("state.txt", "saved at exit")
        out(done=True)
    """, fractfs_SYNC_INTERVAL="0")
    assert read_back(app, "state.txt") == {"state.txt": "saved at exit"}


SLOW_STORE = """
    from fractfs.stores.posix import PosixStore
    _put = PosixStore.put
    def slow_put(self, key, data, **kw):
        if key.startswith(("packs/", "objects/")):
            time.sleep(len(data) / 20e6)  # a 20 MB/s link: with one transfer, 120 MB take longer than the grace
        return _put(self, key, data, **kw)
    PosixStore.put = slow_put
"""


def test_sigterm_on_slow_store_within_grace(tmp_path: Path) -> None:
    """SIGTERM while a big background checkpoint is still uploading over a slow link: the process ends by itself
    before the platform's SIGKILL at the end of the grace (fractfs stops its own work 10 % of the grace
    earlier), the newest write made it, and what was left out is named."""
    app = App(tmp_path, str(tmp_path / "vol"))
    child = app.spawn(textwrap.dedent(SLOW_STORE) + textwrap.dedent("""
        fractfs.init()
        os.makedirs("bulk", exist_ok=True)
        old = time.time() - 3600
        for i in range(40):
            with open(f"bulk/f{i}.bin", "wb") as f:
                f.write(os.urandom(3_000_000))
            os.utime(f"bulk/f{i}.bin", (old + i, old + i))
        put("newest.txt", "the most recent write")
        while not fractfs.status()["sync_running"]:
            time.sleep(0.01)
        out(event="ready")
        time.sleep(60)
    """), fractfs_GRACE="5", fractfs_SYNC_INTERVAL="0.5", fractfs_TRANSFERS="1")
    child.expect("event", "ready")
    rc, took = child.stop_like_the_platform(grace=5)
    err = child.stderr()
    assert rc == -signal.SIGTERM, f"exit code {rc} after {took:.2f}s (grace 5 s)\n{err}"
    assert ("root", "newest.txt") in snapshot.latest_paths(app.store()), err
    # what did not fit is named, newest first (the oldest files are the ones left for later)
    line = next(ln for ln in err.splitlines() if "not stored" in ln)
    named = [int(p.split("bulk/f")[1].split(".")[0]) for p in line.split(": ", 2)[-1].split(", ")]
    assert named == sorted(named, reverse=True), line


# -- data-loss window under SIGKILL ----------------------------------------------------------------------

def test_sigkill_interval_mode_loses_only_writes_after_the_last_checkpoint(tmp_path: Path) -> None:
    """interval mode: the daemon checkpoints on its own, again and again, and a SIGKILL loses only what was
    written after the start of the last checkpoint that completed. Decided from the checkpoints the app saw
    complete (status()), not from how long a loaded machine takes; the data-loss window itself is measured
    by benchmarks/data_loss_window.py."""
    app = App(tmp_path, str(tmp_path / "vol"))
    child = app.spawn("""
        fractfs.init()
        i = 0
        while True:
            i += 1
            put("counter.txt", str(i))
            st = fractfs.status()
            done = st["last_sync_time"]
            # the start of the newest completed checkpoint (times are rounded to the ms: stay below), unless
            # the file kept changing while it read it and so kept its previous version ("busy")
            started = None if done is None or "counter.txt" in st["last_skipped_busy"] else (
                done - st["last_sync_duration"] - 0.002)
            out(i=i, t=time.time(), syncs=st["syncs"], started=started)
            time.sleep(0.05)
    """, fractfs_SYNC_INTERVAL="0.5", fractfs_SYNC_MODE="interval")
    while True:  # four checkpoints the daemon made by itself, the last one with the file captured
        msg = child.expect("syncs", timeout=60)
        if msg["syncs"] >= 4 and msg["started"] is not None:
            break
    child.signal(signal.SIGKILL)
    child.finish()
    msgs = [m for m in child.seen if "i" in m]
    started = max(m["started"] for m in msgs if m["started"] is not None)
    must_have = max((m["i"] for m in msgs if m["t"] < started), default=0)
    got = read_back(app, "counter.txt")["counter.txt"]
    assert got is not None
    assert must_have <= int(got) <= msgs[-1]["i"], (must_have, got, msgs[-1])


def test_sigkill_watch_mode_keeps_what_the_watcher_saved(tmp_path: Path) -> None:
    """watch mode, with a 3600 s interval so that only the watcher can trigger a checkpoint: each burst of
    writes is checkpointed once it is over, and a SIGKILL after that loses none of it."""
    app = App(tmp_path, str(tmp_path / "vol"))
    child = app.spawn("""
        st = fractfs.init()
        assert st["sync_mode"] == "watch", st["warnings"]
        for burst in range(1, 3):
            for j in range(5):
                put("counter.txt", f"{burst}.{j}")
                time.sleep(0.02)
            end = time.time()
            while True:  # until a checkpoint that started after the burst has completed
                s = fractfs.status()
                if s["last_sync_time"] and s["last_sync_time"] - s["last_sync_duration"] - 0.002 > end:
                    break
                time.sleep(0.01)
            out(burst=burst, saved_after=time.time() - end)
        time.sleep(60)
    """, fractfs_SYNC_MODE="watch")
    child.expect("burst", 2, timeout=60)
    child.signal(signal.SIGKILL)
    child.finish()
    assert read_back(app, "counter.txt") == {"counter.txt": "2.4"}


# -- the daemon --------------------------------------------------------------------------------------------

def test_daemon_survives_a_failing_store(tmp_path: Path) -> None:
    app = App(tmp_path, str(tmp_path / "vol"))
    flag = tmp_path / "outage"
    out = app.run(f"""
        from fractfs.errors import StoreError
        from fractfs.stores.posix import PosixStore
        FLAG = {str(flag)!r}
        for name in ("put", "put_file"):
            def broken(self, *a, _orig=getattr(PosixStore, name), **kw):
                if os.path.exists(FLAG):
                    raise StoreError("simulated outage")
                return _orig(self, *a, **kw)
            setattr(PosixStore, name, broken)
        fractfs.init()
        open(FLAG, "w").close()
        put("work.txt", "written during the outage")
        end = time.time() + 20
        while fractfs.status()["consecutive_failures"] < 3 and time.time() < end:
            time.sleep(0.05)
        during = fractfs.status()
        os.remove(FLAG)
        while fractfs.status()["consecutive_failures"] and time.time() < end:
            time.sleep(0.05)
        after = fractfs.status()
        fractfs.shutdown()
        out(during=during, after=after)
    """, fractfs_SYNC_INTERVAL="0.3")
    during, after = out["during"], out["after"]
    assert during["consecutive_failures"] >= 3 and during["daemon_running"] is True
    assert "simulated outage" in during["last_error"] and during["last_error_time"] > 0
    assert after["consecutive_failures"] == 0 and after["daemon_running"] is True
    assert after["last_sync_time"] > during["last_error_time"]
    for key in ("last_sync_start", "last_sync_duration", "files", "bytes", "last_snapshot_id", "lease_holder",
                "sync_mode", "last_error", "last_error_time", "writer", "lease", "sync_running"):
        assert key in after, key
    assert after["files"] == 1 and after["lease_holder"] == after["node_id"] and after["writer"] is True
    assert read_back(app, "work.txt") == {"work.txt": "written during the outage"}


def test_watch_mode_follows_changes_and_stays_idle(tmp_path: Path) -> None:
    app = App(tmp_path, str(tmp_path / "vol"))
    out = app.run("""
        from fractfs import snapshot
        from fractfs.stores import open_store
        store = open_store(os.environ["fractfs_VOLUME_ROOT"] + "/_checkpoint")
        def window(rel):
            # the interval is 3600 s: a snapshot with this file can only come from the watcher
            t0 = time.time()
            while ("root", rel) not in snapshot.latest_paths(store):
                assert time.time() - t0 < 60, rel
                time.sleep(0.02)
            return time.time() - t0
        def syncs():
            return fractfs.status()["syncs"]
        st = fractfs.init()
        res = {"mode": st["sync_mode"], "watched": st["watch"]["watched_dirs"]}
        put("a.txt", "a")
        res["flat"] = window("a.txt")
        os.makedirs("n1/n2/n3")
        put("n1/n2/n3/deep.txt", "new directories are watched as they appear")
        res["deep"] = window("n1/n2/n3/deep.txt")
        os.rename("n1", "m1")
        put("m1/n2/n3/moved.txt", "a moved directory is still watched")
        res["moved"] = window("m1/n2/n3/moved.txt")
        s0, t0 = syncs(), time.time()
        while True:  # quiet: no checkpoint for a whole second (the move's own events may trigger one more)
            time.sleep(1)
            if syncs() == s0:
                break
            s0 = syncs()
            assert time.time() - t0 < 30, "the daemon never went quiet"
        for i in range(10):
            open("junk.tmp", "w").write(str(i))  # ignored: must not wake the daemon
            time.sleep(0.05)
        time.sleep(1.5)
        res["after_ignored"] = syncs() - s0
        fractfs.shutdown()
        out(**res)
    """, fractfs_SYNC_MODE="watch")
    assert out["mode"] == "watch" and out["watched"] >= 1
    assert out["after_ignored"] == 0, out


def test_watch_mode_falls_back_to_interval(tmp_path: Path) -> None:
    app = App(tmp_path, str(tmp_path / "vol"))
    st = app.run("""
        import fractfs.watch
        fractfs.watch.available = lambda: "simulated: no inotify here"
        st = fractfs.init()
        fractfs.shutdown()
        out(**st)
    """, fractfs_SYNC_MODE="watch")
    assert st["sync_mode"] == "interval" and st["sync_mode_configured"] == "watch"
    assert any("falling back to interval" in w and "simulated" in w for w in st["warnings"])


# -- two nodes, one Volume ---------------------------------------------------------------------------------

def test_second_node_is_read_only_until_the_first_releases(tmp_path: Path) -> None:
    shared = str(tmp_path / "shared-volume")
    a, b = App(tmp_path, shared, "a"), App(tmp_path, shared, "b")
    stop_a = tmp_path / "stop-a"
    node_a = a.spawn(f"""
        fractfs.init()
        put("owner.txt", "A")
        put("a.txt", "from A")
        fractfs.sync_now()
        st = fractfs.status()
        out(event="ready", node=st["node_id"], writer=st["writer"])
        while not os.path.exists({str(stop_a)!r}):
            put("owner.txt", "A")
            time.sleep(0.1)
        fractfs.shutdown()
        out(event="done")
    """, fractfs_SYNC_INTERVAL="0.3")
    ready = node_a.expect("event", "ready")
    assert ready["writer"] is True
    node_b = b.spawn(f"""
        st = fractfs.init()
        out(event="init", writer=st["writer"], holder=st["lease_holder"], warnings=st["warnings"],
            restored=open("a.txt").read())
        put("owner.txt", "B")
        put("b.txt", "from B")
        out(event="standby", stored=fractfs.sync_now(), writer=fractfs.status()["writer"])
        time.sleep(1.0)  # a few of A's intervals: B must still not write
        open({str(stop_a)!r}, "w").close()
        t0 = time.time()
        while not fractfs.status()["writer"]:
            assert time.time() - t0 < 15
            time.sleep(0.05)
        out(event="took", after=time.time() - t0, takeovers=fractfs.status()["lease"]["takeovers"])
        while fractfs.status()["syncs"] == 0:
            time.sleep(0.05)
        fractfs.shutdown()
        out(event="done")
    """, fractfs_SYNC_INTERVAL="0.3")
    init = node_b.expect("event", "init")
    assert init["writer"] is False and init["holder"] == ready["node"]
    assert init["restored"] == "from A"  # read-only restore works
    assert any("holds the checkpoint lease" in w and ready["node"] in w for w in init["warnings"])
    standby = node_b.expect("event", "standby")
    assert standby["stored"] == [] and standby["writer"] is False
    took = node_b.expect("event", "took")
    # a released lease is simply acquired (at the next poll), not waited out and taken over as a stale one
    assert took["takeovers"] == 0, took
    node_b.expect("event", "done")
    assert node_a.finish() == 0 and node_b.finish() == 0
    err_b = node_b.stderr()
    assert "holds the checkpoint lease" in err_b
    assert "acquired the checkpoint lease" in err_b and "took over the checkpoint lease" not in err_b, err_b
    nodes = node_of(a)
    first_b = next(i for i, n in enumerate(nodes) if n != ready["node"])
    assert all(n == ready["node"] for n in nodes[:first_b]) and all(n != ready["node"] for n in nodes[first_b:])
    c = App(tmp_path, shared, "c")
    assert read_back(c, "owner.txt", "a.txt", "b.txt") == {"owner.txt": "B", "a.txt": "from A", "b.txt": "from B"}


def test_stale_lease_is_taken_over_after_sigkill(tmp_path: Path) -> None:
    vol = str(tmp_path / "vol")
    a, b = App(tmp_path, vol, "a"), App(tmp_path, vol, "b")
    node_a = a.spawn("""
        st = fractfs.init()
        put("state.txt", "A")
        fractfs.sync_now()
        out(event="ready", node=st["node_id"])
        time.sleep(60)
    """, fractfs_LEASE_TIMEOUT="1.6")
    ready = node_a.expect("event", "ready")
    node_a.signal(signal.SIGKILL)
    node_a.finish()
    out = b.run("""
        import re
        takeover = []
        class Seen(logging.Handler):
            def emit(self, record):
                m = re.search(r"took over the checkpoint lease from (\\S+) \\(no heartbeat for ([0-9.]+)s\\)",
                              record.getMessage())
                if m:
                    takeover.append([m.group(1), float(m.group(2))])
        logging.getLogger("fractfs").addHandler(Seen())
        st = fractfs.init()
        t0 = time.monotonic()
        put("state.txt", "B")
        while not fractfs.status()["writer"]:
            assert time.monotonic() - t0 < 15
            time.sleep(0.05)
        took = time.monotonic() - t0
        while fractfs.status()["syncs"] == 0:
            time.sleep(0.05)
        final = fractfs.status()
        fractfs.shutdown()
        out(init_writer=st["writer"], init_holder=st["lease_holder"], took=took, lease=final["lease"],
            takeover=takeover)
    """, fractfs_LEASE_TIMEOUT="1.6")
    assert out["init_writer"] is False and out["init_holder"] == ready["node"]
    # taken over as stale, from the killed node, after B itself saw no heartbeat for the whole timeout
    assert len(out["takeover"]) == 1 and out["takeover"][0][0] == ready["node"], out
    assert out["takeover"][0][1] >= 1.6, out
    assert out["lease"]["takeovers"] == 1
    assert read_back(App(tmp_path, vol, "c"), "state.txt") == {"state.txt": "B"}


def test_sync_now_without_daemon_keeps_the_lease_through_a_slow_checkpoint(tmp_path: Path) -> None:
    """With start_daemon=False no thread renews the lease between calls; a sync_now() that takes longer than
    the lease's validity (half its timeout) must still commit, because it renews the lease while it runs."""
    app = App(tmp_path, str(tmp_path / "vol"))
    out = app.run("""
        import fractfs.stores as stores
        real = stores.open_store
        class SlowPacks:
            # The store accepts a pack only once the lease object on it shows three more heartbeats: the
            # checkpoint then outlasts the 1 s a 2 s lease stays valid unrenewed (beats come every 0.5 s),
            # and it can only go on if something renews the lease meanwhile.
            def __init__(self, inner):
                self.inner = inner
                self.beats_during_upload = None
            def __getattr__(self, name):
                return getattr(self.inner, name)
            def beat(self):
                key = max(k for k, _ in self.inner.list("locks/"))
                return json.loads(self.inner.get(key))["beat"]
            def put(self, key, data, **kw):
                if key.startswith("packs/"):
                    first, t0 = self.beat(), time.monotonic()
                    while self.beat() < first + 3:
                        assert time.monotonic() - t0 < 30, "the lease was not renewed during the checkpoint"
                        time.sleep(0.02)
                    self.beats_during_upload = self.beat() - first
                return self.inner.put(key, data, **kw)
        slow = []
        stores.open_store = lambda *a, **kw: slow.append(SlowPacks(real(*a, **kw))) or slow[-1]
        fractfs.init(start_daemon=False)
        put("state.txt", "saved slowly")
        stored = fractfs.sync_now()
        st = fractfs.status()
        fractfs.shutdown(final_sync=False)
        out(stored=stored, beats=slow[-1].beats_during_upload, error=st["last_error"], snap=st["last_snapshot_id"])
    """, fractfs_LEASE_TIMEOUT="2")
    assert out["stored"] == ["state.txt"] and out["error"] is None and out["snap"], out
    assert out["beats"] >= 3, out  # renewed while the checkpoint ran, and committed after that
    assert read_back(App(tmp_path, str(tmp_path / "vol"), "cold"), "state.txt") == {"state.txt": "saved slowly"}


def test_two_racing_nodes_never_mix_state(tmp_path: Path) -> None:
    """Two nodes start together on one Volume and rewrite the same files with their own name; the writer is
    killed mid-way and the other takes over. Every snapshot is valid and belongs to one node entirely."""
    vol = str(tmp_path / "vol")
    body = """
        me = os.environ["NODE_NAME"]
        st = fractfs.init()
        n = 0
        t0 = time.time()
        # runs until the test says stop (after the survivor took over), not for a fixed time that a loaded
        # machine could use up before the takeover
        while not os.path.exists(os.environ["STOP_FILE"]) and time.time() - t0 < 60:
            n += 1
            for i in range(8):
                put(f"f{i}.txt", f"{me}:{n}")
            if n % 5 == 0:
                out(name=me, node=st["node_id"], writer=fractfs.status()["writer"], n=n)
            time.sleep(0.02)
        fractfs.shutdown()
        out(event="done")
    """
    apps = {x: App(tmp_path, vol, x) for x in "AB"}
    stop = tmp_path / "stop"
    kids = {x: apps[x].spawn(body, NODE_NAME=x, fractfs_SYNC_MODE="watch", fractfs_SYNC_INTERVAL="0.3",
                             fractfs_LEASE_TIMEOUT="1.2", STOP_FILE=str(stop)) for x in "AB"}
    ids = {x: kids[x].expect("name", x)["node"] for x in "AB"}
    end = time.monotonic() + 10
    writer = None
    while writer is None and time.monotonic() < end:
        for x in "AB":
            msg = kids[x].expect("name", x)
            if msg["writer"]:
                writer = x
    assert writer is not None
    store = apps["A"].store()
    while not snapshot.list_snapshots(store) and time.monotonic() < end:
        time.sleep(0.05)  # the survivor must take over from a node that did write snapshots
    time.sleep(0.3)
    kids[writer].signal(signal.SIGKILL)
    other = "B" if writer == "A" else "A"
    kids[other].expect("writer", True, timeout=30)  # the survivor takes the lease once the heartbeat stops
    time.sleep(0.5)
    stop.touch()
    for x in "AB":
        kids[x].finish()
    snaps = snapshot.list_snapshots(store)
    assert snaps and all(s.valid for s in snaps)
    assert snapshot.verify(store, "all").ok
    owners = []
    for s in snaps:
        dest = tmp_path / "check" / s.id
        dest.mkdir(parents=True)
        snapshot.restore(store, {"root": dest, "scratch": tmp_path / "check" / (s.id + "-scratch")},
                         snapshot_id=s.id)
        # a file that was busy in a node's first checkpoints may be missing, never someone else's
        values = {p.read_text().split(":")[0] for p in dest.glob("f*.txt")}
        assert len(values) == 1, f"snapshot {s.id} mixes {values}"
        name = values.pop()
        assert ids[name] == s.node, f"snapshot {s.id} by {s.node} holds {name}'s files"
        owners.append(name)
    # the killed writer's snapshots all come before the survivor's, and the survivor did take over
    assert owners[-1] == other and owners == sorted(owners, key=lambda n: n == other)


# -- the lease in-process ----------------------------------------------------------------------------------

class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_lease_takeover_rules(tmp_path: Path) -> None:
    store = PosixStore(str(tmp_path / "ckpt"))
    mono, wall = Clock(), Clock(1.7e9)
    a = Lease(store, "A", 10, clock=mono, wall=wall)
    b = Lease(store, "B", 10, clock=mono, wall=wall)
    assert a.tick() is True
    assert b.tick() is False and b.describe()["holder"] == "A" and b.describe()["state"] == "standby"
    mono.t += 6
    assert b.tick() is False  # only 6 s without a change
    assert a.valid() is False  # but A must not commit on a 6 s old renewal (timeout / 2)
    assert a.tick() is True  # renewed: a new beat
    mono.t += 6
    assert b.tick() is False  # B sees the new beat now: its clock restarts from this look
    mono.t += 9.9
    assert b.tick() is False
    mono.t += 0.1
    assert b.tick() is True  # 10 s of B's time without a change: stale, taken over (generation 2)
    assert b.takeovers == 1 and b.generation == 2
    assert a.tick() is False and a.held is False  # A finds the newer generation and stands down
    assert [k for k, _ in store.list("locks/")] == [lease_key(2)]
    b.release()
    assert list(store.list("locks/")) == []
    assert a.tick() is True  # a released lease is free at once


def test_lease_unreadable_or_ancient_objects(tmp_path: Path) -> None:
    store = PosixStore(str(tmp_path / "ckpt"))
    mono, wall = Clock(), Clock(1.7e9)
    store.put(lease_key(7), b'{"format": "fractfs-lease", "vers')  # torn
    b = Lease(store, "B", 5, clock=mono, wall=wall)
    assert b.tick() is False
    mono.t += 5
    assert b.tick() is True and b.generation == 8
    # a heartbeat older than timeout + any plausible clock skew (writer's clock) is not waited for
    c = Lease(store, "C", 5, clock=mono, wall=Clock(wall.t + 5 + MAX_CLOCK_SKEW + 1))
    assert c.tick() is True and c.generation == 9
    assert b.tick() is False


@pytest.mark.parametrize("kind", ["plain", "s3"])
def test_lease_exclusive_create_has_one_winner(tmp_path: Path, kind: str, request: pytest.FixtureRequest) -> None:
    url = str(request.getfixturevalue("s3_url")) if kind == "s3" else str(tmp_path / "ckpt")
    store = open_store(url)  # one client is enough: the race is decided by the server (or the filesystem)
    leases = [Lease(store, f"n{i}", 30) for i in range(8)]
    barrier = threading.Barrier(len(leases))
    results: list[bool] = []

    def go(lease: Lease) -> None:
        barrier.wait()
        results.append(lease.tick())

    threads = [threading.Thread(target=go, args=(x,)) for x in leases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert [k for k, _ in store.list("locks/")] == [lease_key(1)]
    winner = next(x for x in leases if x.held)
    loser = next(x for x in leases if not x.held)
    assert loser.describe()["holder"] == winner.node_id
    winner.release()
    assert list(store.list("locks/")) == []
    assert loser.tick() is True and loser.generation == 1


def test_commit_is_fenced_by_the_lease_and_an_aborted_store_refuses_everything(tmp_path: Path) -> None:
    """The commit rule lives in engine.commit's fence, not in a store wrapper matching key names: content goes
    up without the lease, the manifest only while the fence allows it; an aborted store refuses every call."""
    store = PosixStore(str(tmp_path / "ckpt"))
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("content is fine without the lease")
    ok = [False]

    def fence() -> None:
        if not ok[0]:
            raise LeaseLost("not committing: no valid lease (test)")

    g = abortable(store)
    sdir = engine.state_path(tmp_path / "state")
    with StateLock(sdir):
        prep = engine.prepare(g, {"root": src}, None, sdir)
        assert prep.name is not None
        with pytest.raises(LeaseLost):
            engine.commit(g, prep, fence)
    assert [k for k, _ in store.list("packs/")], "content is uploaded before the fence is asked"
    assert list(store.list("snapshots/")) == []
    ok[0] = True
    with StateLock(sdir):
        prep = engine.prepare(g, {"root": src}, None, sdir)
        res = engine.commit(g, prep, fence)
    assert res.snapshot_id is not None and prep.name is not None and res.snapshot_id == prep.name.id
    # the manifest, then the head pointer naming it (docs/format.md, "The head")
    assert sorted(k for k, _ in store.list("snapshots/")) == sorted([prep.name.key, catalog.HEAD_KEY])
    assert catalog.read_head(store) == prep.name
    g.put("packs/ab/x", b"x")
    g.abort()
    for call in (lambda: g.get("packs/ab/x"), lambda: list(g.list("")), lambda: g.put("packs/ab/y", b"y"),
                 lambda: g.delete("packs/ab/x"), lambda: g.size("packs/ab/x")):
        with pytest.raises(CheckpointAborted):
            call()
    assert store.get("packs/ab/x") == b"x" and store.size("packs/ab/y") is None
    assert isinstance(CheckpointAborted("x"), Exception) and not isinstance(CheckpointAborted("x"), StoreError)

def test_a_cold_start_that_takes_over_decodes_only_the_newest_snapshot(tmp_path: Path) -> None:
    """A node that died without giving the lease back is the usual cold start (preempted, OOM-killed). Taking
    the stale lease over (a lease timeout after init()) used to list and decode every snapshot kept, one
    decode per snapshot and half a second each at 100 000 files, just to decide on a warning."""
    vol = str(tmp_path / "vol")
    a, b, c = App(tmp_path, vol, "a"), App(tmp_path, vol, "b"), App(tmp_path, vol, "c")

    def a_checkpoints_then_dies(states: list[str]) -> None:
        """Node A checkpoints each state in turn, then is killed holding the lease."""
        node_a = a.spawn(f"""
            fractfs.init()
            for text in {states!r}:
                put("state.txt", text)
                fractfs.sync_now()
            out(event="ready")
            time.sleep(60)
        """, fractfs_LEASE_TIMEOUT="1.6")
        node_a.expect("event", "ready")
        node_a.signal(signal.SIGKILL)
        node_a.finish()

    a_checkpoints_then_dies([f"A{i}" for i in range(4)])
    code = """
        from fractfs.snapshot import catalog
        loads = []
        real_load = catalog.load
        def counting_load(store, name, *a, **k):
            loads.append(name.id)
            return real_load(store, name, *a, **k)
        catalog.load = counting_load
        warned = []
        class Seen(logging.Handler):
            def emit(self, record):
                if "checkpointed over it" in record.getMessage():
                    warned.append(record.getMessage())
        logging.getLogger("fractfs").addHandler(Seen())
        st = fractfs.init(restore=RESTORE)
        text = open("state.txt").read() if os.path.exists("state.txt") else None
        t0 = time.monotonic()
        while not fractfs.status()["writer"]:  # it waits out one lease timeout of its own, then takes over
            assert time.monotonic() - t0 < 15
            time.sleep(0.05)
        time.sleep(0.3)
        takeovers = fractfs.status()["lease"]["takeovers"]
        fractfs.shutdown(final_sync=False)
        out(takeovers=takeovers, loads=loads, warned=warned, text=text)
    """
    got = b.run(code.replace("RESTORE", "True"), fractfs_LEASE_TIMEOUT="1.6")
    assert got["takeovers"] == 1, got
    # one decode: the restore's (the newest snapshot is the restored one: the takeover's check lists names)
    assert len(got["loads"]) == 1 and got["text"] == "A3" and got["warned"] == [], got
    # a node that keeps its local state instead (restore=False) is warned that it will overwrite A's
    a_checkpoints_then_dies(["A4"])
    got = c.run(code.replace("RESTORE", "False"), fractfs_LEASE_TIMEOUT="1.6")
    assert got["takeovers"] == 1 and got["text"] is None, got
    # the newest snapshot only (init(), the takeover's check of who wrote it, the checkpoint that follows):
    # never the four older ones kept
    assert {n[:12] for n in got["loads"]} == {"000000000005"} and len(got["warned"]) == 1, got
