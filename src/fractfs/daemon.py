"""Background checkpoints: an interval timer, the final checkpoint at SIGTERM/SIGINT/exit, error backoff."""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional

log = logging.getLogger("fractfs")


class SyncDaemon:
    """Calls ``tick()`` every ``interval`` seconds in a daemon thread.

    ``tick`` itself serialises checkpoints (the runtime holds a lock), so a manual ``sync_now()`` and the timer
    never overlap. Errors never kill the thread: they are recorded by ``tick`` and retried with backoff.
    """

    def __init__(self, tick: Callable[[], None], interval: float, *, max_backoff: float = 300.0):
        self._tick = tick
        self.interval = interval
        self.max_backoff = max_backoff
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.failures = 0

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="fractfs-sync", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        """Run the next checkpoint now instead of at the end of the interval."""
        self._wake.set()

    def _delay(self) -> float:
        if self.failures == 0:
            return self.interval
        # retry sooner than the interval after a failure, backing off up to max_backoff
        return min(self.interval, min(self.max_backoff, 2.0 ** min(self.failures, 16)))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._delay())
            self._wake.clear()
            if self._stop.is_set():
                break
            started = time.monotonic()
            try:
                self._tick()
                self.failures = 0
            except Exception:  # noqa: BLE001 - the daemon must outlive any one failure
                self.failures += 1
                log.exception("checkpoint failed (attempt %d); retrying", self.failures)
            log.debug("checkpoint round took %.3fs", time.monotonic() - started)

    def stop(self, timeout: Optional[float] = None) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._thread = None
