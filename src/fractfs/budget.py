"""Bounded background cost: how long the daemon must wait after an expensive checkpoint (issue 12).

The daemon asks :meth:`Budget.hold` before every background checkpoint and does not start one before the time
it returns. Every checkpoint that runs through :class:`~fractfs.checkpointer.Checkpointer` (background ones and
``sync_now()``) is measured and :meth:`Budget.record` -ed: its CPU time and the bytes it sent to the store.

The arithmetic is pacing without saved-up credit: a checkpoint that started at ``s`` and cost ``c`` CPU seconds
lets the next background one start at ``s + c / cpu_budget`` at the earliest (and likewise ``s + bytes /
upload_budget``). After a checkpoint costing 1 s of CPU under a 0.2 budget the next one starts 5 s after it
started at the earliest; after one costing 10 ms, 50 ms after, sooner than any interval or debounce would, so
cheap checkpoints are never delayed. Over any minute fractfs then uses at most ``cpu_budget`` of a core plus
one checkpoint's own cost (the one running at the window's edge), i.e. ``0.2 + c/60``. Idle time earns no
credit on purpose: a quiet minute followed by a write storm must not turn into seconds of a full core taken
from the app.

Explicit checkpoints (``sync_now()``, the final one at SIGTERM) are never held: the user asked for them. Their
cost still counts, so the background checkpoint after a ``sync_now()`` waits for it as for its own; that debt
is capped at one window (a minute), so an app calling ``sync_now()`` in a loop cannot postpone the
background checkpoints indefinitely.

What the CPU figure counts (:class:`CpuMeter`): on Linux, the CPU time of the whole process during the
checkpoint minus that of every thread that is not fractfs' own (``/proc/self/task/<tid>/schedstat``, in
nanoseconds). That includes the short-lived reader and upload pools a checkpoint starts and joins (their time
stays in the process total after they exit, where a per-thread reading of them no longer could be made), the
lease heartbeat and the watcher while the checkpoint runs, and excludes the app's threads, even on a busy
app. An app thread that ends during the checkpoint is counted as fractfs' (its time can no longer be told
apart): a rare over-count, never an under-count. ``time.process_time()`` alone would charge the app's own CPU
to fractfs and throttle checkpoints of a busy app for nothing; ``thread_time()`` of the checkpoint thread
alone would miss the readers and uploaders, where most of the work is. Without ``/proc`` (macOS) the whole
process is counted (``cpu_measured = "process"``): conservative, checkpoints may be stretched more than needed.
"""
from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

#: Seconds over which status reports the CPU fraction and upload rate used, and the cap of carried debt.
WINDOW = 60.0
#: Names of fractfs' threads start with this (the daemon, the lease, the watcher, every pool a checkpoint runs).
THREAD_PREFIX = "fractfs-"
#: What the CPU figures count: fractfs' threads only, or (without /proc) the whole process.
THREADS, PROCESS = "threads", "process"
CPU_LIMIT, UPLOAD_LIMIT = "cpu budget", "upload budget"

_TASKS = Path("/proc/self/task")


@dataclass
class Reading:
    """CPU clocks at one moment: the process total and every thread that is not fractfs' (seconds)."""

    process: float
    others: dict[int, float] = field(default_factory=dict)


def _thread_cpu(tid: int) -> Optional[float]:
    """CPU seconds thread ``tid`` of this process has used; None once it is gone."""
    try:
        with open(_TASKS / str(tid) / "schedstat", "rb") as f:
            return int(f.read().split()[0]) / 1e9
    except FileNotFoundError:
        pass
    except (OSError, ValueError, IndexError):
        return None
    try:  # kernels without schedstat: utime + stime in clock ticks (10 ms)
        with open(_TASKS / str(tid) / "stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class CpuMeter:
    """The CPU time fractfs' threads (and the calling thread) spend between :meth:`read` and :meth:`spent`."""

    def __init__(self) -> None:
        self.mode = THREADS if _thread_cpu(threading.get_native_id()) is not None else PROCESS

    def read(self) -> Reading:
        if self.mode == PROCESS:
            return Reading(time.process_time())
        ours = {t.native_id for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX)}
        ours.add(threading.get_native_id())  # sync_now(): the app's thread runs the checkpoint itself
        process = time.process_time()
        others: dict[int, float] = {}
        try:
            tids = os.listdir(_TASKS)
        except OSError:
            tids = []
        for name in tids:
            tid = int(name)
            if tid not in ours:
                cpu = _thread_cpu(tid)
                if cpu is not None:
                    others[tid] = cpu
        return Reading(process, others)

    def spent(self, start: Reading) -> float:
        """fractfs' CPU seconds since ``start`` (read on the same thread)."""
        end = self.read()
        theirs = sum(cpu - start.others.get(tid, 0.0) for tid, cpu in end.others.items())
        return max(0.0, end.process - start.process - max(0.0, theirs))


