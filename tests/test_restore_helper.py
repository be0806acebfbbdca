"""The restore's helper process (snapshot/helper.py): a second interpreter that writes batches of small files.

Every test forces it on (its threshold is thousands of files) and checks that it really wrote something, so a
helper that silently stopped being used would fail here rather than pass by writing everything in-process.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import test_snapshot_restore
from test_snapshot_support import everything, make_store, temp_leftovers, tree, write

from fractfs.errors import RestoreError
from fractfs.snapshot import checkpoint, helper, restore, restorer, statcache


small_tmpfs = test_snapshot_restore.small_tmpfs  # the fixture, shared


class Spy:
    """Counts what went through the helper and keeps the Helper objects to check they were reaped."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.helpers: list[helper.Helper] = []
        self.sent = 0
        self.paths: list[str] = []
        self.answered = 0
        start, send, answers = helper.Helper.start, helper.Helper.send, helper.Helper.answers
        spy = self

        def spy_start(cls: type[helper.Helper]) -> helper.Helper | None:
            h = start.__func__(cls)  # type: ignore[attr-defined]
            if h is not None:
                spy.helpers.append(h)
            return h

        def spy_send(self: helper.Helper, items: list[Any], wire: list[Any], base: int, blob: Any) -> bool:
            spy.sent += len(items)
            spy.paths.extend(e.path for e, _dest, _data in items)
            return send(self, items, wire, base, blob)

        def spy_answers(self: helper.Helper, *, block: bool) -> list[Any]:
            got = answers(self, block=block)
            spy.answered += sum(len(items) for items, _ in got)
            return got

        monkeypatch.setattr(helper.Helper, "start", classmethod(spy_start))
        monkeypatch.setattr(helper.Helper, "send", spy_send)
        monkeypatch.setattr(helper.Helper, "answers", spy_answers)
        monkeypatch.setenv("fractfs_RESTORE_HELPER_MIN_FILES", "1")


def _reaped(spy: Spy) -> list[int | None]:
    """The exit codes of the helpers started, once their reaper threads (if any) are done."""
    for h in spy.helpers:
        if h.reaper is not None:
            h.reaper.join(10)
    return [h.proc.returncode for h in spy.helpers]


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Spy:
    return Spy(monkeypatch)


def _areas(tmp_path: Path, name: str) -> dict[str, Path]:
    return {"root": tmp_path / name}


def _app(tmp_path: Path, files: int = 600) -> dict[str, Path]:
    src = _areas(tmp_path, "app")
    modes = [0o644, 0o600, 0o755, 0o400, 0o640]
    for i in range(files):
        data = b"" if i % 50 == 7 else os.urandom(100 + (i * 37) % 5000)
        write(src["root"], f"d{i % 7}/e{i % 3}/f{i}", data, mode=modes[i % len(modes)],
              mtime_ns=1_600_000_000_000_000_000 + i * 1_000_003)
    return src


def test_the_helper_writes_files_as_the_restore_does(tmp_path: Path, spy: Spy) -> None:
    src = _app(tmp_path)
    store = make_store(tmp_path)
    checkpoint(store, src, everything, state_dir=tmp_path / "state")
    dst = _areas(tmp_path, "fresh")
    out = restore(store, dst, state_dir=tmp_path / "s2")
    assert len(out.restored) == 600 and not out.errors
    assert spy.sent > 100 and spy.answered == spy.sent  # the helper wrote its share, and answered for all
    assert tree(dst["root"], mtimes=True) == tree(src["root"], mtimes=True)  # bytes, modes and mtimes
    assert temp_leftovers(dst["root"]) == []
    assert spy.helpers and all(h.reaper is not None for h in spy.helpers)  # reaped by a thread, not waited for
    assert _reaped(spy) == [0]
    # the stat facts it sent back are the files' own: the first checkpoint is a walk that finds nothing new
    hdr, _ = statcache.read_header(tmp_path / "s2")
    assert hdr is not None and hdr.expect
    res = checkpoint(store, dst, everything, state_dir=tmp_path / "s2")
    assert res.snapshot_id is None and res.files == 600


