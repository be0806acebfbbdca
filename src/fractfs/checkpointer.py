"""THE checkpoint: lock -> lease -> prepare -> fence -> commit -> trim -> stats.

Every checkpoint goes through here and obeys the same rules: the daemon's ticks, ``sync_now()``, the bounded
final pass at SIGTERM/exit (all through :class:`Checkpointer`) and ``fractfs sync`` (through
:func:`one_shot`). The engine prepares a snapshot (content uploaded, manifest built); committing it is one
call guarded by a *fence* that is checked right before the manifest is written: this node must hold a valid
lease at that moment, and the run must not have been aborted. Nothing inspects store keys.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

from .errors import CheckpointAborted, FractfsError, LeaseHeld
from .lease import Lease, LeaseKeeper
from .snapshot import catalog
from .snapshot.options import Options
from .snapshot.scan import Want
from .snapshot.statcache import StateLock
from .stores.base import Store
from .stores.wrappers import AbortableStore, abortable

if TYPE_CHECKING:
    from .budget import Budget
    from .config import Config
    from .snapshot.engine import CheckpointResult

log = logging.getLogger("fractfs")


def _app_path(label: str) -> str:
    """The engine names paths "area:relpath"; both areas hold app-relative paths."""
    return label.split(":", 1)[1] if ":" in label else label


@dataclass
class CheckpointStats:
    """What the checkpoints of one running instance did, for status()."""

    last_sync_time: Optional[float] = None
    last_sync_start: Optional[float] = None
    last_sync_duration: Optional[float] = None
    last_snapshot_id: Optional[str] = None
    #: app-relative paths the last checkpoint stored new content for
    last_stored: list[str] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    uploaded_bytes: int = 0
    missed_deadline: list[str] = field(default_factory=list)
    skipped_busy: list[str] = field(default_factory=list)
    #: app path -> why the store refused it (the last checkpoint committed without it)
    not_stored: dict[str, str] = field(default_factory=dict)
    #: app paths stored from two agreeing reads while they kept changing (see capture.capture_stable)
    unsettled: list[str] = field(default_factory=list)
    kept_unrestored: list[str] = field(default_factory=list)
    syncs: int = 0
    consecutive_failures: int = 0
    last_error: Optional[str] = None
    last_error_time: Optional[float] = None

    def record_error(self, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.last_error_time = time.time()

    def failed(self, exc: BaseException) -> None:
        self.consecutive_failures += 1
        self.record_error(exc)

    def succeeded(self, res: CheckpointResult, start: float) -> None:
        self.last_sync_time = time.time()
        self.last_sync_duration = round(self.last_sync_time - start, 3)
        if res.snapshot_id:
            self.last_snapshot_id = res.snapshot_id
        self.last_stored = [_app_path(p) for p in res.stored]
        self.files = res.files
        self.bytes = res.bytes
        self.uploaded_bytes = res.uploaded_bytes
        self.missed_deadline = list(res.missed_deadline)
        self.skipped_busy = list(res.skipped_busy)
        self.not_stored = {_app_path(p): why for p, why in res.rejected.items()}
        self.unsettled = [_app_path(p) for p in res.unsettled]
        self.kept_unrestored = [_app_path(p) for p in res.kept_unrestored]
        self.syncs += 1
        self.consecutive_failures = 0


def _nothing() -> None:
    pass


class Checkpointer:
    """Checkpoints of one node's areas into one store, one at a time (:attr:`lock`).

    ``keeper`` is the node's lease keeper (None: no lease, e.g. a forced one-shot); ``areas`` and ``want`` are
    called for each checkpoint; ``on_change`` is called whenever :attr:`stats` changed (the runtime persists
    its status then). Each checkpoint's CPU and upload volume is recorded in ``budget`` when one is given (the
    daemon paces background checkpoints by it; see budget.py).
    """

    def __init__(self, store: Store, *, areas: Callable[[], dict[str, Path]], want: Callable[[], Want],
                 state_dir: Path, options: Options, keeper: Optional[LeaseKeeper],
                 stats: Optional[CheckpointStats] = None, on_change: Callable[[], None] = _nothing,
                 budget: Optional[Budget] = None):
        self.store = store
        self.areas = areas
        self.want = want
        self.state_dir = state_dir
        self.options = options
        self.keeper = keeper
        self.stats = stats if stats is not None else CheckpointStats()
        self.on_change = on_change
        self.budget = budget
        self.lock = threading.Lock()  # one checkpoint at a time
        self.lock_owner: Optional[int] = None
        self._running: set[AbortableStore] = set()
        #: the last run prepared a snapshot it had to hold back; the caller should retry soon
        self.retry_soon = False
        # Is the store's newest snapshot one this node's tree does not descend from? None = not checked yet
        # (after taking the lease). See run().
        self._foreign_base: Optional[bool] = False
        self._foreign_from = ""
        #: what the last run prepared (committed or held back); None before the first or after a failure
        self.last_result: Optional[CheckpointResult] = None

    # -- the lock and aborting ------------------------------------------------------------------------
    def acquire(self, timeout: Optional[float]) -> bool:
        got = self.lock.acquire() if timeout is None else self.lock.acquire(timeout=max(0.0, timeout))
        if got:
            self.lock_owner = threading.get_ident()
        return got

    def release(self) -> None:
        self.lock_owner = None
        self.lock.release()

    def abort_running(self) -> None:
        """Make every running checkpoint's store calls fail from now on: it stops and never commits."""
        for store in list(self._running):
            store.abort()

    def lease_acquired(self) -> None:
        """This node just took the lease: look at the store's newest snapshot before the next commit."""
        self._foreign_base = None

    # -- one checkpoint -------------------------------------------------------------------------------
    def checkpoint(self, deadline: Optional[float] = None, *, eager: bool = True,
                   stopping: Callable[[], bool] = lambda: False) -> list[str]:
        """Lease check, lock, one checkpoint (sync_now: ``eager``; a daemon tick: not). Returns the app paths
        stored; [] when another node holds the lease or ``stopping()`` says the final pass takes over."""
        keeper = self.keeper
        try:
            writer = keeper.may_write(eager) if keeper is not None else True
        except FractfsError as exc:
            self.stats.failed(exc)
            raise
        if not writer:
            if eager and keeper is not None:
                log.warning("fractfs: sync_now() stored nothing: %s", keeper.standby_message())
            return []
        self.acquire(None)
        try:
            if stopping() and not eager:
                return []  # the daemon lost the race with shutdown(); the final checkpoint covers it
            beating = keeper.beating() if keeper is not None else contextlib.nullcontext()
            with beating, self._metered(background=not eager):
                return self.run(deadline, self.state_dir)
        finally:
            self.release()

    @contextlib.contextmanager
    def _metered(self, *, background: bool) -> Iterator[None]:
        """Record the CPU and upload volume of what runs inside in :attr:`budget` (failed runs cost too)."""
        budget = self.budget
        if budget is None:
            yield
            return
        reading = budget.meter.read()
        start = time.monotonic()
        try:
            yield
        finally:
            cpu = budget.meter.spent(reading)
            res = self.last_result
            budget.record(start, time.monotonic(), cpu, res.uploaded_bytes if res is not None else 0,
                          background=background)

    def run(self, deadline: Optional[float], state_dir: Path, kind: str = "sync") -> list[str]:
        """prepare -> fence -> commit, with the lock already held by the caller. Updates :attr:`stats`."""
        start = time.time()
        self.stats.last_sync_start = start
        self.retry_soon = False
        self.last_result = None
        if self._foreign_base is None:
            try:
                self._check_base()
            except Exception as exc:
                self.stats.failed(exc)
                raise
        # The engine compares with the store's newest snapshot, and a file it cannot capture this round (busy,
        # unreadable, out of time) keeps that snapshot's entry. When that snapshot was written by another node
        # after this node's tree was restored, that would put the other node's version of the file into ours:
        # two nodes' state in one snapshot. So until this node has committed one snapshot of its own, a commit
        # is held back (not made) unless nothing had to be carried over.
        hold = bool(self._foreign_base)
        store = abortable(self.store)
        self._running.add(store)
        try:
            res = self._prepare_and_commit(store, deadline, state_dir, hold, kind)
        except CheckpointAborted:
            log.info("fractfs: %s checkpoint aborted for the final one", kind)
            raise
        except Exception as exc:
            self.stats.failed(exc)
            self.on_change()
            raise
        finally:
            self._running.discard(store)
        if res is None:  # held back
            self.retry_soon = True
            self.stats.last_sync_duration = round(time.time() - start, 3)
            self.stats.last_stored = []
            self.on_change()
            return []
        if hold:
            if len(res.skipped_busy) + len(res.missed_deadline):  # as Prepared.carried
                self.retry_soon = True  # nothing new next to what was carried: nothing to commit yet
                self.stats.last_stored = []
                return []
            self._foreign_base = False
        self.stats.succeeded(res, start)
        self.on_change()
        return list(self.stats.last_stored)

    def _prepare_and_commit(self, store: AbortableStore, deadline: Optional[float], state_dir: Path,
                            hold: bool, kind: str) -> Optional[CheckpointResult]:
        """The engine's two steps under the state lock; None when the commit had to be held back."""
        from .snapshot import engine  # here, not at the top: a cold start does not wait for it (options.py)

        opts = Options(content_hash=self.options.content_hash, node_id=self.options.node_id,
                       transfers=self.options.transfers, keep=self.options.keep, pack_size=self.options.pack_size,
                       deadline=deadline, large_file=self.options.large_file)
        sdir = engine.state_path(state_dir)
        with StateLock(sdir):
            prep = engine.prepare(store, self.areas(), self.want(), sdir, opts)
            self.last_result = prep.result
            if hold and prep.carried and prep.name is not None:
                log.warning("fractfs: %s checkpoint not committed: %d files could not be captured this round, "
                            "and the snapshot to compare with is %s's, which this node never restored; "
                            "committing would mix the two nodes' files. Retrying shortly", kind, prep.carried,
                            self._foreign_from)
                return None
            return engine.commit(store, prep, self._fence(store))

    def final_report(self) -> dict[str, Any]:
        """What the last run left out, for ``status()["final_sync"]``: ``complete`` is False when any changed
        file is not in the committed snapshot in its current version (out of time, still busy, refused by the
        store) or nothing was committed; ``missed`` names them all (app paths)."""
        res = self.last_result
        if res is None:
            return {"complete": False, "missed": [], "missed_deadline": [], "skipped_busy": [], "not_stored": {},
                    "unsettled": []}
        report = {
            "missed_deadline": [_app_path(p) for p in res.missed_deadline],
            "skipped_busy": [_app_path(p) for p in res.skipped_busy],
            "not_stored": {_app_path(p): why for p, why in res.rejected.items()},
            "unsettled": [_app_path(p) for p in res.unsettled],
        }
        missed = sorted({*report["missed_deadline"], *report["skipped_busy"], *report["not_stored"]})
        return {"complete": not missed and not self.retry_soon, "missed": missed, **report}

    def _fence(self, store: AbortableStore) -> Callable[[], None]:
        keeper = self.keeper

        def fence() -> None:
            store.check()
            if keeper is not None:
                keeper.fence()

        return fence

    def _check_base(self) -> None:
        """Decide whether the next commit must be held back (see run)."""
        names = catalog.list_names(self.store)
        if names and names[-1].id == self.stats.last_snapshot_id:
            self._foreign_base = False  # the newest is the one this node restored or wrote: no need to load it
            return
        newest, _damaged = catalog.newest_valid(self.store, names)
        self._foreign_base = newest is not None and newest.id != self.stats.last_snapshot_id
        if self._foreign_base and newest is not None:
            self._foreign_from = f"{newest.node} ({(newest.id or '?')[:20]})"


