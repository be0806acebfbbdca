"""daemon.py on its own: when SyncDaemon calls tick() (interval, poke, debounced changes), and how it backs off
after failures without losing the changes it was meant to save."""
from __future__ import annotations

import threading
import time
from typing import Any, Optional

from fractfs.daemon import SyncDaemon
from fractfs.errors import StoreError


class Ticks:
    def __init__(self, fail: int = 0, sooner: Optional[float] = None) -> None:
        self.times: list[float] = []
        self.fail = fail
        self.sooner = sooner
        self.ev = threading.Event()

    def __call__(self) -> Any:
        self.times.append(time.monotonic())
        self.ev.set()
        if self.fail:
            self.fail -= 1
            raise StoreError("store down (test)")
        return self.sooner

    def wait_for(self, n: int, seconds: float = 10.0) -> bool:
        end = time.monotonic() + seconds
        while len(self.times) < n and time.monotonic() < end:
            time.sleep(0.01)
        return len(self.times) >= n


def test_interval_ticks_and_stop() -> None:
    t = Ticks()
    d = SyncDaemon(t, 0.1)
    d.start()
    try:
        assert d.running and t.wait_for(3, 5)
    finally:
        d.stop(timeout=2)
    assert not d.running
    n = len(t.times)
    time.sleep(0.3)
    assert len(t.times) == n  # nothing after stop
    gaps = [b - a for a, b in zip(t.times, t.times[1:])]
    assert all(g >= 0.09 for g in gaps), gaps
    assert d.runs == n and d.failures == 0


def test_poke_runs_at_once_instead_of_waiting_for_the_interval() -> None:
    t = Ticks()
    d = SyncDaemon(t, 3600)
    d.start()
    try:
        time.sleep(0.1)
        assert t.times == []
        d.poke()
        assert t.wait_for(1, 5)
    finally:
        d.stop(timeout=2)


def test_changes_are_checkpointed_after_the_writes_go_quiet() -> None:
    t = Ticks()
    d = SyncDaemon(t, 3600, debounce=0.2, max_delay=5.0, cooldown_factor=0)
    d.start()
    try:
        first = time.monotonic()
        for _ in range(5):
            last = time.monotonic()  # read before the daemon notes the change: its quiet period starts later
            d.notify_change()
            time.sleep(0.05)
        assert d.pending
        assert t.wait_for(1, 5)
        assert t.times[0] >= last + 0.2  # waited for the whole quiet period after the last write
        assert t.times[0] - first < 2
        time.sleep(0.1)
        assert not d.pending and len(t.times) == 1
    finally:
        d.stop(timeout=2)


def test_a_writer_that_never_pauses_still_gets_a_checkpoint_by_max_delay() -> None:
    t = Ticks()
    d = SyncDaemon(t, 3600, debounce=0.5, max_delay=0.4, cooldown_factor=0)
    d.start()
    stop = time.monotonic() + 1.5
    try:
        first = time.monotonic()
        while time.monotonic() < stop and not t.times:
            d.notify_change()
            time.sleep(0.05)
        assert t.times, "max_delay did not force a checkpoint"
        assert t.times[0] - first < 1.2
    finally:
        d.stop(timeout=2)


def test_failures_back_off_and_keep_the_changes_pending() -> None:
    t = Ticks(fail=2)
    d = SyncDaemon(t, 3600, max_backoff=0.2, debounce=0.05, cooldown_factor=0)
    assert d.backoff() == 0.0
    d.start()
    try:
        d.notify_change()
        assert t.wait_for(3, 10), "a failed checkpoint was not retried"
        gaps = [b - a for a, b in zip(t.times, t.times[1:])]
        assert all(g >= 0.15 for g in gaps), gaps  # retried after the (capped) backoff, not at once
        time.sleep(0.05)
        assert d.failures == 0 and not d.pending  # the third run succeeded and covered the changes
        assert d.describe()["consecutive_failures"] == 0
    finally:
        d.stop(timeout=2)


def test_tick_may_ask_to_run_again_sooner() -> None:
    t = Ticks(sooner=0.1)
    d = SyncDaemon(t, 3600)
    d.poke()
    d.start()
    try:
        assert t.wait_for(3, 5), "the early retry a tick asked for did not happen"
    finally:
        d.stop(timeout=2)
