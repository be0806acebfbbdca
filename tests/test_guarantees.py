"""Eight guarantees, one test each, written to fail when the guarantee is broken (issue 15).

Each of these was checked by breaking the guarantee on purpose in the source (the mutation is named in the
test's docstring and in docs/reliability.md, "Guarantees pinned by a test") and watching the test go red.
They drive the public API (``fractfs.init``/``sync_now``/``shutdown``), the CLI, real processes and signals,
the snapshot and lease APIs, and real filesystems; the only engine internal used is the one existing test
hook, ``snapshot.capture._after_read_hook``.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import SRC, App, read_back
from test_snapshot_support import everything, make_store, write

from fractfs import snapshot
from fractfs.lease import Lease
from fractfs.snapshot import capture as capture_mod
from fractfs.snapshot.format import parse_snapshot_id
from fractfs.stores.posix import PosixStore


# -- 1. no commit without a valid lease ---------------------------------------------------------------------

def test_commit_is_refused_once_the_lease_cannot_be_renewed(tmp_path: Path) -> None:
    """A checkpoint that started with a valid lease, whose pack upload then outlasts the lease's validity while
    the heartbeat fails, must not commit: another node may have taken over meanwhile.

    Broken by: ``LeaseKeeper.fence`` not raising (the commit check always allows)."""
    app = App(tmp_path, str(tmp_path / "vol"))
    out = app.run(f"""
        from fractfs.errors import StoreError
        from fractfs.stores.posix import PosixStore
        ARMED, OUTAGE = {str(tmp_path / "armed")!r}, {str(tmp_path / "outage")!r}
        real_put, real_list = PosixStore.put, PosixStore.list
        def store_put(self, key, data, **kw):
            if key.startswith("locks/") and os.path.exists(OUTAGE):
                raise StoreError("heartbeat outage (test)")
            if key.startswith("packs/") and os.path.exists(ARMED):
                os.remove(ARMED)
                open(OUTAGE, "w").close()  # from now on every heartbeat fails
                t0 = time.monotonic()
                # the upload takes until this node's lease is no longer valid (an event, not a sleep)
                while fractfs.status()["lease"]["held"]:
                    assert time.monotonic() - t0 < 30, "the lease never went invalid"
                    time.sleep(0.02)
            return real_put(self, key, data, **kw)
        def store_list(self, prefix=""):
            if prefix.startswith("locks/") and os.path.exists(OUTAGE):
                raise StoreError("heartbeat outage (test)")
            return real_list(self, prefix)
        PosixStore.put, PosixStore.list = store_put, store_list
        fractfs.init()
        put("state.txt", "v1")
        fractfs.sync_now()
        put("state.txt", "v2")
        open(ARMED, "w").close()
        try:
            fractfs.sync_now()
            refused = None
        except fractfs.FractfsError as exc:
            refused = type(exc).__name__ + ": " + str(exc)
        os.remove(OUTAGE)
        t0 = time.monotonic()
        while not fractfs.status()["writer"]:
            assert time.monotonic() - t0 < 30, "the lease was not renewed after the outage"
            time.sleep(0.02)
        after = fractfs.sync_now()
        fractfs.shutdown(final_sync=False)
        out(refused=refused, after=after)
    """)
    assert out["refused"] is not None and out["refused"].startswith("LeaseLost"), out
    assert out["after"] == ["state.txt"], out  # once the lease is confirmed again, the same change commits
    assert read_back(app, "state.txt") == {"state.txt": "v2"}
    seqs = [s.seq for s in snapshot.list_snapshots(app.store())]
    assert seqs == [1, 2], seqs  # nothing was committed while the lease was unconfirmed


# -- 2. the stat cache is only trusted against the snapshot it was written after -------------------------

def test_checkpoint_after_the_store_was_emptied_stores_everything_again(tmp_path: Path) -> None:
    """The checkpoint area is emptied under a running node (an operator, a lifecycle rule): its next checkpoint
    must not reuse the stat cache, whose entries point at packs that are gone, but upload everything.

    Broken by: dropping ``hdr.snapshot == newest.id`` from the engine's "synced" test."""
    app = App(tmp_path, str(tmp_path / "vol"))
    ckpt = tmp_path / "vol" / "_checkpoint"
    out = app.run(f"""
        import shutil
        fractfs.init(start_daemon=False)
        put("a.txt", "A")
        put("b.txt", "B")
        first = fractfs.sync_now()
        for d in ("snapshots", "packs", "objects"):
            shutil.rmtree(os.path.join({str(ckpt)!r}, d), ignore_errors=True)
        put("c.txt", "C")
        second = fractfs.sync_now()
        fractfs.shutdown(final_sync=False)
        out(first=first, second=second)
    """)
    assert sorted(out["first"]) == ["a.txt", "b.txt"]
    assert sorted(out["second"]) == ["a.txt", "b.txt", "c.txt"], out
    assert snapshot.verify(app.store(), "all").ok
    assert read_back(app, "a.txt", "b.txt", "c.txt") == {"a.txt": "A", "b.txt": "B", "c.txt": "C"}


# -- 3. a SQLite commit that lives only in the WAL -----------------------------------------------------------

