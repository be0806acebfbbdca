"""Node-local files are private from creation (issue 16, point 2): another local user must never read the app's
data or its hashes from what fractfs writes on the node, not even for a moment.

The second user is real: ``nobody``, through ``os.setuid`` in a child process (the tests run as root). The
paths are made traversable for it (a 0755 base directory), so only the modes fractfs chose protect the files.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Node

from fractfs.localfile import private_dir, write_replace
from fractfs.snapshot import checkpoint, restore
from fractfs.snapshot import restorer
from fractfs.snapshot import sqlite as fsqlite
from fractfs.stores import PosixStore

NOBODY = 65534
#: The probe needs only os and sys; the test venv may not be executable by another user, the system one is.
PROBE_PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable


@pytest.fixture
def open_base() -> Iterator[Path]:
    """A directory every user may traverse (tmp_path's parents are 0700, which would hide everything)."""
    d = Path(tempfile.mkdtemp(prefix="fractfs-sec-"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def other_user_reads(path: str | Path) -> bool:
    """Can a second local user open ``path`` (a file) for reading, or list it (a directory)?"""
    assert os.geteuid() == 0, "these tests run as root, to act as a second user"
    code = ("import os, sys\np = sys.argv[1]\ntry:\n    os.listdir(p) if os.path.isdir(p) else open(p, 'rb').read(1)\n"
            "except PermissionError:\n    sys.exit(3)\n")
    proc = subprocess.run([PROBE_PYTHON, "-c", code, os.fspath(path)], preexec_fn=lambda: os.setuid(NOBODY),
                          capture_output=True, timeout=60, check=False)
    assert proc.returncode in (0, 3), proc.stderr
    return proc.returncode == 0


def test_write_replace_and_private_dir_modes_from_creation(open_base: Path) -> None:
    old = os.umask(0)  # no umask to hide a wrong mode: what the syscall asked for is what the file gets
    try:
        parent = open_base / "sgid"
        parent.mkdir()
        os.chmod(parent, 0o2777)  # set-gid parent: mkdir inside it would inherit the bit
        private_dir(parent / "a" / "b")
        for d in (parent / "a", parent / "a" / "b"):
            assert stat.S_IMODE(d.stat().st_mode) == 0o700, oct(d.stat().st_mode)
        seen: list[int] = []
        real_fdopen = os.fdopen

        def spy(fd: int, *a: object, **kw: object) -> object:
            seen.append(stat.S_IMODE(os.fstat(fd).st_mode))  # the mode at the moment of creation
            return real_fdopen(fd, *a, **kw)  # type: ignore[call-overload]

        os.fdopen = spy  # type: ignore[assignment]
        try:
            write_replace(parent / "a" / "f", b"secret")
        finally:
            os.fdopen = real_fdopen
        assert seen == [0o600]
        assert stat.S_IMODE((parent / "a" / "f").stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_sqlite_copies_and_restore_temps_are_never_readable_by_another_user(
        open_base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = open_base / "app"
    app.mkdir(mode=0o755)
    os.chmod(app, 0o755)
    db = app / "secret.db"
    con = sqlite3.connect(db)
    con.execute("create table t(x)")
    con.execute("insert into t values ('hunter2')")
    con.commit()
    con.close()
    os.chmod(db, 0o600)
    big = app / "big.bin"
    big.write_bytes(os.urandom(9 << 20))  # over the large-file threshold: chunked, restored chunk by chunk
    os.chmod(big, 0o600)
    state = open_base / "scratch" / ".fractfs-state"
    store = PosixStore(open_base / "volume")

    probes: list[tuple[str, bool]] = []
    real_connect = fsqlite.sqlite3.connect

    def connect(target: str, *a: object, **kw: object) -> sqlite3.Connection:
        if not target.startswith("file:"):  # the destination of the backup: it exists, empty, right now
            probes.append((target, other_user_reads(target)))
        return real_connect(target, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(fsqlite.sqlite3, "connect", connect)
    res = checkpoint(store, {"root": app}, None, state_dir=state)
    assert res.snapshot_id
    assert probes and all(not readable for _p, readable in probes), probes

    target = open_base / "restored"
    real_flush = restorer._flush_filesystems

    def flush(roots: list[str]) -> None:
        # every file is written whole under its temp name, not yet flushed or renamed into place
        for tmp in target.rglob(".fractfs-tmp-*"):
            probes.append((os.fspath(tmp), other_user_reads(tmp)))
        real_flush(roots)

    monkeypatch.setattr(restorer, "_flush_filesystems", flush)
    probes.clear()
    target.mkdir()
    os.chmod(target, 0o755)
    out = restore(store, {"root": target}, state_dir=open_base / "scratch2" / ".fractfs-state")
    assert "root:big.bin" in out.restored and "root:secret.db" in out.restored
    assert probes and all(not readable for _p, readable in probes), probes
    # restored files end with their recorded mode
    assert stat.S_IMODE((target / "big.bin").stat().st_mode) == 0o600
    assert stat.S_IMODE((target / "secret.db").stat().st_mode) == 0o600


def test_the_state_an_app_leaves_on_the_node_is_private(open_base: Path) -> None:
    volume = open_base / "volume"
    volume.mkdir()
    node = Node(open_base / "node", volume, '[local]\npatterns = ["*.db"]\n')
    os.chmod(node.base, 0o755)
    os.chmod(node.root, 0o755)
    node.run("""
        fractfs.init()
        open("pin.txt", "w").write("1234")
        os.chmod("pin.txt", 0o600)
        fractfs.sync_now()
        fractfs.shutdown(final_sync=False)
    """)
    state = node.scratch / ".fractfs-state"
    found = {p.name for p in state.rglob("*")}
    assert {"statcache.v1", "status.json", "bundle.json"} <= found, found
    for p in [state, *state.rglob("*")]:
        mode = stat.S_IMODE(p.lstat().st_mode)
        assert mode & 0o077 == 0, f"{p} is {oct(mode)}"
        if p.is_file() or p == state:
            assert not other_user_reads(p), p