def options_for(config: Config, node_id: str, *, content_hash: Optional[bool] = None) -> Options:
    """The engine options a config asks for (``content_hash`` overrides the config's when given)."""
    return Options(content_hash=config.content_hash if content_hash is None else content_hash, node_id=node_id,
                   transfers=config.transfers, keep=config.keep_snapshots)


@contextlib.contextmanager
def exclusive_lease(store: Store, node_id: str, timeout: float, *, force: bool = False,
                    ) -> Iterator[Optional[LeaseKeeper]]:
    """Hold the checkpoint lease for the duration (renewed by a heartbeat while it lasts), then release it.

    Raises :class:`~fractfs.errors.LeaseHeld` when another node holds it. With ``force`` a held lease is
    ignored and None is yielded: the caller then commits without a lease fence.
    """
    lease = Lease(store, node_id, timeout)
    keeper = LeaseKeeper(lease, where=getattr(store, "url", "the store"))
    try:
        lease.tick()
    except FractfsError:
        if not force:
            raise
    if not lease.held:
        if not force:
            holder = lease.holder.node if lease.holder is not None else "another node"
            raise LeaseHeld(f"{holder} holds the checkpoint lease on {keeper.where} (key {lease.holder_key}): "
                            "it is the node that writes checkpoints to this store; run this there, wait for it "
                            "to stop, or force it")
        log.warning("fractfs: another node holds the checkpoint lease; going ahead because of --force")
        yield None
        return
    try:
        with keeper.beating():
            yield keeper
    finally:
        lease.release()


