"""One writer per checkpoint area: a lease object on the store, kept alive by a heartbeat.

Layout (docs/format.md §B10): the lease is the object ``locks/lease.<generation>`` with the highest generation
(12 digits). Taking the lease means creating generation ``g + 1`` with an *exclusive* put (``If-None-Match: *``
on S3, link/``O_EXCL`` on a POSIX volume), so of several nodes racing for the same generation exactly one
wins, and a takeover never has to delete or overwrite the key a live node might be renewing (delete-then-create
on one fixed key would let two racers each delete the other's fresh lease). The holder overwrites its own key
with a growing ``beat`` counter; at each beat it also lists ``locks/`` and gives up as soon as a newer
generation exists. Releasing deletes the holder's own key; the next node then starts a fresh generation.

Staleness is judged by the *reader's* clock: a lease whose bytes have not changed for ``timeout`` seconds of
the observer's own monotonic time is stale, whatever the writer's clock says. The writer's wall-clock
timestamp is only used for a lease that is obviously ancient (older than ``timeout`` plus a generous skew
allowance), so a node restarted long after a crash does not wait a full timeout first.

The holder treats its lease as valid for ``timeout / 2`` after the start of its last successful renewal, so it
stops committing snapshots well before an observer may take over (see :meth:`Lease.valid`).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator, Optional

from .errors import AlreadyExists, StoreNotFound
from .errors import LeaseLost as LeaseLost  # re-exported: older callers import it from here
from .stores.base import Store

log = logging.getLogger("fractfs")

PREFIX = "locks/"
_NAME = "lease."
_DIGITS = 12
#: The highest generation a 12-digit name can hold. Reaching it honestly takes 10**12 acquisitions, so a lease at
#: the top is a forged or corrupt object; _successor() steps around it instead of failing (docs/security.md).
MAX_GENERATION = 10**_DIGITS - 1
#: The longest heartbeat timeout LeaseRecord.state believes from a lease record (when the reader gives none).
#: The record is written by whoever can write the Volume: a forged ``"timeout": 1e30`` must not make its holder
#: look live for ever. A live holder beats every ``timeout / 4``, so this only misjudges timeouts over 4 hours.
MAX_RECORD_TIMEOUT = 3600.0
FORMAT = "fractfs-lease"
VERSION = 1
#: A lease whose writer timestamp is older than timeout + this is taken over without waiting to watch it.
#: Large, so that only clocks that are wrong by minutes could make a live holder look ancient.
MAX_CLOCK_SKEW = 120.0

#: LeaseRecord.state() values.
FREE, LIVE, UNCERTAIN, STALE = "free", "live", "uncertain", "stale"


def lease_key(generation: int) -> str:
    return f"{PREFIX}{_NAME}{generation:0{_DIGITS}d}"


def parse_generation(key: str) -> Optional[int]:
    """The generation of a ``locks/lease.<n>`` key, None for anything else found under ``locks/``."""
    if not key.startswith(PREFIX + _NAME):
        return None
    tail = key[len(PREFIX + _NAME):]
    # exactly 12 ASCII digits: str.isdigit() alone would also accept other scripts' digits ("٣"), and a
    # longer name could hold a number no successor can be written for
    if len(tail) != _DIGITS or not tail.isascii() or not tail.isdigit():
        return None
    return int(tail)


def _successor(gens: list[int]) -> tuple[int, Optional[int]]:
    """The generation a taker creates after the sorted ``gens``, and a generation to delete first (or None).

    Normally ``top + 1``. When the top is MAX_GENERATION no larger name exists; that object is forged (see
    MAX_GENERATION) and, since the caller only gets here once it is stale or released, nobody renews it: it is
    deleted and the successor is counted from the generations below it. Of several nodes doing this at once,
    the exclusive create of that successor still admits exactly one.
    """
    top = gens[-1]
    if top < MAX_GENERATION:
        return top + 1, None
    rest = [g for g in gens if g < MAX_GENERATION]
    return (rest[-1] + 1 if rest else 1), top


def newest(store: Store) -> Optional[tuple[str, Optional[LeaseRecord]]]:
    """The key of the current (highest) lease generation and its record (None: unreadable, e.g. torn or from a
    newer fractfs); None when there is no lease. Store errors propagate (StoreNotFound when it was released and
    removed between the listing and the read)."""
    gens = sorted(g for g in (parse_generation(k) for k, _size in store.list(PREFIX)) if g is not None)
    if not gens:
        return None
    key = lease_key(gens[-1])
    return key, LeaseRecord.decode(store.get(key))


@dataclass
class LeaseRecord:
    generation: int
    node: str
    token: str          #: random per acquisition: tells two acquisitions by the same node apart
    beat: int           #: heartbeat counter; observers watch it change
    time: float         #: writer's wall clock at this beat (seconds since the epoch; a hint only)
    acquired: float     #: writer's wall clock when it took the lease
    timeout: float      #: the writer's lease_timeout, for humans reading the object
    host: str = ""
    pid: int = 0
    released: bool = False

    def state(self, now: float, timeout: Optional[float] = None) -> str:
        """The lease as judged from its writer's own heartbeat time, by a reader's wall clock ``now``.

        :data:`FREE` when released; :data:`LIVE` within ``timeout`` (default: the writer's own) of the last
        heartbeat; :data:`UNCERTAIN` up to :data:`MAX_CLOCK_SKEW` beyond it (the clocks may just disagree);
        :data:`STALE` after that. One-shot readers (``fractfs status``/``sync``/``prune``) go by this; a
        running node also watches the heartbeat change (:meth:`Lease.tick`) before taking a lease over.

        The record is written by whoever can write the Volume, so its own numbers are bounded: its ``timeout``
        is believed up to :data:`MAX_RECORD_TIMEOUT` (NaN or negative: 0), and a heartbeat dated more than
        :data:`MAX_CLOCK_SKEW` in the future, or not a number, is :data:`STALE` - a clock that wrong is outside
        what the lease tolerates anyway, and a forged record could otherwise stay live for ever
        (docs/security.md).
        """
        if self.released:
            return FREE
        if timeout is None:
            own = self.timeout
            limit = min(max(own, 0.0), MAX_RECORD_TIMEOUT) if own == own else 0.0  # own != own: NaN
        else:
            limit = timeout
        age = now - self.time
        if age != age or age < -MAX_CLOCK_SKEW:  # NaN, or from the future
            return STALE
        if age <= limit:
            return LIVE
        if age <= limit + MAX_CLOCK_SKEW:
            return UNCERTAIN
        return STALE

    def encode(self) -> bytes:
        doc: dict[str, Any] = {"format": FORMAT, "version": VERSION}
        doc.update(asdict(self))
        return json.dumps(doc, sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> Optional[LeaseRecord]:
        """The record, or None for bytes that are not a complete lease (torn, foreign, newer version)."""
        try:
            doc = json.loads(data.decode("utf-8"))
            if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
                return None
            return cls(
                generation=int(doc["generation"]), node=str(doc["node"]), token=str(doc["token"]),
                beat=int(doc["beat"]), time=float(doc["time"]), acquired=float(doc["acquired"]),
                timeout=float(doc["timeout"]), host=str(doc.get("host", "")), pid=int(doc.get("pid", 0)),
                released=bool(doc.get("released", False)),
            )
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return None


class Lease:
    """The checkpoint lease as seen by one node. Thread-safe; every method does at most a few store calls.

    Call :meth:`tick` periodically (every ``timeout / 4``): it renews the lease when held, or tries to take it
    (free, released or stale) when not. :meth:`valid` is the cheap, local check made right before a commit.
    """

    def __init__(self, store: Store, node_id: str, timeout: float, *,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time):
        if timeout <= 0:
            raise ValueError(f"lease timeout must be positive, got {timeout}")
        self.store = store
        self.node_id = node_id
        self.timeout = float(timeout)
        self._clock = clock
        self._wall = wall
        self._lock = threading.RLock()
        self.held = False
        self.generation: Optional[int] = None
        self._token = ""
        self._beat = 0
        self._acquired = 0.0
        self._renewed_at: Optional[float] = None  # clock() at the *start* of the last confirmed renewal
        # what we last saw on the store: (generation, raw bytes) and since when (our clock)
        self._seen: Optional[tuple[int, bytes]] = None
        self._seen_since = 0.0
        self.holder: Optional[LeaseRecord] = None  # newest record read (ours or someone else's)
        self.holder_key: Optional[str] = None
        self.last_error: Optional[str] = None
        self.last_error_time: Optional[float] = None
        self.takeovers = 0  # how many times this node took a stale lease
        self._warned: set[str] = set()  # foreign names under locks/ already logged

    # -- the local view --------------------------------------------------------------------------------
    @property
    def beat_period(self) -> float:
        return self.timeout / 4.0

    def valid(self) -> bool:
        """True while we hold the lease and renewed it less than ``timeout / 2`` ago (by our clock).

        An observer needs ``timeout`` of unchanged heartbeats, counted from a moment after our last renewal
        started, before it takes over; stopping at half of that leaves the other half for the commit in
        flight and for clocks that tick at slightly different rates.
        """
        with self._lock:
            return (self.held and self._renewed_at is not None
                    and self._clock() - self._renewed_at < self.timeout / 2.0)

    def remaining(self) -> float:
        """Seconds of validity left (see :meth:`valid`); 0 when not held or already past it."""
        with self._lock:
            if not self.held or self._renewed_at is None:
                return 0.0
            return max(0.0, self._renewed_at + self.timeout / 2.0 - self._clock())

    def forget(self) -> None:
        """In a forked child: stop considering the lease ours, without a store call. The parent process still
        holds it; the child must neither commit on it nor release it at its exit."""
        self._lock = threading.RLock()  # another thread may have held it at fork time
        self.held = False
        self._renewed_at = None
        self.generation = None

    def observed_age(self) -> Optional[float]:
        """Seconds since the lease we watch last changed (our clock); None before the first look."""
        with self._lock:
            if self._seen is None:
                return None
            return max(0.0, self._clock() - self._seen_since)

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable summary for status()."""
        with self._lock:
            rec = self.holder
            held = self.valid()
            if held:
                state = "held"
            elif self.held:
                state = "unconfirmed"  # ours, but the last renewal is too old to commit on
            elif rec is not None and not rec.released:
                # the holder's bytes unchanged for a timeout: the next tick takes it over (a forged record
                # never beats, so it is called stale here, not live, after one timeout)
                age = self.observed_age()
                state = "stale" if age is not None and age >= self.timeout else "standby"
            elif rec is not None and rec.released:
                state = "free"
            else:
                state = "unknown" if self._seen is None and self.last_error else "free"
            holder = None if rec is None or rec.released else rec.node
            return {
                "state": state,
                "held": held,
                "holder": self.node_id if self.held else holder,
                "generation": self.generation if self.held else (rec.generation if rec else None),
                "key": lease_key(self.generation) if self.held and self.generation else self.holder_key,
                "holder_heartbeat_time": rec.time if rec else None,
                "holder_heartbeat_age": None if self.held else self.observed_age(),
                "timeout": self.timeout,
                "takeovers": self.takeovers,
                "last_error": self.last_error,
                "last_error_time": self.last_error_time,
            }

    # -- store operations ------------------------------------------------------------------------------
    def _generations(self) -> list[int]:
        gens = []
        for key, _size in self.store.list(PREFIX):
            g = parse_generation(key)
            if g is not None:
                gens.append(g)
            elif key.startswith(PREFIX + _NAME) and key not in self._warned:
                self._warned.add(key)
                log.warning("fractfs: ignoring %s: not a lease generation (12 decimal digits); fractfs never "
                            "writes such a name, so someone else did", key)
        return sorted(gens)

    def _record_error(self, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.last_error_time = self._wall()

    def tick(self) -> bool:
        """Renew (holder) or try to acquire (everyone else). Returns whether the lease is held and valid.

        Store errors propagate (and are remembered in ``last_error``); the caller retries at the next tick.
        """
        with self._lock:
            try:
                if self.held:
                    self._renew()
                if not self.held:
                    self._try_acquire()
            except Exception as exc:
                self._record_error(exc)
                raise
            self.last_error = None
            return self.valid()

    def _lose(self, why: str) -> None:
        log.warning("fractfs: lost the checkpoint lease (%s); this node stops writing checkpoints", why)
        self.held = False
        self._renewed_at = None
        self.generation = None

    def _renew(self) -> None:
        started = self._clock()
        gen = self.generation
        assert gen is not None
        gens = self._generations()
        if not gens or gens[-1] != gen:
            newer = [g for g in gens if g > gen]
            self._lose(f"generation {newer[-1]} is newer than ours ({gen})" if newer
                       else f"our lease object {lease_key(gen)} disappeared")
            return
        try:
            current = LeaseRecord.decode(self.store.get(lease_key(gen)))
        except StoreNotFound:
            self._lose(f"our lease object {lease_key(gen)} disappeared")
            return
        if current is not None and current.token != self._token:
            self._lose(f"{lease_key(gen)} now belongs to {current.node}")
            return
        self._beat += 1
        rec = self._record(gen)
        self.store.put(lease_key(gen), rec.encode())
        self._renewed_at = started
        self.holder = rec
        self.holder_key = lease_key(gen)
        for old in gens[:-1]:  # leftovers of earlier holders: only the newest generation counts
            self._delete_quiet(lease_key(old))

    def _record(self, generation: int, *, released: bool = False) -> LeaseRecord:
        return LeaseRecord(generation=generation, node=self.node_id, token=self._token, beat=self._beat,
                           time=self._wall(), acquired=self._acquired, timeout=self.timeout,
                           host=socket.gethostname(), pid=os.getpid(), released=released)

    def _try_acquire(self) -> None:
        gens = self._generations()
        if not gens:
            self._create(1, None)
            return
        top = gens[-1]
        try:
            raw = self.store.get(lease_key(top))
        except StoreNotFound:
            return  # released and cleaned up between list and get; look again next tick
        rec = LeaseRecord.decode(raw)
        now = self._clock()
        if self._seen != (top, raw):
            self._seen = (top, raw)
            self._seen_since = now
        self.holder = rec
        self.holder_key = lease_key(top)
        nxt, forged = _successor(gens)
        if rec is not None and rec.released:
            self._take(nxt, forged, None)
            return
        unchanged_for = now - self._seen_since
        # ancient: stale by the reader's timeout and dated in the past. A heartbeat from the future is stale to a
        # one-shot reader, but a running node waits for it to stop changing instead: two nodes whose clocks
        # differ by minutes would otherwise each find the other's fresh lease stale and take it in turn.
        wall = self._wall()
        ancient = rec is not None and rec.time <= wall and rec.state(wall, self.timeout) == STALE
        if unchanged_for >= self.timeout or ancient:
            who = rec.node if rec is not None else "an unreadable lease"
            why = (f"its heartbeat is {self._wall() - rec.time:.0f}s old by its own clock" if ancient and rec
                   else f"no heartbeat for {unchanged_for:.1f}s")
            self._take(nxt, forged, f"{who} ({why})")

    def _take(self, generation: int, forged: Optional[int], stale_from: Optional[str]) -> None:
        if forged is not None:
            log.warning("fractfs: %s holds the highest generation a lease name can carry, which no fractfs "
                        "reaches; removing it (stale) and taking generation %d", lease_key(forged), generation)
            try:
                self.store.delete(lease_key(forged))
            except StoreNotFound:
                pass
        self._create(generation, stale_from)

    def _create(self, generation: int, stale_from: Optional[str]) -> None:
        started = self._clock()
        token = uuid.uuid4().hex
        prev = (self.generation, self._token, self._beat, self._acquired)
        self.generation, self._token, self._beat, self._acquired = generation, token, 0, self._wall()
        rec = self._record(generation)
        key = lease_key(generation)
        try:
            self.store.put(key, rec.encode(), exclusive=True)
        except AlreadyExists:
            self.generation, self._token, self._beat, self._acquired = prev
            log.debug("fractfs: another node took lease generation %d first", generation)
            self._observe_winner(key)
            return
        except BaseException:
            self.generation, self._token, self._beat, self._acquired = prev
            raise
        # Confirm: read it back and make sure nobody is already past us. An exclusive create that the store
        # could only emulate (check-then-write) is caught here when the other writer landed second.
        back = LeaseRecord.decode(self.store.get(key))
        gens = self._generations()
        if back is None or back.token != token or (gens and gens[-1] != generation):
            self.generation, self._token, self._beat, self._acquired = prev
            log.warning("fractfs: lease generation %d was contended; not taking it", generation)
            return
        self.held = True
        self._renewed_at = started
        self.holder = rec
        self.holder_key = key
        self._seen = None
        for g in gens:
            if g < generation:
                self._delete_quiet(lease_key(g))
        if stale_from is not None:
            self.takeovers += 1
            log.warning("fractfs: took over the checkpoint lease from %s; this node now writes checkpoints",
                        stale_from)
        else:
            log.info("fractfs: acquired the checkpoint lease (generation %d)", generation)

    def _observe_winner(self, key: str) -> None:
        """After losing a race for ``key``: learn who won (for status()) and start watching its heartbeat."""
        try:
            raw = self.store.get(key)
        except StoreNotFound:
            return
        gen = parse_generation(key)
        if gen is None:  # only keys from lease_key() get here; never stop the node over one that is not
            return
        self._seen, self._seen_since = (gen, raw), self._clock()
        self.holder = LeaseRecord.decode(raw)
        self.holder_key = key

    def _delete_quiet(self, key: str) -> None:
        try:
            self.store.delete(key)
        except Exception as exc:  # noqa: BLE001 - a leftover old generation is harmless, retried next beat
            log.debug("fractfs: could not delete old lease %s: %s", key, exc)

    def release(self) -> None:
        """Give the lease up: stop committing first, then delete our lease object.

        The next node then creates a fresh generation with an exclusive put. Generation numbers may restart
        after a release; identity is the random ``token``, which every renewal checks, so a former holder can
        never mistake a later lease for its own.
        """
        with self._lock:
            if not self.held:
                return
            gen = self.generation
            assert gen is not None
            self.held = False  # first: valid() is now False, so nothing commits past this point
            self._renewed_at = None
            self.generation = None
            try:
                current = LeaseRecord.decode(self.store.get(lease_key(gen)))
                if current is not None and current.token == self._token:
                    self.store.delete(lease_key(gen))
                    self.holder = None
                    self.holder_key = None
                    log.info("fractfs: released the checkpoint lease (generation %d)", gen)
            except StoreNotFound:
                pass
            except Exception as exc:
                # not fatal: the lease just goes stale and is taken over after the timeout
                self._record_error(exc)
                log.warning("fractfs: could not release the checkpoint lease (%s); another node can take it "
                            "after %.0fs", exc, self.timeout)


def _nothing() -> None:
    pass


class LeaseKeeper:
    """Keeps one node's :class:`Lease` going: the ``fractfs-lease`` heartbeat thread, or a temporary one for
    a single checkpoint when the node runs no thread (``init(start_daemon=False)``), and the log lines for
    its transitions (acquired, lost, standby, store unreachable and back).

    ``where`` names the store in messages; ``on_acquired``/``on_lost`` are called (from the ticking thread)
    when this node takes the lease or stops holding it.
    """

    def __init__(self, lease: Lease, *, where: str, on_acquired: Callable[[], None] = _nothing,
                 on_lost: Callable[[], None] = _nothing):
        self.lease = lease
        self.where = where
        self.on_acquired = on_acquired
        self.on_lost = on_lost
        #: the last tick failed (store unreachable): the lease cannot be confirmed
        self.failing = False
        #: what the last failed tick raised (None after a good one)
        self.last_exc: Optional[BaseException] = None
        self._standby_logged: Optional[str] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @property
    def running(self) -> bool:
        """A heartbeat thread was started (and not stopped)."""
        return self._thread is not None and not self._stop.is_set()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, args=(self._stop,), name="fractfs-lease", daemon=True)
        self._thread.start()

    def forget(self) -> None:
        """In a forked child: the heartbeat thread does not exist here; don't touch the parent's objects (a
        lock inside them may have been held by another thread at fork time)."""
        self._stop = threading.Event()
        self._stop.set()
        self._thread = None
        self.lease.forget()

    def stop(self) -> None:
        """Stop beating (does not wait: the thread is a daemon and at most one tick away from noticing)."""
        self._stop.set()

    def _loop(self, stop: threading.Event) -> None:
        # Beats are spaced from the *start* of the previous one: on a slow store a renewal can take a good
        # part of the period, and waiting a full period after it ended would leave the lease invalid (its
        # validity counts from the start of a renewal) for a while before every beat.
        # A short pause is kept even then, so callers of Lease.valid() (which waits for a renewal in progress)
        # are not starved by back-to-back renewals.
        period = self.lease.beat_period
        started = time.monotonic()
        while not stop.wait(max(period / 8.0, started + period - time.monotonic())):
            started = time.monotonic()
            self.tick()

    def tick(self) -> bool:
        """Renew or try to take the lease; logs transitions. Returns whether it is held and valid. Never raises."""
        lease = self.lease
        was = lease.held
        try:
            lease.tick()
        except Exception as exc:  # noqa: BLE001 - a store hiccup must not stop the heartbeat thread
            if not self.failing:
                log.warning("fractfs: checkpoint lease: %s: %s (retrying every %.1fs)",
                            type(exc).__name__, exc, lease.beat_period)
            self.failing = True
            self.last_exc = exc
            return lease.valid()
        self.last_exc = None
        if self.failing:
            log.info("fractfs: checkpoint lease: store reachable again")
            self.failing = False
        if lease.held and not was:
            self._standby_logged = None
            self.on_acquired()
        elif not lease.held:
            holder = lease.holder.node if lease.holder is not None and not lease.holder.released else None
            if holder is not None and holder != self._standby_logged:
                self._standby_logged = holder
                log.warning("fractfs: %s", self.standby_message())
            if was:
                self.on_lost()
        return lease.valid()

    def standby_message(self) -> str:
        lease = self.lease
        holder = lease.holder.node if lease.holder is not None else "another node"
        return (f"checkpoints are paused on this node: {holder} holds the checkpoint lease on {self.where}. "
                f"This node restored read-only and writes no snapshots; it takes over when that node releases "
                f"the lease or sends no heartbeat for {lease.timeout:g}s")

    def may_write(self, eager: bool) -> bool:
        """True when this node may write a checkpoint now; False when another node holds the lease.

        ``eager`` (sync_now, the final checkpoint) asks the store right away; otherwise taking the lease is
        left to the heartbeat thread, which polls anyway. Raises :class:`LeaseLost` when this node holds the
        lease but cannot confirm it (its renewal is overdue, or the store is unreachable).
        """
        lease = self.lease
        if lease.valid():
            if lease.remaining() < self.margin():
                # Late in the validity window: a checkpoint started now could reach its commit after the
                # lease stopped being valid (the heartbeat's renewal may itself be slow), so renew first.
                self.tick()
            return True
        if eager or not self.running or lease.held:
            self.tick()
        if lease.valid():
            return True
        if lease.held or self.failing:
            raise LeaseLost("cannot confirm the checkpoint lease: " + (lease.last_error or "its renewal is overdue"))
        return False

    @contextlib.contextmanager
    def beating(self) -> Iterator[None]:
        """Keep the lease renewed for the duration when no heartbeat thread does: otherwise a checkpoint
        longer than half the lease timeout would lose the lease at its commit."""
        if self.running or not self.lease.held:
            yield
            return
        stop = threading.Event()
        t = threading.Thread(target=self._loop, args=(stop,), name="fractfs-lease-sync", daemon=True)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join(self.lease.beat_period + 5)

    def margin(self) -> float:
        """A lease with less validity than this left is renewed before a checkpoint starts: one heartbeat
        period (a quarter of the timeout, half of the validity window)."""
        return self.lease.beat_period

    def fence(self) -> None:
        """Raise :class:`LeaseLost` unless this node holds a valid lease at this very moment (the check made
        right before a commit).

        A lease that is still ours but whose validity ran out during a long checkpoint (a slow store delayed
        the heartbeat) is renewed here once: the renewal confirms that no newer generation exists and that
        our key still carries our token, which is exactly what committing needs. Only if that fails is the
        commit refused.
        """
        lease = self.lease
        if lease.valid():
            return
        if lease.held:
            log.info("fractfs: checkpoint lease validity ran out during the checkpoint; renewing before the commit")
            self.tick()
            if lease.valid():
                return
        raise LeaseLost("not committing: this node does not hold a valid checkpoint lease")
