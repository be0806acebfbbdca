"""SQLite databases under concurrent writes from another process restore whole, transaction by transaction."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from test_snapshot_support import everything, make_store

from fractfs.snapshot import checkpoint, latest_paths, list_snapshots, restore
from fractfs.snapshot import capture as capture_mod

ROWS = 40  # rows per transaction, all with the same txn id

WRITER = textwrap.dedent("""
    import sqlite3, sys, time
    path, mode, rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
    con = sqlite3.connect(path, timeout=30, isolation_level=None)
    con.execute(f"pragma journal_mode={mode}")
    con.execute("create table if not exists t(txn integer, i integer, pad text)")
    print("ready", flush=True)
    txn = 0
    while True:
        con.execute("begin immediate")
        for i in range(rows):
            con.execute("insert into t values (?, ?, ?)", (txn, i, "x" * 200))
        con.execute("commit")
        txn += 1
        print(txn, flush=True)  # transactions committed so far
""")


def _check_db(path: Path) -> int:
    con = sqlite3.connect(path)
    try:
        assert con.execute("pragma integrity_check").fetchone() == ("ok",)
        counts = con.execute("select txn, count(*) from t group by txn order by txn").fetchall()
    finally:
        con.close()
    assert all(n == ROWS for _, n in counts), [c for c in counts if c[1] != ROWS][:5]
    assert [t for t, _ in counts] == list(range(len(counts)))  # no transaction lost in the middle
    return len(counts)


@pytest.mark.slow
@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_live_database_restores_with_whole_transactions(tmp_path: Path, journal: str) -> None:
    """Checkpoints while another process commits transactions as fast as it can: every snapshot holds a
    database that passes integrity_check with whole transactions, in order. Each checkpoint waits until the
    writer has committed more (an event, however loaded the machine), and they go on until three of them
    stored the database, so busy rounds (the backup could not get a consistent copy in time) only cost time."""
    store = make_store(tmp_path)
    app = tmp_path / "app"
    app.mkdir()
    db = app / "data.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db), journal, str(ROWS)], stdout=subprocess.PIPE, text=True
    )
    committed = [0]

    def follow() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip().isdigit():
                committed[0] = int(line)

    reader = threading.Thread(target=follow, daemon=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        reader.start()
        results = []
        while sum("root:data.db" in r.stored for r in results) < 3:
            assert len(results) < 40, results
            seen, deadline = committed[0], time.monotonic() + 60
            while committed[0] == seen:
                assert time.monotonic() < deadline, "the writer committed nothing"
                time.sleep(0.01)
            results.append(checkpoint(store, {"root": app}, everything, state_dir=tmp_path / "state"))
    finally:
        proc.kill()
        proc.wait()
    assert latest_paths(store) == {("root", "data.db")}  # never the -wal/-shm/-journal sidecars
    for r in results:  # each round either stored the database or kept its previous version, reported busy
        assert r.stored == ["root:data.db"] or r.skipped_busy == ["root:data.db"], r
    seen = []
    for info in list_snapshots(store):
        dst = tmp_path / f"r{info.seq}"
        out = restore(store, {"root": dst}, snapshot_id=info.id)
        assert out.errors == []
        assert sorted(p.name for p in dst.iterdir()) == ["data.db"]
        seen.append(_check_db(dst / "data.db"))
    assert seen == sorted(seen) and seen[-1] > seen[0] > 0


def test_a_writer_holding_the_lock_does_not_block_forever(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(tmp_path)
    app = tmp_path / "app"
    app.mkdir()
    db = app / "locked.db"
    con = sqlite3.connect(db)
    con.execute("create table t(x)")
    con.commit()
    con.close()
    (app / "other").write_text("fine")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import sqlite3, time
        con = sqlite3.connect({str(db)!r}, isolation_level=None)
        con.execute("begin exclusive")
        con.execute("insert into t values (1)")
        print("locked", flush=True)
        time.sleep(30)
    """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        monkeypatch.setattr(capture_mod, "SQLITE_TIMEOUT", 0.5)
        t0 = time.monotonic()
        res = checkpoint(store, {"root": app}, everything, state_dir=tmp_path / "state")
        assert time.monotonic() - t0 < 5
    finally:
        holder.kill()
        holder.wait()
    assert res.skipped_busy == ["root:locked.db"]
    assert res.stored == ["root:other"]
    # once the lock is gone the database is taken
    res2 = checkpoint(store, {"root": app}, everything, state_dir=tmp_path / "state")
    assert "root:locked.db" in res2.stored
    dst = tmp_path / "fresh"
    restore(store, {"root": dst})
    r = sqlite3.connect(dst / "locked.db")
    assert r.execute("pragma integrity_check").fetchone() == ("ok",)
    assert r.execute("select count(*) from t").fetchone() == (0,)  # the uncommitted insert is not there
    r.close()


