"""watch.py on its own: a real inotify watcher on a real directory tree (Linux), with the checkpoint's own
selection deciding what counts as a change."""
from __future__ import annotations

import threading
import time
from pathlib import Path

from fractfs import watch


def _wait(ev: threading.Event, seconds: float = 5.0) -> bool:
    return ev.wait(seconds)


def test_inotify_is_available_here() -> None:
    assert watch.available() is None  # the suite runs on Linux; a None here is what the runtime relies on


def test_wanted_changes_are_reported_unwanted_ones_are_not(tmp_path: Path) -> None:
    top = tmp_path / "app"
    (top / "sub").mkdir(parents=True)
    seen = threading.Event()

    def want(_area: str, rel: str, _is_dir: bool) -> bool:
        return not rel.startswith("ignored")

    w = watch.TreeWatcher({"root": top}, want, seen.set)
    w.start()
    try:
        assert w.running and w.watched == 2  # the root and sub/
        (top / "ignored.log").write_text("not ours")
        assert not _wait(seen, 0.5), "a change the selection leaves out must not wake the daemon"
        assert w.events == 0
        (top / "sub" / "a.txt").write_text("ours")
        assert _wait(seen), "a wanted change was not reported"
        assert w.events >= 1 and w.last_event is not None
        seen.clear()
        (top / "new").mkdir()  # a directory made later is watched too
        assert _wait(seen)
        deadline = time.monotonic() + 5
        while w.watched < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        seen.clear()
        (top / "new" / "b.txt").write_text("deep")
        assert _wait(seen), "a change in a directory created after start() was not reported"
        desc = w.describe()
        assert desc["running"] and desc["watched_dirs"] >= 3 and desc["overflows"] == 0
    finally:
        w.stop()
    assert not w.running and w.watched == 0
    seen.clear()
    (top / "sub" / "a.txt").write_text("after stop")
    assert not _wait(seen, 0.3)


def test_a_watcher_set_up_in_the_background_reports_one_change_once_ready(tmp_path: Path) -> None:
    """init() starts the watcher with background=True: the watches are set on its thread, and a change made
    before they were in place would go unseen, so it reports one change when ready (the checkpoint that
    follows walks the trees). After that it reports real changes as usual."""
    top = tmp_path / "root"
    for i in range(30):
        (top / f"d{i}" / "sub").mkdir(parents=True)
    calls: list[float] = []
    w = watch.TreeWatcher({"root": top}, lambda area, rel, is_dir: True, lambda: calls.append(time.monotonic()))
    w.start(background=True)
    try:
        deadline = time.monotonic() + 10
        while not calls and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(calls) == 1 and w.watched == 61 and w.running
        time.sleep(0.3)
        assert len(calls) == 1  # nothing changed since
        (top / "d7" / "sub" / "new.txt").write_text("x")
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(calls) == 2
    finally:
        w.stop()
