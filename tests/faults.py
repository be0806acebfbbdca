"""A fault-injecting store wrapper for the reliability tests and ``benchmarks/torture.py``.

``FaultyStore(inner, rate=0.1, seed=..., kinds=(...))`` sits *outside* a real store (and outside that store's
own retry layer), so every fault it injects reaches the snapshot engine exactly as an error that survived the
store's retries would. Faults, each drawn independently per call with probability ``rate``:

- ``fail``: raise a :class:`~fractfs.errors.StoreError` on any call. For writes and deletes the fault comes
  half the time *after* the inner call succeeded (a lost response: the caller sees an error for work that
  was done, and a retried exclusive put then meets its own first write);
- ``delay``: sleep up to ``max_delay`` seconds before the call (a slow or throttled store);
- ``truncate``: ``put``/``put_file`` store only a prefix of the bytes **and report success** (a store or
  mount that loses the tail of a write without saying so). Nothing but a hash can notice;
- ``stale_list``: ``list`` omits the keys written in the last ``stale_window`` seconds (an eventually
  consistent listing, or a FUSE directory cache);
- ``corrupt_read`` (not in the default set): ``get``/``get_range``/``get_file`` return the bytes with one
  bit flipped (damage in transit or at rest).

Every injected fault is counted in ``counts[(kind, op)]``, every call in ``calls[op]``, so tests can prove
that faults were really injected and report how many. ``arm(False)`` turns injection off (for the final
"does everything check out" phase of a test).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fractfs.errors import StoreError

DEFAULT_KINDS = ("fail", "delay", "truncate", "stale_list")
ALL_KINDS = (*DEFAULT_KINDS, "corrupt_read")

_WRITES = ("put", "put_file", "delete")
_READS = ("get", "get_range", "get_file", "size", "list")


class InjectedFault(StoreError):
    """A StoreError raised on purpose (so tests can tell injected failures from real ones)."""


class FaultyStore:
    """Wraps any :class:`~fractfs.stores.base.Store`; see the module docstring for the fault kinds.

    Deliberately has no ``put_many``/``get_many``: the engine then issues one call per object, each of which
    can fail on its own, which is the harsher case.
    """

    def __init__(
        self,
        inner: Any,
        rate: float = 0.1,
        seed: int = 0,
        kinds: Sequence[str] = DEFAULT_KINDS,
        *,
        max_delay: float = 0.02,
        stale_window: float = 5.0,
        ops: Sequence[str] | None = None,
        keys: Sequence[str] | None = None,
    ) -> None:
        unknown = set(kinds) - set(ALL_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {ALL_KINDS}")
        self.inner = inner
        self.url = f"faulty+{inner.url}"
        self.rate = rate
        self.kinds = tuple(kinds)
        self.max_delay = max_delay
        self.stale_window = stale_window
        #: restrict faults to these operations / key prefixes (None = all)
        self.ops = tuple(ops) if ops is not None else None
        self.keys = tuple(keys) if keys is not None else None
        self.armed = True
        self.counts: Counter[tuple[str, str]] = Counter()
        self.calls: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._recent: dict[str, float] = {}  # key -> monotonic time it was last written

    # -- bookkeeping ---------------------------------------------------------------------------------
    def arm(self, on: bool = True) -> None:
        self.armed = on

    @property
    def injected(self) -> int:
        """Faults injected so far (delays included)."""
        return sum(self.counts.values())

    def summary(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for (kind, _op), n in self.counts.items():
            out[kind] += n
        return dict(sorted(out.items()))

    def _roll(self, kind: str, op: str, key: str) -> bool:
        if not self.armed or kind not in self.kinds:
            return False
        if self.ops is not None and op not in self.ops:
            return False
        if self.keys is not None and not key.startswith(self.keys):
            return False
        with self._lock:
            hit = self._rng.random() < self.rate
            if hit:
                self.counts[(kind, op)] += 1
            return hit

    def _uniform(self, a: float, b: float) -> float:
        with self._lock:
            return self._rng.uniform(a, b)

    def _randint(self, a: int, b: int) -> int:
        with self._lock:
            return self._rng.randint(a, b)

    def _before(self, op: str, key: str) -> bool:
        """Delay and/or fail before the call. Returns True when a failure should come *after* it."""
        with self._lock:
            self.calls[op] += 1
        if self._roll("delay", op, key):
            time.sleep(self._uniform(0, self.max_delay))
        if self._roll("fail", op, key):
            if op in _WRITES and self._randint(0, 1):
                return True
            raise InjectedFault(f"{self.url}: injected failure of {op}({key!r})")
        return False

    def _after(self, op: str, key: str) -> None:
        raise InjectedFault(f"{self.url}: injected failure of {op}({key!r}) after it was done (lost response)")

    def _wrote(self, key: str) -> None:
        with self._lock:
            self._recent[key] = time.monotonic()

    def _flip(self, data: bytes) -> bytes:
        if not data:
            return data
        i = self._randint(0, len(data) - 1)
        return data[:i] + bytes([data[i] ^ (1 << self._randint(0, 7))]) + data[i + 1:]

    # -- the Store protocol ------------------------------------------------------------------------------
    def put(self, key: str, data: bytes, *, exclusive: bool = False) -> None:
        late = self._before("put", key)
        if data and self._roll("truncate", "put", key):
            data = data[: self._randint(0, len(data) - 1)]
        self.inner.put(key, data, exclusive=exclusive)
        self._wrote(key)
        if late:
            self._after("put", key)

    def put_file(self, key: str, path: Path) -> None:
        late = self._before("put_file", key)
        size = Path(path).stat().st_size
        if size and self._roll("truncate", "put_file", key):
            with open(path, "rb") as f:
                prefix = f.read(self._randint(0, size - 1))
            self.inner.put(key, prefix)
        else:
            self.inner.put_file(key, path)
        self._wrote(key)
        if late:
            self._after("put_file", key)

    def get(self, key: str) -> bytes:
        self._before("get", key)
        data: bytes = self.inner.get(key)
        if self._roll("corrupt_read", "get", key):
            data = self._flip(data)
        return data

    def get_range(self, key: str, start: int, length: int) -> bytes:
        self._before("get_range", key)
        data: bytes = self.inner.get_range(key, start, length)
        if self._roll("corrupt_read", "get_range", key):
            data = self._flip(data)
        return data

    def get_file(self, key: str, path: Path) -> None:
        self._before("get_file", key)
        self.inner.get_file(key, path)
        if self._roll("corrupt_read", "get_file", key):
            p = Path(path)
            p.write_bytes(self._flip(p.read_bytes()))

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        self._before("list", prefix)
        items = list(self.inner.list(prefix))
        if self._roll("stale_list", "list", prefix):
            now = time.monotonic()
            with self._lock:
                fresh = {k for k, t in self._recent.items() if now - t < self.stale_window}
            items = [(k, n) for k, n in items if k not in fresh]
        return iter(items)

    def size(self, key: str) -> int | None:
        self._before("size", key)
        out: int | None = self.inner.size(key)
        return out

    def delete(self, key: str) -> None:
        late = self._before("delete", key)
        self.inner.delete(key)
        if late:
            self._after("delete", key)

    def __repr__(self) -> str:
        return f"FaultyStore({self.inner!r}, rate={self.rate}, kinds={self.kinds})"


def install_in_child(rate: float, seed: int, kinds: Sequence[str] = DEFAULT_KINDS, **kw: Any) -> list[Any]:
    """Make every store the runtime opens a FaultyStore (for code run in a child interpreter).

    ``fractfs.runtime`` imports ``open_store`` from ``fractfs.stores`` at call time, so replacing the module
    attribute is enough. Returns the list the wrappers are appended to, so the child can report counts.
    """
    import fractfs.stores as stores

    made: list[Any] = []
    real = stores.open_store

    def open_faulty(location: str, **options: Any) -> Any:
        fs = FaultyStore(real(location, **options), rate=rate, seed=seed + len(made), kinds=kinds, **kw)
        made.append(fs)
        return fs

    stores.open_store = open_faulty  # type: ignore[assignment]
    return made


class SlowStore:
    """Every call to ``inner`` takes ``latency`` (+- ``jitter``) seconds more (a store far away: the Databricks Files API
    answers in 0.1-0.5 s per request). Keeps the inner store's ``put_many``/``get_many`` out, so every object
    pays the latency."""

    def __init__(self, inner: Any, latency: float, *, jitter: float = 0.0, seed: int = 0) -> None:
        self.inner = inner
        self.url = f"slow+{inner.url}"
        self.latency = latency
        self.jitter = jitter  # each call takes latency +- jitter (uniform): real latency varies
        self.calls: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def _wait(self, op: str) -> None:
        with self._lock:
            self.calls[op] += 1
            extra = self._rng.uniform(-self.jitter, self.jitter) if self.jitter else 0.0
        time.sleep(max(0.0, self.latency + extra))

    def put(self, key: str, data: bytes, *, exclusive: bool = False) -> None:
        self._wait("put")
        self.inner.put(key, data, exclusive=exclusive)

    def put_file(self, key: str, path: Path) -> None:
        self._wait("put_file")
        self.inner.put_file(key, path)

    def get(self, key: str) -> bytes:
        self._wait("get")
        data: bytes = self.inner.get(key)
        return data

    def get_range(self, key: str, start: int, length: int) -> bytes:
        self._wait("get_range")
        data: bytes = self.inner.get_range(key, start, length)
        return data

    def get_file(self, key: str, path: Path) -> None:
        self._wait("get_file")
        self.inner.get_file(key, path)

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        self._wait("list")
        return iter(list(self.inner.list(prefix)))

    def size(self, key: str) -> int | None:
        self._wait("size")
        n: int | None = self.inner.size(key)
        return n

    def delete(self, key: str) -> None:
        self._wait("delete")
        self.inner.delete(key)