def test_restoring_a_database_removes_a_stale_wal(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    app = tmp_path / "app"
    app.mkdir()
    db = app / "x.db"
    con = sqlite3.connect(db)
    con.execute("create table t(x)")
    con.execute("insert into t values (1)")
    con.commit()
    con.close()
    checkpoint(store, {"root": app}, everything, state_dir=tmp_path / "state")
    dst = tmp_path / "fresh"
    dst.mkdir()
    (dst / "x.db-wal").write_bytes(os.urandom(4096))  # left over from some other database
    restore(store, {"root": dst})
    assert not (dst / "x.db-wal").exists()
    r = sqlite3.connect(dst / "x.db")
    assert r.execute("select x from t").fetchall() == [(1,)]
    r.close()


def test_an_idle_wal_database_does_not_look_changed_after_its_own_backup(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Copying a WAL database through the backup API can touch its -wal's metadata without changing a byte:
    SQLite running as root fchown()s the files it opens to the database's owner, which moves the -wal's
    ctime. If that counted as a change, every checkpoint's own backup would call for the next one, and an idle
    app would be backed up again and again (a 1 GiB database: seconds of CPU each time)."""
    app = tmp_path / "app"
    app.mkdir()
    db = app / "app.db"
    con = sqlite3.connect(db)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA wal_autocheckpoint=0")  # keep the commits in the -wal, as a busy app's would be
    con.execute("CREATE TABLE t (x)")
    con.executemany("INSERT INTO t VALUES (?)", [(os.urandom(100),) for _ in range(200)])
    con.commit()
    time.sleep(0.05)  # past the racy-timestamp guard
    store = make_store(tmp_path)
    state = tmp_path / "state"
    backups: list[str] = []
    real_backup = capture_mod._sqlite.backup

    def counted(src: str, dest: str, timeout: float) -> None:
        backups.append(src)
        real_backup(src, dest, timeout)

    monkeypatch.setattr(capture_mod._sqlite, "backup", counted)
    first = checkpoint(store, {"root": app}, everything, state_dir=state)
    assert "root:app.db" in first.stored and len(backups) == 1
    for _ in range(2):  # the app holds its connection open and writes nothing
        again = checkpoint(store, {"root": app}, everything, state_dir=state)
        assert again.snapshot_id is None and again.stored == [], again
    assert len(backups) == 1, "an unchanged database was copied again"
    con.execute("INSERT INTO t VALUES (1)")
    con.commit()
    time.sleep(0.05)
    changed = checkpoint(store, {"root": app}, everything, state_dir=state)
    assert changed.stored == ["root:app.db"] and len(backups) == 2  # a commit in the -wal only is still seen
    con.close()


def test_a_database_sqlite_could_not_open_once_is_tried_again_next_time(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A database caught while it could not be opened (copied in, half written) is stored as plain bytes that
    once, but not remembered as read: the next checkpoint, with the file's stat unchanged, copies it through
    SQLite's backup API, instead of treating it (and storing its -wal) as plain files until it changes."""
    app = tmp_path / "app"
    app.mkdir()
    con = sqlite3.connect(app / "app.db")
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA wal_autocheckpoint=0")
    con.execute("CREATE TABLE t (x)")
    con.execute("INSERT INTO t VALUES (42)")
    con.commit()
    time.sleep(0.05)
    store = make_store(tmp_path)
    state = tmp_path / "state"
    real_backup = capture_mod._sqlite.backup

    def unreadable(src: str, dest: str, timeout: float) -> None:
        raise capture_mod._sqlite.SqliteUnreadable(f"{src}: file is not a database (test)")

    def newest() -> dict[str, bool]:
        from fractfs.snapshot import catalog
        m = catalog.load(store, catalog.list_names(store)[-1])
        return {e.path: e.sqlite for e in m.entries}

    monkeypatch.setattr(capture_mod._sqlite, "backup", unreadable)
    checkpoint(store, {"root": app}, everything, state_dir=state)
    assert newest()["app.db"] is False  # its bytes, this once
    monkeypatch.setattr(capture_mod._sqlite, "backup", real_backup)
    checkpoint(store, {"root": app}, everything, state_dir=state)
    got = newest()
    assert got.get("app.db") is True and "app.db-wal" not in got and "app.db-shm" not in got, got
    dst = tmp_path / "back"
    restore(store, {"root": dst})
    assert sqlite3.connect(dst / "app.db").execute("SELECT x FROM t").fetchall() == [(42,)]
    con.close()