def test_sqlite_commit_only_in_the_wal_is_checkpointed(tmp_path: Path) -> None:
    """With ``wal_autocheckpoint=0`` and the app's connection open, a commit changes only ``app.db-wal``; the
    database file itself keeps its size and mtime. The next checkpoint must still copy the database.

    Broken by: the engine trusting a SQLite database's cached row without comparing its sidecars' facts."""
    app = App(tmp_path, str(tmp_path / "vol"))
    out = app.run("""
        import sqlite3
        fractfs.init(start_daemon=False)
        con = sqlite3.connect("app.db", isolation_level=None)
        con.execute("pragma journal_mode=wal")
        con.execute("pragma wal_autocheckpoint=0")
        con.execute("create table t(x)")
        con.execute("insert into t values (1)")
        time.sleep(0.2)  # files changed within the last few ms are not cached as settled: let them settle
        first = fractfs.sync_now()
        before = os.stat("app.db")
        con.execute("insert into t values (2)")
        after = os.stat("app.db")
        second = fractfs.sync_now()
        fractfs.shutdown(final_sync=False)
        out(first=first, second=second,
            main_file_unchanged=(before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns))
        os._exit(0)  # without closing the connection, which would fold the WAL into the main file
    """)
    assert out["main_file_unchanged"] is True  # the precondition: the second commit is only in the WAL
    assert out["first"] == ["app.db"] and out["second"] == ["app.db"], out
    app.wipe()
    rows = app.run("""
        import sqlite3
        fractfs.init(start_daemon=False)
        out(rows=sqlite3.connect("app.db").execute("select x from t order by x").fetchall())
        fractfs.shutdown(final_sync=False)
    """)
    assert rows == {"rows": [[1], [2]]}


# -- 4. clock skew does not make a live lease look ancient --------------------------------------------------

def test_a_node_whose_clock_runs_ahead_does_not_take_a_live_lease(tmp_path: Path) -> None:
    """The holder's wall-clock time in the lease is a hint; a reader whose clock runs 45 s ahead (with a 30 s
    lease timeout) must still wait for the heartbeat to stop, not take the lease over at once.

    Broken by: ``lease.MAX_CLOCK_SKEW = 0``."""
    store = PosixStore(tmp_path / "ckpt")
    holder = Lease(store, "holder", 30)
    assert holder.tick() is True
    for skew in (45.0, 90.0):
        ahead = Lease(store, f"ahead-{skew:g}", 30, wall=lambda s=skew: time.time() + s)
        assert ahead.tick() is False, f"a node {skew:g}s ahead took over a live lease"
        assert ahead.describe()["state"] == "standby" and ahead.describe()["holder"] == "holder"
        assert ahead.takeovers == 0
    assert holder.tick() is True and holder.held  # still the only writer


# -- 5. SIGTERM: the checkpoint comes before the app's own handler ------------------------------------------

def test_sigterm_checkpoints_before_an_app_handler_that_exits_at_once(tmp_path: Path) -> None:
    """An app's SIGTERM handler that ends the process with ``os._exit`` runs no exit hook, so the final state
    must have been saved before the handler was called.

    Broken by: skipping the checkpoint in the signal handler when an app handler is installed."""
    app = App(tmp_path, str(tmp_path / "vol"))
    child = app.spawn("""
        def handler(signum, frame):
            os._exit(0)
        signal.signal(signal.SIGTERM, handler)
        fractfs.init()
        put("state.txt", "written after init, never checkpointed before SIGTERM")
        out(event="ready")
        time.sleep(60)
    """)
    child.expect("event", "ready")
    child.signal(signal.SIGTERM)
    assert child.finish() == 0, child.stderr()
    assert read_back(app, "state.txt") == {"state.txt": "written after init, never checkpointed before SIGTERM"}


# -- 6. restore --overwrite compares content, not sizes -----------------------------------------------------

