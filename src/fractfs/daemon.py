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

``hold`` (the runtime's :meth:`fractfs.budget.Budget.hold`) can postpone any of these: no checkpoint starts
before the time it returns, so an expensive checkpoint stretches the interval and the debounce alike. The
daemon notes how far it got from a change to the checkpoint that committed it (:meth:`SyncDaemon.loss_window`),
so status shows the data-loss window actually achieved, stretched or not.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any, Callable, Optional

from .errors import FractfsError

log = logging.getLogger("fractfs")

#: Quiet time after the last write before a change-driven checkpoint starts.
DEBOUNCE = 0.5
#: A writer that never pauses still gets a checkpoint this long after its first unsaved change.
MAX_DELAY = 5.0
#: Change-driven checkpoints keep at least this multiple of the previous checkpoint's duration between them.
COOLDOWN_FACTOR = 3.0
#: loss_window() describes the checkpoints that committed within this many seconds (or 3 intervals).
LOSS_HORIZON = 60.0

#: ``hold()``: (monotonic time before which no checkpoint may start, what sets it, e.g. "cpu budget")
Hold = Callable[[], tuple[float, Optional[str]]]


class SyncDaemon:
    def __init__(self, tick: Callable[[], Any], interval: float, *, max_backoff: float = 300.0,
                 debounce: float = DEBOUNCE, max_delay: float = MAX_DELAY,
                 cooldown_factor: float = COOLDOWN_FACTOR, hold: Optional[Hold] = None,
                 after: Optional[Callable[[], None]] = None):
        self._tick = tick
        self._hold = hold
        self._after = after
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
        #: changes are reported (watch mode): the window is measured from each change, not from the timer
        self.watched = False
        self.stretched = 0              # checkpoints that started later than due because of ``hold``
        self._held_by: Optional[str] = None  # what holds the next checkpoint back right now
        self._covering: Optional[float] = None  # first change the running checkpoint covers
        self._carry: Optional[float] = None     # first change of a run that committed nothing (held back)
        self._prev_ok_start = self._last_end
        #: (end, seconds from the oldest change it saved to its end, what stretched it) per committed run
        self._exposures: deque[tuple[float, float, Optional[str]]] = deque(maxlen=64)

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
            self._prev_ok_start = self._last_end
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

    def _held_due(self, now: float) -> tuple[float, Optional[str]]:
        """_due() postponed by ``hold``, and what postponed it (None: nothing did)."""
        due = self._due(now)
        if self._hold is not None:
            until, by = self._hold()
            if until > due:
                return until, by
        return due, None

    def _run(self) -> None:
        while True:
            with self._cv:
                held_by: Optional[str] = None
                while not self._stopping:
                    now = time.monotonic()
                    due, held_by = self._held_due(now)
                    self._held_by = held_by
                    if due <= now:
                        break
                    self._cv.wait(due - now)
                if self._stopping:
                    return
                self._poked = False
                self._held_by = None
                if held_by is not None:
                    self.stretched += 1
                covered = self._pending_since  # changes after this point need another checkpoint
                self._pending_since = None
                self._covering = covered
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
                self._covering = None
                self.runs += 1
                self.last_duration = ended - started
                self._last_end = ended
                if ok:
                    self.failures = 0
                    # tick() may ask for an early retry (a checkpoint it had to hold back)
                    delay = min(self.interval, float(sooner)) if isinstance(sooner, (int, float)) else self.interval
                    self._next_interval = ended + delay
                    self._note_exposure(started, ended, covered, committed=sooner is None, held_by=held_by)
                else:
                    self.failures += 1
                    self._next_interval = ended + self.backoff()
                    if covered is not None:  # keep the unsaved changes pending for the retry
                        self._pending_since = min(covered, self._pending_since or covered)
                        self._last_change = max(self._last_change or ended, covered)
            log.debug("fractfs: checkpoint round took %.3fs", ended - started)
            if self._after is not None:
                try:
                    self._after()
                except Exception:  # noqa: BLE001 - reporting must not stop the checkpoints
                    log.exception("fractfs: after a checkpoint round")

    def _note_exposure(self, started: float, ended: float, covered: Optional[float], *, committed: bool,
                       held_by: Optional[str]) -> None:
        """After a successful run (caller holds the condition): how long the changes it saved were at risk."""
        firsts = [t for t in (covered, self._carry) if t is not None]
        if not committed:  # held back or paused: what it covered is still not in a committed snapshot
            self._carry = min(firsts) if firsts else None
            return
        self._carry = None
        if firsts:
            since: Optional[float] = min(firsts)
        else:
            # without change reports, a change just after the previous checkpoint read its file is only saved
            # now; in watch mode a timer run with nothing reported saved nothing new
            since = None if self.watched else self._prev_ok_start
        self._prev_ok_start = started
        if since is not None:
            self._exposures.append((ended, ended - since, held_by))

    def loss_window(self) -> dict[str, Any]:
        """status()["data_loss_window"]: the recent achieved window (from a change to the commit holding it)."""
        now = time.monotonic()
        with self._cv:
            horizon = now - max(LOSS_HORIZON, 3 * self.interval)
            recent = [(sec, by) for end, sec, by in self._exposures if end >= horizon]
            firsts = [t for t in (self._pending_since, self._covering, self._carry) if t is not None]
            pending_for = now - min(firsts) if firsts and self.watched else None
            held_by = self._held_by
        import statistics  # here: only status reports need it (6 ms of a cold start's imports)

        worst = max((sec for sec, _ in recent), default=None)
        if pending_for is not None and (worst is None or pending_for > worst):
            worst = pending_for
        stretched_by = held_by or next((by for _, by in reversed(recent) if by), None)
        return {
            "seconds": round(worst, 3) if worst is not None else None,
            "typical": round(statistics.median(sec for sec, _ in recent), 3) if recent else None,
            "pending_for": round(pending_for, 3) if pending_for is not None else None,
            "target": self.debounce if self.watched else self.interval,
            "basis": "changes" if self.watched else "interval",
            "stretched_by": stretched_by,
            "stretched_checkpoints": self.stretched,
            "checkpoints": len(recent),
        }

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
