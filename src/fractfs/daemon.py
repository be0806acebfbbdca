"""Background checkpoints: one thread that decides *when* to call ``tick()``.

Two triggers, both always serialised on the one thread (so two daemon checkpoints never overlap, and the
runtime's lock keeps ``sync_now()`` out of the way too):

- the **interval** timer, every ``interval`` seconds (in watch mode it stays on as a safety net for changes
  the watcher cannot see);
- **changes** reported through :meth:`SyncDaemon.notify_change` (watch mode): a checkpoint runs once the
  writes have been quiet for ``debounce`` seconds, or ``max_delay`` after the first unsaved change for a writer
  that never pauses, but never sooner than ``cooldown_factor`` times the last checkpoint's duration after it
  ended, so a big, constantly rewritten file cannot keep fractfs busy more than a fraction of the time.

``tick`` may return a number of seconds to run again sooner than the interval. A failing ``tick`` never kills
the thread: it is retried after a backoff (2, 4, 8 … s, capped by
``max_backoff`` and by the interval), and the changes it was meant to save stay pending.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Optional

from .errors import FractfsError

log = logging.getLogger("fractfs")

#: Quiet time after the last write before a change-driven checkpoint starts.
DEBOUNCE = 0.5
#: A writer that never pauses still gets a checkpoint this long after its first unsaved change.
MAX_DELAY = 5.0
#: Change-driven checkpoints keep at least this multiple of the previous checkpoint's duration between them.
COOLDOWN_FACTOR = 3.0


class SyncDaemon:
    def __init__(self, tick: Callable[[], Any], interval: float, *, max_backoff: float = 300.0,
                 debounce: float = DEBOUNCE, max_delay: float = MAX_DELAY,
                 cooldown_factor: float = COOLDOWN_FACTOR):
        self._tick = tick
        self.interval = interval
        self.max_backoff = max_backoff
        self.debounce = debounce
        self.max_delay = max_delay
        self.cooldown_factor = cooldown_factor
        self._cv = threading.Condition()
        self._stopping = False
        self._poked = False
        self._pending_since: Optional[float] = None  # first change not yet covered by a checkpoint
        self._last_change: Optional[float] = None
        self._thread: Optional[threading.Thread] = None
        self.failures = 0               # consecutive failed ticks
        self.busy = False
        self.runs = 0
        self.last_duration = 0.0
        self._last_end = time.monotonic()
        self._next_interval = self._last_end + interval

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def pending(self) -> bool:
        """Changes were reported that no checkpoint has covered yet."""
        with self._cv:
            return self._pending_since is not None

    def start(self) -> None:
        if self.running:
            return
        with self._cv:
            self._stopping = False
            self._last_end = time.monotonic()
            self._next_interval = self._last_end + self.interval
        self._thread = threading.Thread(target=self._run, name="fractfs-sync", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        """Run a checkpoint now instead of waiting for the timer."""
        with self._cv:
            self._poked = True
            self._cv.notify()

    def notify_change(self) -> None:
        """Something in the checkpointed trees changed (called from the watcher thread)."""
        now = time.monotonic()
        with self._cv:
            if self._pending_since is None:
                self._pending_since = now
            self._last_change = now
            self._cv.notify()

    def backoff(self) -> float:
        """Delay before retrying after ``failures`` consecutive failures."""
        if self.failures == 0:
            return 0.0
        return min(self.interval, self.max_backoff, 2.0 ** min(self.failures, 16))

    def _due(self, now: float) -> float:
        """Monotonic time of the next checkpoint (caller holds the condition)."""
        if self._poked:
            return now
        due = self._next_interval
        if self._pending_since is not None and self._last_change is not None:
            by_change = min(self._last_change + self.debounce, self._pending_since + self.max_delay)
            by_change = max(by_change, self._last_end + self.cooldown_factor * self.last_duration)
            if self.failures:
                by_change = max(by_change, self._last_end + self.backoff())
            due = min(due, by_change)
        return due

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stopping:
                    now = time.monotonic()
                    due = self._due(now)
                    if due <= now:
                        break
                    self._cv.wait(due - now)
                if self._stopping:
                    return
                self._poked = False
                covered = self._pending_since  # changes after this point need another checkpoint
                self._pending_since = None
                self.busy = True
            started = time.monotonic()
            ok = False
            sooner: Any = None
            try:
                sooner = self._tick()
                ok = True
            except Exception as exc:  # noqa: BLE001 - the daemon must outlive any one failure
                retry = min(self.interval, self.max_backoff, 2.0 ** min(self.failures + 1, 16))
                if isinstance(exc, FractfsError):  # expected trouble (store down, ...): no traceback
                    log.warning("fractfs: checkpoint failed (%d in a row), retrying in %.0fs: %s",
                                self.failures + 1, retry, exc)
                else:
                    log.exception("fractfs: checkpoint failed (%d in a row); retrying in %.0fs",
                                  self.failures + 1, retry)
            ended = time.monotonic()
            with self._cv:
                self.busy = False
                self.runs += 1
                self.last_duration = ended - started
                self._last_end = ended
                if ok:
                    self.failures = 0
                    # tick() may ask for an early retry (a checkpoint it had to hold back)
                    delay = min(self.interval, float(sooner)) if isinstance(sooner, (int, float)) else self.interval
                    self._next_interval = ended + delay
                else:
                    self.failures += 1
                    self._next_interval = ended + self.backoff()
                    if covered is not None:  # keep the unsaved changes pending for the retry
                        self._pending_since = min(covered, self._pending_since or covered)
                        self._last_change = max(self._last_change or ended, covered)
            log.debug("fractfs: checkpoint round took %.3fs", ended - started)

    def stop(self, timeout: Optional[float] = None) -> None:
        """Stop scheduling; wait up to ``timeout`` for a running checkpoint (None: don't wait at all)."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread() and timeout:
            thread.join(timeout)

    def describe(self) -> dict[str, Any]:
        with self._cv:
            return {"running": self.running, "busy": self.busy, "runs": self.runs,
                    "consecutive_failures": self.failures, "pending_changes": self._pending_since is not None,
                    "next_interval_in": max(0.0, self._next_interval - time.monotonic())}