@dataclass
class Cost:
    """One measured checkpoint (monotonic times)."""

    start: float
    end: float
    cpu: float
    uploaded: int
    background: bool


class Budget:
    """Pacing of background checkpoints by ``cpu`` (fraction of one core) and ``upload`` (bytes/s); None: that
    one is unbounded. Thread-safe: the daemon asks, any checkpointing thread records."""

    def __init__(self, cpu: Optional[float], upload: Optional[float], *, window: float = WINDOW,
                 clock: Callable[[], float] = time.monotonic, meter: Optional[CpuMeter] = None):
        if cpu is not None and not cpu > 0:
            raise ValueError(f"cpu budget {cpu!r}: must be > 0 (None: unbounded)")
        if upload is not None and not upload > 0:
            raise ValueError(f"upload budget {upload!r}: must be > 0 (None: unbounded)")
        self.cpu = cpu
        self.upload = upload
        self.window = window
        self.clock = clock
        self.meter = meter if meter is not None else CpuMeter()
        self._lock = threading.Lock()
        self._created = clock()
        self._cpu_free = float("-inf")      # earliest start the CPU budget allows
        self._upload_free = float("-inf")   # earliest start the upload budget allows
        self._recent: deque[Cost] = deque()  # costs that ended within the window, for status
        self.last: Optional[Cost] = None
        self.checkpoints = 0
        self.cpu_total = 0.0
        self.uploaded_total = 0

    @property
    def unbounded(self) -> bool:
        return self.cpu is None and self.upload is None

    # -- the arithmetic -----------------------------------------------------------------------------
    def _pace(self, free: float, cost: Cost, amount: float, rate: Optional[float]) -> float:
        """When the next background checkpoint may start after ``cost`` used ``amount`` of a ``rate``-per-second
        budget, given that before it the budget allowed a start at ``free``."""
        if rate is None:
            return float("-inf")
        # debt from before this checkpoint (an explicit checkpoint may have started early) is carried, at most
        # one window past this one's end
        carried = min(max(free, cost.start), cost.end + self.window)
        return carried + amount / rate

    def record(self, start: float, end: float, cpu: float, uploaded: int, *, background: bool = True) -> None:
        """A checkpoint ran from ``start`` to ``end`` (monotonic), used ``cpu`` seconds and sent ``uploaded``
        bytes."""
        cost = Cost(start, end, max(0.0, cpu), max(0, uploaded), background)
        with self._lock:
            self._cpu_free = self._pace(self._cpu_free, cost, cost.cpu, self.cpu)
            self._upload_free = self._pace(self._upload_free, cost, cost.uploaded, self.upload)
            self._recent.append(cost)
            self._trim(end)
            self.last = cost
            self.checkpoints += 1
            self.cpu_total += cost.cpu
            self.uploaded_total += cost.uploaded

    def hold(self) -> tuple[float, Optional[str]]:
        """(earliest monotonic start of the next background checkpoint, the budget that sets it or None)."""
        with self._lock:
            if self._cpu_free >= self._upload_free:
                return self._cpu_free, CPU_LIMIT if self.cpu is not None else None
            return self._upload_free, UPLOAD_LIMIT

    def _trim(self, now: float) -> None:
        while self._recent and self._recent[0].end < now - self.window:
            self._recent.popleft()

    # -- reporting ----------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """status()["budget"]: the budgets, what the last minute used, and how long the next background
        checkpoint is held."""
        now = self.clock()
        until, by = self.hold()
        with self._lock:
            self._trim(now)
            recent = list(self._recent)
            last = self.last
        # over the last minute, or since start-up when that is shorter (a young process is not averaged
        # against a minute it did not live)
        span = max(1.0, min(self.window, now - self._created))
        cpu = sum(c.cpu for c in recent)
        sent = sum(c.uploaded for c in recent)
        return {
            "cpu_budget": self.cpu,
            "upload_budget": self.upload,
            "cpu_measured": self.meter.mode,
            "window": self.window,
            "cpu_used": round(cpu / span, 4),
            "cpu_seconds": round(cpu, 3),
            "upload_rate": round(sent / span),
            "checkpoints": len(recent),
            "last_cpu": round(last.cpu, 4) if last else None,
            "last_duration": round(last.end - last.start, 3) if last else None,
            "last_uploaded_bytes": last.uploaded if last else None,
            "held_for": round(max(0.0, until - now), 3),
            "held_by": by if until > now else None,
        }