def test_restore_overwrite_replaces_a_same_size_local_edit(tmp_path: Path) -> None:
    """``fractfs restore --overwrite`` replaces every file whose content differs from the snapshot, including a
    local edit of the same size (``value=9`` over ``value=1``) that even kept its mtime.

    Broken by: the restorer deciding "identical" from the size alone."""
    app = App(tmp_path, str(tmp_path / "vol"))
    app.run("""
        fractfs.init(start_daemon=False)
        put("settings.cfg", "value=1")
        put("other.cfg", "unchanged")
        fractfs.sync_now()
        fractfs.shutdown(final_sync=False)
    """)
    cfg = app.root / "settings.cfg"
    st = cfg.stat()
    cfg.write_text("value=9")
    os.utime(cfg, ns=(st.st_atime_ns, st.st_mtime_ns))
    env = app.env()
    env["PYTHONPATH"] = str(SRC)
    proc = subprocess.run([sys.executable, "-m", "fractfs", "restore", "--overwrite", "--json"], env=env,
                          cwd=app.root, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["restored"] == ["root:settings.cfg"], doc
    assert "root:other.cfg" in doc["skipped_existing"], doc
    assert cfg.read_text() == "value=1"


# -- 7. a manifest's name carries the digest of its bytes ---------------------------------------------------

def test_manifest_whose_bytes_do_not_match_its_name_is_refused(tmp_path: Path) -> None:
    """A manifest rewritten as a perfectly valid gzip (so gzip's own CRC is happy) but with other content than
    its name's digest promises is damaged: restore falls back to the previous snapshot and says so.

    Broken by: not comparing the manifest's sha256 with the digest in its name."""
    store = make_store(tmp_path)
    app = {"root": tmp_path / "app"}
    sd = tmp_path / "state"
    write(app["root"], "v", "one")
    write(app["root"], "w", "kept")
    first = snapshot.checkpoint(store, app, everything, state_dir=sd)
    write(app["root"], "v", "two")
    second = snapshot.checkpoint(store, app, everything, state_dir=sd)
    assert first.snapshot_id and second.snapshot_id
    name = parse_snapshot_id(second.snapshot_id)
    assert name is not None
    key = name.key
    doc = json.loads(gzip.decompress(store.get(key)))
    assert doc["version"] == 2
    # "w" silently dropped, every column kept consistent: a valid manifest, only not the one its name names
    ents, chunks = doc["entries"], doc["chunks"]
    i = ents["name"].index("w")
    start, n = sum(ents["nchunks"][:i]), ents["nchunks"][i]
    for col in ("dir", "name", "mode", "size", "mtime_ns", "nchunks"):
        del ents[col][i]
    ents["kind"] = ents["kind"][:i] + ents["kind"][i + 1:]
    for col in ("pack", "offset", "length"):
        del chunks[col][start:start + n]
    chunks["sha256"] = chunks["sha256"][:64 * start] + chunks["sha256"][64 * (start + n):]
    doc["files"] -= 1
    doc["bytes"] -= len("kept")
    store.put(key, gzip.compress(json.dumps(doc).encode(), mtime=0))

    infos = {i.id: i for i in snapshot.list_snapshots(store)}
    assert infos[second.snapshot_id].valid is False and infos[first.snapshot_id].valid is True
    dst = {"root": tmp_path / "fresh"}
    out = snapshot.restore(store, dst)
    assert out.snapshot_id == first.snapshot_id and out.fell_back_from == [second.snapshot_id]
    assert (dst["root"] / "v").read_text() == "one" and (dst["root"] / "w").read_text() == "kept"
    assert not snapshot.verify(store, second.snapshot_id).ok


# -- 8. the racy-timestamp guard ----------------------------------------------------------------------------

RACY_FILES = 8


def test_rewrite_within_one_clock_tick_of_the_read_is_not_lost(coarse_clock_dir: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """On a filesystem with coarse timestamps (ramfs: one 4 ms kernel tick) a same-size rewrite within the tick
    in which the checkpoint read the file leaves size, mtime and ctime unchanged, so the stat cache would
    believe the stored (older) content forever. A file changed too recently must not be read yet.

    Each file ``f<i>`` is written (``value=1``) right before it is read and rewritten (``value=9``) right after,
    by the engine's after-read test hook; reads go one at a time (a deadline is set) in mtime order.

    Broken by: ``capture.RACY_NS = 0``."""
    store = make_store(tmp_path)
    root = coarse_clock_dir / "app"
    names = [f"f{i}" for i in range(RACY_FILES)]
    old = time.time_ns() - 3600 * 10**9
    write(root, "trigger", "t", mtime_ns=old + RACY_FILES + 1)  # the newest: read first
    for i, n in enumerate(names):
        write(root, n, "value=0", mtime_ns=old + RACY_FILES - i)  # f0 next, then f1, ...
    sd = tmp_path / "state"
    snapshot.checkpoint(store, {"root": root}, everything, state_dir=sd)
    write(root, "trigger", "T", mtime_ns=old + RACY_FILES + 1)
    for i, n in enumerate(names):
        write(root, n, "value=0", mtime_ns=old + RACY_FILES - i)  # walked as changed (new ctime)
    done: set[str] = set()

    def after_read(path: str) -> None:
        name = os.path.basename(path)
        nxt = "f0" if name == "trigger" else (f"f{int(name[1:]) + 1}" if name.startswith("f") else None)
        if name in names and name not in done:
            done.add(name)
            (root / name).write_text("value=9")  # right after the read: same size, same tick
        if nxt in names and (root / nxt).read_text() == "value=0":
            (root / nxt).write_text("value=1")  # right before the next file is read

    monkeypatch.setattr(capture_mod, "_after_read_hook", after_read)
    snapshot.checkpoint(store, {"root": root}, everything, state_dir=sd, deadline=time.monotonic() + 120)
    monkeypatch.setattr(capture_mod, "_after_read_hook", None)
    assert done == set(names)  # every file was read and rewritten once
    time.sleep(0.05)  # past the tick, so the next checkpoint's reads are settled
    snapshot.checkpoint(store, {"root": root}, everything, state_dir=sd)
    dst = {"root": tmp_path / "fresh"}
    snapshot.restore(store, dst)
    got = {n: (dst["root"] / n).read_text() for n in names}
    assert got == {n: "value=9" for n in names}, got