def test_files_of_directories_that_exist_are_staged_not_sent(tmp_path: Path, spy: Spy) -> None:
    src = _app(tmp_path)
    store = make_store(tmp_path)
    checkpoint(store, src, everything, state_dir=tmp_path / "state")
    dst = _areas(tmp_path, "fresh")
    write(dst["root"], "d0/e1/already.txt", "the app's own file")  # d0/e1 exists: its files go through temp files
    out = restore(store, dst, state_dir=tmp_path / "s2")
    assert len(out.restored) == 600 and not out.errors and spy.answered == spy.sent > 0
    assert out.bytes == sum(p.stat().st_size for p in src["root"].rglob("*") if p.is_file())
    assert spy.paths and not [p for p in spy.paths if p.startswith("d0/e1/")]
    got = tree(dst["root"], mtimes=True)
    got.pop("d0/e1/already.txt")
    assert got == tree(src["root"], mtimes=True)
    assert temp_leftovers(dst["root"]) == []
    res = checkpoint(store, dst, everything, state_dir=tmp_path / "s2")
    assert res.stored == ["root:d0/e1/already.txt"]


def test_a_damaged_file_found_by_the_helper_fails_alone(tmp_path: Path, spy: Spy,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    src = _areas(tmp_path, "app")
    for i in range(40):
        write(src["root"], f"d/f{i:02}", f"file number {i} " * 40)
    store = make_store(tmp_path)
    checkpoint(store, src, everything, state_dir=tmp_path / "state")
    ((pkey, _),) = list(store.list("packs/"))
    pack_path = store.root / pkey
    data = bytearray(pack_path.read_bytes())
    flen = len("file number 10 " * 40)
    data[data.index(b"file number 12 ") + flen // 2] ^= 0x01
    pack_path.write_bytes(bytes(data))

    dst = _areas(tmp_path, "fresh")
    with caplog.at_level(logging.ERROR, logger="fractfs"):
        out = restore(store, dst, state_dir=tmp_path / "s2")
    assert spy.answered == 40
    assert len(out.errors) == 1 and out.errors[0].startswith("root:d/f12:") and "sha256" in out.errors[0]
    assert len(out.restored) == 39 and not (dst["root"] / "d" / "f12").exists()
    assert all((dst["root"] / "d" / f"f{i:02}").read_bytes() == (src["root"] / "d" / f"f{i:02}").read_bytes()
               for i in range(40) if i != 12)
    assert temp_leftovers(dst["root"]) == []


def test_a_helper_that_dies_leaves_its_batches_to_this_process(tmp_path: Path, spy: Spy,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    src = _app(tmp_path, files=900)
    store = make_store(tmp_path)
    checkpoint(store, src, everything, state_dir=tmp_path / "state")
    send = helper.Helper.send  # the spy's

    def send_then_die(self: helper.Helper, items: list[Any], wire: list[Any], base: int, blob: Any) -> bool:
        ok = send(self, items, wire, base, blob)
        if len(self.pending) == 2 and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            # as if it had died halfway through a file: a torn file under the final name in the private tree
            dir_path, name = wire[-1][0], wire[-1][1]
            Path(dir_path, name).write_bytes(b"torn")
        return ok

    monkeypatch.setattr(helper.Helper, "send", send_then_die)
    dst = _areas(tmp_path, "fresh")
    with caplog.at_level(logging.WARNING, logger="fractfs"):
        out = restore(store, dst, state_dir=tmp_path / "s2")
    assert len(out.restored) == 900 and not out.errors
    assert tree(dst["root"], mtimes=True) == tree(src["root"], mtimes=True)
    assert any("helper process stopped" in r.message for r in caplog.records)
    assert spy.helpers and spy.helpers[0].dead
    res = checkpoint(store, dst, everything, state_dir=tmp_path / "s2")
    assert res.snapshot_id is None  # nothing differs from the snapshot


def test_disk_full_in_the_helper_fails_the_restore_and_leaves_nothing(tmp_path: Path, small_tmpfs: Path,
                                                                      spy: Spy) -> None:
    src = _areas(tmp_path, "app")
    for i in range(400):  # 1.6 MB of small files into a 1 MB disk
        write(src["root"], f"d{i % 4}/f{i}", os.urandom(4000))
    store = make_store(tmp_path)
    checkpoint(store, src, everything, state_dir=tmp_path / "state")
    with pytest.raises(RestoreError) as ei:
        restore(store, {"root": small_tmpfs / "app"})
    assert "disk full" in str(ei.value) and str(small_tmpfs) in str(ei.value)
    assert spy.sent > 0
    assert [p for p in small_tmpfs.rglob("*") if not p.is_dir()] == []  # nothing placed
    assert temp_leftovers(small_tmpfs) == []  # and every temp tree removed
    assert None not in _reaped(spy)  # it answered (disk full) and ended, or was killed


def test_no_helper_without_a_plain_interpreter_or_with_one_transfer(tmp_path: Path, spy: Spy,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    src = _app(tmp_path, files=200)
    store = make_store(tmp_path)
    checkpoint(store, src, everything, state_dir=tmp_path / "state")
    out = restore(store, _areas(tmp_path, "one"), transfers=1)
    assert len(out.restored) == 200 and spy.sent == 0 and not spy.helpers
    # an embedded interpreter (uWSGI's sys.executable is the server binary) cannot run the helper script
    monkeypatch.setattr(sys, "executable", "/usr/bin/uwsgi")
    out = restore(store, _areas(tmp_path, "embedded"))
    assert len(out.restored) == 200 and spy.sent == 0
    assert tree(tmp_path / "embedded") == tree(tmp_path / "one") == tree(src["root"])


def test_below_the_threshold_no_process_is_started(tmp_path: Path, spy: Spy,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    src = _app(tmp_path, files=100)
    store = make_store(tmp_path)
    checkpoint(store, src, everything, state_dir=tmp_path / "state")
    monkeypatch.setenv("fractfs_RESTORE_HELPER_MIN_FILES", "101")
    out = restore(store, _areas(tmp_path, "few"))
    assert len(out.restored) == 100 and not spy.helpers
    monkeypatch.delenv("fractfs_RESTORE_HELPER_MIN_FILES")
    assert helper.min_files() == helper.MIN_FILES
    monkeypatch.setenv("fractfs_RESTORE_HELPER_MIN_FILES", "lots")
    assert helper.min_files() == helper.MIN_FILES  # not a number: the default, never a failed restore


def _restore_without_second_reads(store: Any, dst: dict[str, Path], transfers: int,
                                  caplog: pytest.LogCaptureFixture) -> Any:
    """restore(), checking that no file had to be read twice: a read buffer reused too early shows as bytes
    that failed verification and were read again (the restore itself would still succeed)."""
    with caplog.at_level(logging.WARNING, logger="fractfs"):
        out = restore(store, dst, transfers=transfers, state_dir=dst["root"].parent / "s2")
    assert not [m for m in caplog.messages if "second read" in m]
    return out


def test_read_buffers_are_reused_and_never_mix_files(tmp_path: Path, spy: Spy, monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A mounted store is read into a few buffers the restore reuses (restorer._Inbox): with pieces of 8 KiB
    and three fetching threads, 600 files go through five buffers again and again, while the helper gets
    batches cut from them. Every file must still have its own bytes."""
    src = _app(tmp_path)
    store = make_store(tmp_path)
    checkpoint(store, src, everything, state_dir=tmp_path / "state")
    monkeypatch.setattr(restorer, "_READ_PIECE", 8192)
    taken: list[int] = []
    take = restorer._Inbox.take

    def spy_take(self: restorer._Inbox) -> memoryview | None:
        got = take(self)
        if got is not None:
            taken.append(id(got.obj))
        return got

    monkeypatch.setattr(restorer._Inbox, "take", spy_take)
    dst = _areas(tmp_path, "fresh")
    out = _restore_without_second_reads(store, dst, 3, caplog)
    assert len(out.restored) == 600 and not out.errors and spy.sent > 0
    assert len(taken) > 100 and len(set(taken)) <= 5
    assert tree(dst["root"], mtimes=True) == tree(src["root"], mtimes=True)
    res = checkpoint(store, dst, everything, state_dir=tmp_path / "s2")
    assert res.snapshot_id is None  # the stat facts recorded match the files


def test_bytes_the_helper_finds_damaged_are_read_again(tmp_path: Path, spy: Spy, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Damaged on the way (here: in the batch sent to the helper), a file's bytes are read once more from the
    store, which has them intact: restored, with the warning of a second read."""
    src = _app(tmp_path, files=300)
    store = make_store(tmp_path)
    checkpoint(store, src, everything, state_dir=tmp_path / "state")
    send = helper.Helper.send  # the spy's
    spoiled: list[str] = []

    def send_spoiled(self: helper.Helper, items: list[Any], wire: list[Any], base: int, blob: Any) -> bool:
        if not spoiled and len(blob):  # not the batch of empty files
            k = next(i for i, w in enumerate(wire) if w[-1])  # the row's size
            offset, size = wire[k][-2:]
            data = bytearray(blob)
            data[offset - base + size // 2] ^= 0x01
            blob = bytes(data)
            spoiled.append(items[k][0].path)
        return send(self, items, wire, base, blob)

    monkeypatch.setattr(helper.Helper, "send", send_spoiled)
    dst = _areas(tmp_path, "fresh")
    with caplog.at_level(logging.WARNING, logger="fractfs"):
        out = restore(store, dst, state_dir=tmp_path / "s2")
    assert spoiled and len(out.restored) == 300 and not out.errors
    assert any("passed on a second read" in m and spoiled[0] in m for m in caplog.messages)
    assert tree(dst["root"], mtimes=True) == tree(src["root"], mtimes=True)


def test_a_batch_the_pipe_cannot_take_at_once_keeps_its_bytes(tmp_path: Path, spy: Spy,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """A batch goes to the pipe straight from a read buffer the restore reuses; what the pipe does not take at
    once must be copied first. Here the pipe keeps its 64 KiB while batches are sized for 1 MiB, so nearly
    every batch is left partly unsent, and four buffers serve 7 MiB of files."""
    src = _areas(tmp_path, "app")
    for i in range(3000):
        write(src["root"], f"d{i % 9}/f{i}", os.urandom(500 + (i * 131) % 4500))
    store = make_store(tmp_path)
    checkpoint(store, src, everything, state_dir=tmp_path / "state")
    monkeypatch.setattr(helper, "_grow_pipe", lambda fd: 1 << 20)
    send = helper.Helper.send  # the spy's
    partial: list[int] = []

    def send_and_look(self: helper.Helper, items: list[Any], wire: list[Any], base: int, blob: Any) -> bool:
        ok = send(self, items, wire, base, blob)
        if self.outbuf:
            partial.append(sum(len(part) for part in self.outbuf))
        return ok

    monkeypatch.setattr(helper.Helper, "send", send_and_look)
    dst = _areas(tmp_path, "fresh")
    out = _restore_without_second_reads(store, dst, 2, caplog)
    assert len(out.restored) == 3000 and not out.errors and spy.sent > 0
    assert partial and max(partial) > 64 << 10  # batches were left partly unsent, blob included
    assert spy.helpers[0].batch_bytes > 256 << 10
    assert tree(dst["root"]) == tree(src["root"])