def one_shot(config: Config, store: Store, want: Want, *, node_id: str, force: bool = False,
             content_hash: Optional[bool] = None) -> CheckpointResult:
    """One checkpoint from outside the app (``fractfs sync``): take the lease exclusively, checkpoint through
    the same prepare -> fence -> commit as the app, release the lease. Raises LeaseHeld (see
    :func:`exclusive_lease`) unless ``force``."""
    from .selection import areas_for
    from .snapshot import engine

    opts = options_for(config, node_id, content_hash=content_hash)
    with exclusive_lease(store, node_id, config.lease_timeout, force=force) as keeper:
        guarded = abortable(store)
        fence: Callable[[], None] = keeper.fence if keeper is not None else engine.no_fence
        sdir = engine.state_path(config.state_dir)
        with StateLock(sdir):
            prep = engine.prepare(guarded, areas_for(config), want, sdir, opts)
            return engine.commit(guarded, prep, fence)


def status_fields(stats: CheckpointStats, iso: Callable[[Optional[float]], Any]) -> dict[str, Any]:
    """The status() keys that describe checkpoints (``iso`` formats a time as status shows it)."""
    return {
        "last_sync_time": stats.last_sync_time,
        "last_sync_time_iso": iso(stats.last_sync_time),
        "last_sync_start": stats.last_sync_start,
        "last_sync_start_iso": iso(stats.last_sync_start),
        "last_sync_duration": stats.last_sync_duration,
        "last_snapshot_id": stats.last_snapshot_id,
        "last_stored_count": len(stats.last_stored),
        "last_uploaded_bytes": stats.uploaded_bytes,
        "last_missed_deadline": stats.missed_deadline[:100],
        # changed files the last checkpoint could not capture (still changing, unreadable); their previous
        # version stays in the snapshot and they are retried at the next one
        "last_skipped_busy": stats.skipped_busy[:100],
        # changed files the store refused (too large for it, or it is full): the last checkpoint committed
        # everything else and kept their previous version (issue 11, point 7)
        "not_stored": [{"path": p, "reason": why} for p, why in list(stats.not_stored.items())[:100]],
        # files that kept changing, stored from two reads that agreed (a whole version, or an append's prefix)
        "last_unsettled": stats.unsettled[:100],
        # files the cold-start restore could not write, still kept in new snapshots (snapshot/unrestored.py)
        "kept_unrestored": stats.kept_unrestored[:100],
        "files": stats.files,
        "bytes": stats.bytes,
        "syncs": stats.syncs,
        "consecutive_failures": stats.consecutive_failures,
        "last_error": stats.last_error,
        "last_error_time": stats.last_error_time,
        "last_error_time_iso": iso(stats.last_error_time),
    }
