"""The running instance behind the public API: config → provision → lease → restore → sync → final checkpoint.

Threads: ``fractfs-sync`` (the daemon: decides when to checkpoint), ``fractfs-lease`` (heartbeat, or waiting to
take the lease), ``fractfs-watch`` (inotify, watch mode only) and, while stopping, ``fractfs-final``. Every
checkpoint runs under ``Runtime.lock``; the final one at SIGTERM must never wait on it longer than its budget,
so a checkpoint that is still running then is *aborted* (its store calls start failing, it never commits) and,
if it does not let go quickly, the final pass runs against a separate stat cache instead.
"""
from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from concurrent.futures import thread as _cf_thread  # imported (and its exit hook registered) before ours
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence, Union

from . import provision as _provision
from .config import Config, load_config
from .daemon import SyncDaemon
from .errors import FractfsError, ProvisionError
from .lease import Lease, LeaseLost
from .localfile import write_replace
from .selection import Selection, areas_for, detect_bundle, save_bundle
from .tiers import Tier, TierResolver

if TYPE_CHECKING:
    from .snapshot.format import Manifest

log = logging.getLogger("fractfs")

_SignalHandler = Union[Callable[[int, Optional[FrameType]], Any], int, None]
STATUS_FILE = "status.json"
#: Below this much time left, the final checkpoint is not even started (only the lease is released).
MIN_FINAL = 0.3
#: A checkpoint held back (see Runtime._run_checkpoint) is retried this soon.
RETRY_SOON = 1.0
#: status()["sync_mode"] with sync_interval = 0: checkpoints only when asked, and the final one.
MANUAL = "manual"


class CheckpointAborted(FractfsError):
    """A checkpoint was cut short because fractfs is stopping; the previous snapshot stays the checkpoint."""


def iso_utc(ts: Optional[float]) -> Optional[str]:
    """A Unix time as ISO 8601 UTC (as status() and the CLI show times), None for None."""
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class _GuardedStore:
    """The store as one checkpoint run sees it.

    Refuses every call once :meth:`abort` is called (so an abandoned checkpoint stops at its next request and
    never commits), and refuses to touch ``snapshots/`` — the commit, and trimming old manifests — unless
    ``may_commit()`` says this node holds a valid lease at that very moment.

    With ``hold=True`` the commit (and the trimming after it) is kept back instead of written, for the caller
    to :meth:`commit_held` or drop once it has seen the checkpoint's result. To the run itself a held
    manifest looks written (``size``/``get`` answer for it), since the engine checks what it committed.
    """

    def __init__(self, inner: Any, may_commit: Callable[[], bool], hold: bool = False):
        self._inner = inner
        self._may_commit = may_commit
        self._aborted = threading.Event()
        self.url: str = inner.url
        self.hold = hold
        self._held_puts: dict[str, tuple[bytes, bool]] = {}
        self._held_deletes: list[str] = []

    def commit_held(self) -> None:
        from .errors import AlreadyExists

        for key, (data, exclusive) in self._held_puts.items():
            self._check(key)
            try:
                self._inner.put(key, data, exclusive=exclusive)
            except AlreadyExists:
                pass  # a manifest's name is its digest: same name, same bytes
        for key in self._held_deletes:
            try:
                self._check(key)
                self._inner.delete(key)
            except Exception as exc:  # noqa: BLE001 - an old manifest left over is trimmed next time
                log.debug("fractfs: could not trim %s: %s", key, exc)
        self._held_puts, self._held_deletes = {}, []

    def abort(self) -> None:
        self._aborted.set()

    def _check(self, key: Optional[str] = None) -> None:
        if self._aborted.is_set():
            raise CheckpointAborted("checkpoint aborted: fractfs is stopping")
        if key is not None and key.startswith("snapshots/") and not self._may_commit():
            raise LeaseLost(f"not committing {key}: this node does not hold a valid checkpoint lease")

    def put(self, key: str, data: bytes, *, exclusive: bool = False) -> None:
        self._check(key)
        if self.hold and key.startswith("snapshots/"):
            self._held_puts[key] = (data, exclusive)
            return
        self._inner.put(key, data, exclusive=exclusive)

    def put_file(self, key: str, path: Path) -> None:
        self._check(key)
        self._inner.put_file(key, path)

    def get(self, key: str) -> bytes:
        self._check()
        if key in self._held_puts:
            return self._held_puts[key][0]
        data: bytes = self._inner.get(key)
        return data

    def get_range(self, key: str, start: int, length: int) -> bytes:
        self._check()
        data: bytes = self._inner.get_range(key, start, length)
        return data

    def get_file(self, key: str, path: Path) -> None:
        self._check()
        self._inner.get_file(key, path)

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        self._check()
        items: Iterator[tuple[str, int]] = iter(self._inner.list(prefix))
        return items

    def size(self, key: str) -> Optional[int]:
        self._check()
        if key in self._held_puts:
            return len(self._held_puts[key][0])
        n: Optional[int] = self._inner.size(key)
        return n

    def delete(self, key: str) -> None:
        self._check(key)
        if self.hold and key.startswith("snapshots/"):
            if self._held_puts.pop(key, None) is None:
                self._held_deletes.append(key)
            return
        self._inner.delete(key)

    def __getattr__(self, name: str) -> Any:
        # Batch calls are only offered when the inner store has them (see _GuardedBatchStore): callers probe
        # for them with getattr, and a delegated put_many would bypass the checks above.
        if name in ("put_many", "get_many") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._inner, name)


class _GuardedBatchStore(_GuardedStore):
    def put_many(self, items: Sequence[tuple[str, bytes]], *, workers: int = 32) -> None:
        for key, _data in items:
            self._check(key)
        self._inner.put_many(items, workers=workers)

    def get_many(self, keys: Sequence[str], *, workers: int = 32) -> list[bytes]:
        self._check()
        data: list[bytes] = self._inner.get_many(keys, workers=workers)
        return data


def _guard(store: Any, may_commit: Callable[[], bool], hold: bool = False) -> _GuardedStore:
    if callable(getattr(store, "put_many", None)) and callable(getattr(store, "get_many", None)):
        return _GuardedBatchStore(store, may_commit, hold)
    return _GuardedStore(store, may_commit, hold)


class Runtime:
    def __init__(self, config: Config):
        self.config = config
        self.resolver = TierResolver(config)
        self.node_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.store: Any = None
        self.report: Optional[_provision.ProvisionReport] = None
        self.bundle: set[str] = set()
        self.warnings: list[str] = list(config.warnings)
        self.daemon: Optional[SyncDaemon] = None
        self.lease: Optional[Lease] = None
        self.watcher: Any = None  # fractfs.watch.TreeWatcher in watch mode
        # effective mode: watch falls back to interval where unavailable; MANUAL when sync_interval is 0
        self.sync_mode = config.sync_mode
        self._final_at_exit = False  # start_daemon: the exit hook runs a final checkpoint
        self.lock = threading.Lock()  # one checkpoint at a time
        self._lock_owner: Optional[int] = None
        self._guards: set[_GuardedStore] = set()
        self.last_sync_time: Optional[float] = None
        self.last_sync_start: Optional[float] = None
        self.last_sync_duration: Optional[float] = None
        self.last_snapshot_id: Optional[str] = None
        self.last_stored: list[str] = []
        self.last_files = 0
        self.last_bytes = 0
        self.last_uploaded_bytes = 0
        self.last_missed_deadline: list[str] = []
        self.last_skipped_busy: list[str] = []
        self.last_kept_unrestored: list[str] = []
        self.syncs = 0
        self.consecutive_failures = 0
        self.last_error: Optional[str] = None
        self.last_error_time: Optional[float] = None
        self.final_sync: Optional[dict[str, Any]] = None
        self.restore_info: dict[str, Any] = {}
        self.closed = False
        self._prev_handlers: dict[int, _SignalHandler] = {}
        self._exit_hook_registered = False
        self._in_signal = False
        self._signal_time: Optional[float] = None
        self._stop_lock = threading.Lock()
        self._stop_state = 0  # 0 running, 1 stopping, 2 stopped
        self._stop_owner: Optional[int] = None
        self._stopped = threading.Event()
        self._lease_stop = threading.Event()
        self._lease_thread: Optional[threading.Thread] = None
        self._lease_failing = False
        self._standby_logged: Optional[str] = None
        # After taking the lease: is the store's newest snapshot one this node's tree does not descend from?
        # None = not checked yet. See _run_checkpoint.
        self._foreign_base: Optional[bool] = False
        self._foreign_from = ""
        self._retry_soon = False

    # -- start-up --------------------------------------------------------------------------------------
    def start(self, *, force: bool, restore: bool, start_daemon: bool) -> None:
        cfg = self.config
        if cfg.passthrough:
            log.info("fractfs: no volume configured (set fractfs_VOLUME_ROOT or volume_root): passthrough "
                     "mode, nothing is provisioned or checkpointed; root %s", cfg.root)
            return
        from .stores import open_store

        if cfg.is_posix_store and cfg.volume_root is not None:
            # An unmounted Volume looks like an empty directory (or none at all): restoring from it would
            # find nothing and checkpoints would fill node-local disk while claiming durability. Refuse.
            vol = Path(cfg.volume_root)
            if not vol.is_dir():
                raise ProvisionError(
                    f"Volume root {vol} ({cfg.sources.get('volume_root', 'volume_root')}) does not exist or is "
                    "not a directory; mount the Volume there or fix fractfs_VOLUME_ROOT. fractfs does not "
                    "create it, so an unmounted Volume never silently becomes local disk"
                )
        if cfg.dirs:
            self.report = _provision.provision(cfg, self.resolver, force=force)
            self.warnings.extend(self.report.warnings)
        self.store = open_store(cfg.checkpoint_location or "", backend=cfg.backend, fast_path=cfg.s3_fast_path)
        from .snapshot import catalog

        # Take the lease (or learn who has it) before restoring: a node that holds it knows nobody else is
        # committing while it reads. A node that does not hold it still restores (reading is always safe:
        # a restore uses exactly one manifest, whole) but will not write.
        self.lease = Lease(self.store, self.node_id, cfg.lease_timeout)
        if start_daemon:
            self._lease_tick()
        try:
            try:
                # loaded once for both uses: decoding a 100 000-file manifest takes over a second
                newest, damaged = catalog.newest_valid(self.store)
            except FractfsError as exc:
                self._record_error(exc)
                raise
            if cfg.auto_ignore_bundle:
                known = {rel for area, rel in newest.paths() if area == "root"} if newest else set()
                self.bundle = detect_bundle(cfg, self.resolver, known)
            save_bundle(cfg, self.bundle)
            if restore:
                self.restore_info = self._restore(newest, damaged)
        except BaseException:
            self._release_quietly()  # init failed: don't leave others waiting for our heartbeat to stop
            raise
        if start_daemon:
            self._final_at_exit = True
            if cfg.sync_interval > 0:
                self.daemon = SyncDaemon(self._daemon_tick, cfg.sync_interval)
                self.daemon.start()
                if self.sync_mode == "watch":
                    self._start_watch()
            else:
                # 0 asks for no background checkpoints at all: neither the timer nor the watcher's
                # change-driven ones. The lease heartbeat and the final checkpoint at SIGTERM/exit stay.
                self.sync_mode = MANUAL
                log.info("fractfs: sync_interval = 0 (%s): no background checkpoints; only sync_now(), "
                         "`fractfs sync` and the final checkpoint at exit", cfg.sources.get("sync_interval"))
            self._lease_thread = threading.Thread(target=self._lease_loop, args=(self._lease_stop,),
                                                  name="fractfs-lease", daemon=True)
            self._lease_thread.start()
            self._install_exit_hooks()
        self._persist_status()
        log.info("fractfs: ready (root %s, store %s, %s sync, %d bundle files ignored%s)",
                 cfg.root, cfg.checkpoint_location, self.sync_mode, len(self.bundle),
                 "" if not start_daemon or self.lease.held else ", read-only: another node holds the lease")

    def _start_watch(self) -> None:
        from . import watch

        why = watch.available()
        watcher: Optional[watch.TreeWatcher] = None
        if why is None:
            assert self.daemon is not None
            watcher = watch.TreeWatcher(areas_for(self.config), self.selection(), self.daemon.notify_change)
            try:
                watcher.start()
            except (watch.WatchUnavailable, OSError) as exc:
                watcher.stop()
                watcher, why = None, str(exc)
        if watcher is None:
            msg = (f"sync_mode = 'watch' is not available here ({why}); falling back to interval checkpoints "
                   f"every {self.config.sync_interval:g}s")
            log.warning("fractfs: %s", msg)
            self.warnings.append(msg)
            self.sync_mode = "interval"
            return
        self.watcher = watcher

    def _restore(self, newest: Optional[Manifest], damaged: list[str]) -> dict[str, Any]:
        """Restore ``newest`` (as start() found it), or report why there is nothing to restore."""
        from . import snapshot

        started = time.monotonic()
        res = snapshot.restore(self.store, areas_for(self.config), transfers=self.config.transfers,
                               state_dir=self.config.state_dir, manifest=newest)
        if newest is not None:
            res.fell_back_from = list(damaged)
        info = {
            "snapshot_id": res.snapshot_id,
            "restored": len(res.restored),
            "skipped_existing": len(res.skipped_existing),
            "refused": list(res.refused),
            "errors": list(res.errors),
            "fell_back_from": list(res.fell_back_from),
            "duration": round(time.monotonic() - started, 3),
        }
        for msg in [*res.refused, *res.errors]:
            self.warnings.append(f"restore: {msg}")
        for sid in res.fell_back_from:
            self.warnings.append(f"restore: snapshot {sid} could not be used (damaged, or written by a newer "
                                 "fractfs: the log says which); restored the previous valid one")
        if res.snapshot_id:
            self.last_snapshot_id = res.snapshot_id
            log.info("fractfs: restored %d files from snapshot %s in %.2fs (%d already present)",
                     len(res.restored), res.snapshot_id, info["duration"], len(res.skipped_existing))
        return info

    # -- the lease -------------------------------------------------------------------------------------
    def _lease_loop(self, stop: threading.Event) -> None:
        """Heartbeat until ``stop`` is set: the node's lease thread, or one sync_now() without the daemon."""
        assert self.lease is not None
        while not stop.wait(self.lease.beat_period):
            self._lease_tick()

    def _lease_tick(self) -> bool:
        """Renew or try to take the lease; logs transitions. Never raises."""
        lease = self.lease
        if lease is None:
            return True
        was = lease.held
        try:
            lease.tick()
        except Exception as exc:  # noqa: BLE001 - a store hiccup must not stop the heartbeat thread
            if not self._lease_failing:
                log.warning("fractfs: checkpoint lease: %s: %s (retrying every %.1fs)",
                            type(exc).__name__, exc, lease.beat_period)
            self._lease_failing = True
            return lease.valid()
        if self._lease_failing:
            log.info("fractfs: checkpoint lease: store reachable again")
            self._lease_failing = False
        if lease.held and not was:
            self._standby_logged = None
            self._on_lease_acquired()
        elif not lease.held:
            holder = lease.holder.node if lease.holder is not None and not lease.holder.released else None
            if holder is not None and holder != self._standby_logged:
                self._standby_logged = holder
                log.warning("fractfs: %s", self._standby_message())
            if was:
                self._persist_status()
        return lease.valid()

    def _standby_message(self) -> str:
        lease = self.lease
        holder = lease.holder.node if lease is not None and lease.holder is not None else "another node"
        timeout = self.config.lease_timeout
        return (f"checkpoints are paused on this node: {holder} holds the checkpoint lease on "
                f"{self.config.checkpoint_location}. This node restored read-only and writes no snapshots; it "
                f"takes over when that node releases the lease or sends no heartbeat for {timeout:g}s")

    def _on_lease_acquired(self) -> None:
        self._foreign_base = None  # look at the store's newest snapshot before the next commit
        if not self._exit_hook_registered:
            self._register_exit_hook()  # start_daemon=False: at least give the lease back at exit
        if self.daemon is not None and self.daemon.running:
            # This node's tree is now what the next snapshot holds: save it now rather than at the next tick.
            self.daemon.poke()
        if self.lease is not None and self.lease.takeovers:
            self._warn_superseded()
        self._persist_status()

    def _warn_superseded(self) -> None:
        from . import snapshot

        restored = self.restore_info.get("snapshot_id")
        try:
            newest = [s for s in snapshot.list_snapshots(self.store) if s.valid]
        except FractfsError:
            return
        if newest and newest[-1].id != restored and newest[-1].node != self.node_id:
            log.warning("fractfs: snapshot %s was written by %s after this node restored %s; this node's own "
                        "state will be checkpointed over it (nothing is merged)",
                        newest[-1].id[:20], newest[-1].node, restored)

    def _may_commit(self) -> bool:
        return self.lease is None or self.lease.valid()

    def _writer_ok(self, eager: bool) -> bool:
        """True when this node may write a checkpoint now. Raises when the lease cannot be confirmed.

        ``eager`` (sync_now, the final checkpoint) asks the store right away; the daemon leaves taking the
        lease to the heartbeat thread, which polls anyway.
        """
        lease = self.lease
        if lease is None or lease.valid():
            return True
        if eager or self._lease_thread is None or lease.held:
            self._lease_tick()
        if lease.valid():
            return True
        if lease.held or self._lease_failing:
            raise FractfsError("cannot confirm the checkpoint lease: "
                               + (lease.last_error or "its renewal is overdue"))
        return False

    # -- checkpoints -----------------------------------------------------------------------------------
    def selection(self) -> Selection:
        return Selection(self.config, self.resolver, self.bundle)

    def _acquire(self, timeout: Optional[float]) -> bool:
        got = self.lock.acquire() if timeout is None else self.lock.acquire(timeout=max(0.0, timeout))
        if got:
            self._lock_owner = threading.get_ident()
        return got

    def _release(self) -> None:
        self._lock_owner = None
        self.lock.release()

    def checkpoint(self, deadline: Optional[float] = None) -> list[str]:
        """One checkpoint now (sync_now). [] when passthrough or when another node holds the lease."""
        return self._checkpoint(deadline, eager=True)

    def _checkpoint(self, deadline: Optional[float], *, eager: bool) -> list[str]:
        if self.config.passthrough:
            return []
        try:
            writer = self._writer_ok(eager)
        except FractfsError as exc:
            self._sync_failed(exc)
            raise
        if not writer:
            if eager:
                log.warning("fractfs: sync_now() stored nothing: %s", self._standby_message())
            return []
        self._acquire(None)
        try:
            if self.closed and not eager:
                return []  # the daemon lost the race with shutdown(); the final checkpoint covers it
            with self._heartbeat():
                return self._run_checkpoint(deadline, self.config.state_dir)
        finally:
            self._release()

    @contextlib.contextmanager
    def _heartbeat(self) -> Iterator[None]:
        """Keep the lease renewed while a checkpoint runs when no lease thread does (``start_daemon=False``):
        otherwise a sync_now() longer than half the lease timeout would lose the lease at its commit."""
        lease = self.lease
        if self._lease_thread is not None or lease is None or not lease.held:
            yield
            return
        stop = threading.Event()
        t = threading.Thread(target=self._lease_loop, args=(stop,), name="fractfs-lease-sync", daemon=True)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join(lease.beat_period + 5)

    def _check_base(self) -> None:
        """Decide whether the next commit must be held back (see _run_checkpoint)."""
        from .snapshot import catalog

        names = catalog.list_names(self.store)
        if names and names[-1].id == self.last_snapshot_id:
            self._foreign_base = False  # the newest is the one this node restored or wrote: no need to load it
            return
        newest, _damaged = catalog.newest_valid(self.store, names)
        self._foreign_base = newest is not None and newest.id != self.last_snapshot_id
        if self._foreign_base and newest is not None:
            self._foreign_from = f"{newest.node} ({(newest.id or '?')[:20]})"

    def _run_checkpoint(self, deadline: Optional[float], state_dir: Path, kind: str = "sync") -> list[str]:
        from . import snapshot

        start = time.time()
        self.last_sync_start = start
        self._retry_soon = False
        if self._foreign_base is None:
            try:
                self._check_base()
            except Exception as exc:
                self._sync_failed(exc)
                raise
        # The engine compares with the store's newest snapshot, and a file it cannot capture this round (busy,
        # unreadable, out of time) keeps that snapshot's entry. When that snapshot was written by another node
        # after this node's tree was restored, that would put the other node's version of the file into ours:
        # two nodes' state in one snapshot. So until this node has committed one snapshot of its own, a commit
        # is held back and only written if nothing had to be carried over.
        hold = bool(self._foreign_base)
        guard = _guard(self.store, self._may_commit, hold)
        self._guards.add(guard)
        try:
            res = snapshot.checkpoint(
                guard, areas_for(self.config), self.selection(),
                state_dir=state_dir, content_hash=self.config.content_hash,
                node_id=self.node_id, transfers=self.config.transfers,
                keep=self.config.keep_snapshots, deadline=deadline,
            )
        except CheckpointAborted:
            log.info("fractfs: %s checkpoint aborted for the final one", kind)
            raise
        except Exception as exc:
            self._sync_failed(exc)
            self._persist_status()
            raise
        finally:
            self._guards.discard(guard)
        if hold:
            carried = len(res.skipped_busy) + len(res.missed_deadline)
            if carried:
                if not res.snapshot_id:  # nothing new next to what was carried: nothing to hold back
                    self._retry_soon = True
                    self.last_stored = []
                    return []
                log.warning("fractfs: %s checkpoint not committed: %d files could not be captured this round, "
                            "and the snapshot to compare with is %s's, which this node never restored; "
                            "committing would mix the two nodes' files. Retrying shortly", kind, carried,
                            self._foreign_from)
                self._retry_soon = True
                self.last_sync_duration = round(time.time() - start, 3)
                self.last_stored = []
                self._persist_status()
                return []
            try:
                guard.commit_held()
            except Exception as exc:
                self._sync_failed(exc)
                raise
            self._foreign_base = False
        self.last_sync_time = time.time()
        self.last_sync_duration = round(self.last_sync_time - start, 3)
        if res.snapshot_id:
            self.last_snapshot_id = res.snapshot_id
        # the engine names paths "area:relpath"; both areas hold app-relative paths
        self.last_stored = [p.split(":", 1)[1] if ":" in p else p for p in res.stored]
        self.last_files = res.files
        self.last_bytes = res.bytes
        self.last_uploaded_bytes = res.uploaded_bytes
        self.last_missed_deadline = list(res.missed_deadline)
        self.last_skipped_busy = list(res.skipped_busy)
        self.last_kept_unrestored = [p.split(":", 1)[1] for p in res.kept_unrestored]
        self.syncs += 1
        self.consecutive_failures = 0
        self._persist_status()
        return list(self.last_stored)

    def _sync_failed(self, exc: BaseException) -> None:
        self.consecutive_failures += 1
        self._record_error(exc)

    def _record_error(self, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.last_error_time = time.time()

    def _daemon_tick(self) -> Optional[float]:
        """One background checkpoint; returns a delay when the next one should come sooner than usual."""
        if self.closed:
            return None
        try:
            self._checkpoint(None, eager=False)
        except FractfsError:
            if self.closed:  # cut short by the final checkpoint: not a failure worth a retry or a warning
                log.info("fractfs: background checkpoint stopped for the final one")
                return None
            raise
        return RETRY_SOON if self._retry_soon else None

    # -- bounded checkpoints (SIGTERM, exit) -------------------------------------------------------------
    def _budget_end(self, anchor: Optional[float]) -> float:
        """Monotonic time by which all of our stopping work must be done.

        Counted from the signal when there was one recently (the platform's clock started then), keeping a
        margin of the grace for the interpreter to exit.
        """
        grace = self.config.grace
        now = time.monotonic()
        start = anchor if anchor is not None and now < anchor + grace else now
        return start + grace - min(1.0, 0.1 * grace)

    def _bounded_checkpoint(self, end: float, kind: str) -> dict[str, Any]:
        """A checkpoint that is over by ``end`` (monotonic) whatever happens: run in a helper thread and
        abandoned (fenced: it can no longer commit) if the store is too slow even for the deadline logic."""
        caller = threading.get_ident()
        out: dict[str, Any] = {"kind": kind, "ok": False, "started": time.time()}
        t0 = time.monotonic()

        def work() -> None:
            try:
                out.update(self._final_pass(end, caller, kind))
            except Exception as exc:  # noqa: BLE001 - reported in status and the log, never raised here
                out["error"] = f"{type(exc).__name__}: {exc}"
                log.error("fractfs: %s checkpoint failed: %s", kind, out["error"])

        helper = threading.Thread(target=work, name="fractfs-final", daemon=True)
        helper.start()
        helper.join(max(0.0, end - time.monotonic()))
        if helper.is_alive():
            for g in list(self._guards):
                g.abort()
            out["error"] = "did not finish within the grace budget; the previous snapshot stays the checkpoint"
            log.error("fractfs: %s checkpoint %s", kind, out["error"])
        out["duration"] = round(time.monotonic() - t0, 3)
        self.final_sync = out
        return out

    def _final_pass(self, end: float, caller: int, kind: str) -> dict[str, Any]:
        if not self._writer_ok(True):
            return {"skipped": "this node does not hold the checkpoint lease"}
        deadline = end - 0.15  # the engine's own deadline, a little inside ours
        owner = self._lock_owner
        # A checkpoint already running has most of the recent changes: let it finish if it can do so within
        # half the budget. The caller's own thread cannot finish anything while it is in here (a signal
        # arrived during its sync_now), so don't wait for that one.
        wait = 0.0 if owner is not None and owner == caller else max(0.0, (deadline - time.monotonic()) / 2)
        got = self._acquire(wait)
        if not got:
            for g in list(self._guards):
                g.abort()
            log.info("fractfs: %s checkpoint: aborted the checkpoint still running", kind)
            if owner != caller:
                got = self._acquire(min(1.0, max(0.0, (deadline - time.monotonic()) / 4)))
        path = "normal"
        try:
            if got:
                stored = self._run_checkpoint(deadline, self.config.state_dir, kind)
            else:
                # The aborted run still holds the stat cache's lock. Its guard refuses everything now, so it
                # cannot commit; a pass with a separate cache is safe (it compares against the newest valid
                # snapshot and stores the most recently modified files first).
                path = "separate-cache"
                stored = self._run_checkpoint(deadline, self.config.state_dir / "final", kind)
        finally:
            if got:
                self._release()
        return {"ok": not self._retry_soon, "path": path, "stored": len(stored), "held_back": self._retry_soon,
                "snapshot_id": self.last_snapshot_id, "missed_deadline": list(self.last_missed_deadline)}

    # -- stopping --------------------------------------------------------------------------------------
    def shutdown(self, final_sync: bool = True, *, anchor: Optional[float] = None) -> None:
        """Final checkpoint (bounded by ``grace``), release the lease, stop the threads. Idempotent; a second
        caller on another thread waits for the first to finish."""
        me = threading.get_ident()
        with self._stop_lock:
            if self._stop_state == 2:
                return
            if self._stop_state == 1:
                if self._stop_owner == me:
                    return  # re-entered from a signal handler interrupting our own shutdown
                waiter = True
            else:
                self._stop_state, self._stop_owner, waiter = 1, me, False
                self.closed = True
        if waiter:
            self._stopped.wait(self.config.grace + 1.0)
            return
        try:
            self._do_shutdown(final_sync, anchor)
        finally:
            with self._stop_lock:
                self._stop_state = 2
            self._stopped.set()

    def _do_shutdown(self, final_sync: bool, anchor: Optional[float]) -> None:
        end = self._budget_end(anchor)
        reserve = min(0.5, 0.1 * self.config.grace)  # for releasing the lease
        if self.watcher is not None:
            self.watcher.stop(timeout=0.2)
        if self.daemon is not None:
            self.daemon.stop(timeout=None)
        # the heartbeat keeps running through the final checkpoint: its commit needs a valid lease
        if final_sync and not self.config.passthrough and self.store is not None:
            if end - reserve - time.monotonic() > MIN_FINAL:
                self._bounded_checkpoint(end - reserve, "final")
            else:
                self.final_sync = {"kind": "final", "ok": False, "error": "no time left in the grace budget"}
                log.warning("fractfs: no time left for a final checkpoint")
        self._lease_stop.set()
        self._release_lease(end)
        self._restore_handlers()
        self._persist_status()

    def _release_lease(self, end: float) -> None:
        lease = self.lease
        if lease is None or not lease.held:
            return
        helper = threading.Thread(target=self._release_quietly, name="fractfs-release", daemon=True)
        helper.start()
        helper.join(max(0.05, end - time.monotonic()))

    def _release_quietly(self) -> None:
        if self.lease is not None:
            try:
                self.lease.release()
            except Exception as exc:  # noqa: BLE001 - the lease then simply goes stale
                log.warning("fractfs: could not release the checkpoint lease: %s", exc)

    def _register_exit_hook(self) -> None:
        if not self._exit_hook_registered:
            # At interpreter exit, concurrent.futures refuses new work before plain atexit hooks run, and the
            # checkpoint uploads through a thread pool. threading's own exit hooks run earlier (right after
            # the main thread ends, before non-daemon threads are joined), so the final checkpoint goes there.
            register = getattr(threading, "_register_atexit", None)
            try:
                if register is None:
                    raise RuntimeError("no threading._register_atexit")
                register(self._at_exit)
            except RuntimeError:
                atexit.register(self._at_exit)
            self._exit_hook_registered = True

    def _install_exit_hooks(self) -> None:
        self._register_exit_hook()
        if threading.current_thread() is not threading.main_thread():
            log.info("fractfs: init() ran outside the main thread; SIGTERM is covered by the exit hook only")
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._prev_handlers[sig] = signal.getsignal(sig)
                signal.signal(sig, self._on_signal)
            except (ValueError, OSError) as exc:
                log.debug("cannot install handler for %s: %s", sig, exc)

    def _restore_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, prev in self._prev_handlers.items():
            try:
                if signal.getsignal(sig) == self._on_signal:
                    signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
            except (ValueError, OSError, TypeError):
                pass
        self._prev_handlers = {}

    def _at_exit(self) -> None:
        if self.closed:
            return
        _join_app_threads()
        # without the daemon (start_daemon=False) the app checkpoints by hand; exit only gives the lease back
        self.shutdown(final_sync=self._final_at_exit, anchor=self._signal_time)

    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        prev = self._prev_handlers.get(signum, signal.SIG_DFL)
        if self._in_signal:
            log.info("fractfs: signal %d while handling another; ignored until the checkpoint is done", signum)
            return
        self._in_signal = True
        if self._signal_time is None:
            self._signal_time = time.monotonic()
        try:
            if prev in (signal.SIG_DFL, None):
                # The process is about to die: everything, including releasing the lease, happens now.
                log.info("fractfs: signal %d: final checkpoint (grace %gs)", signum, self.config.grace)
                self.shutdown(final_sync=True, anchor=self._signal_time)
            elif not self.closed:
                # The app's handler (or SIG_IGN) decides whether the process ends. Save now, keep running: if
                # it exits, the exit hook finishes the job within what is left of the grace.
                log.info("fractfs: signal %d: checkpoint before the app's handler (grace %gs)", signum,
                         self.config.grace)
                self._bounded_checkpoint(self._budget_end(self._signal_time), "signal")
        finally:
            self._in_signal = False
        # chain to what was installed before us, so the app's own handler and exit code are unchanged
        if callable(prev):
            prev(signum, frame)
        elif prev == signal.SIG_IGN:
            return
        else:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    # -- reporting -------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        cfg = self.config
        dirs: dict[str, Any] = {}
        for d in cfg.dirs:
            local = cfg.root / d
            target = (cfg.dirs_root / d) if cfg.dirs_root else None
            dirs[d] = {
                "tier": Tier.DIRS.value,
                "local_path": str(local),
                "target": str(target) if target else None,
                "linked": local.is_symlink() and target is not None
                and os.readlink(local) == str(target),
            }
        report = self.report.as_dict() if self.report is not None else None
        lease = self.lease.describe() if self.lease is not None else None
        writer = bool(lease and lease["held"]) if not cfg.passthrough else False
        warnings = list(self.warnings)
        if lease is not None and lease["state"] == "standby" and not self.closed:
            warnings.append(self._standby_message())
        return {
            "initialized": True,
            **cfg.summary(),
            # the mode in use: watch falls back to interval without inotify; "manual" when sync_interval is 0
            "sync_mode": self.sync_mode,
            "sync_mode_configured": cfg.sync_mode,
            "daemon_running": bool(self.daemon and self.daemon.running),
            "sync_running": self.lock.locked(),
            "node_id": self.node_id,
            "pid": os.getpid(),
            "writer": writer,
            "lease_holder": lease["holder"] if lease else None,
            "lease": lease,
            "last_sync_time": self.last_sync_time,
            "last_sync_time_iso": iso_utc(self.last_sync_time),
            "last_sync_start": self.last_sync_start,
            "last_sync_start_iso": iso_utc(self.last_sync_start),
            "last_sync_duration": self.last_sync_duration,
            "last_snapshot_id": self.last_snapshot_id,
            "last_stored_count": len(self.last_stored),
            "last_uploaded_bytes": self.last_uploaded_bytes,
            "last_missed_deadline": self.last_missed_deadline[:100],
            # changed files the last checkpoint could not capture (still changing, unreadable); their previous
            # version stays in the snapshot and they are retried at the next one
            "last_skipped_busy": self.last_skipped_busy[:100],
            # files the cold-start restore could not write, still kept in new snapshots (snapshot/unrestored.py)
            "kept_unrestored": self.last_kept_unrestored[:100],
            "files": self.last_files,
            "bytes": self.last_bytes,
            "syncs": self.syncs,
            "consecutive_failures": self.consecutive_failures,
            "last_error": self.last_error,
            "last_error_time": self.last_error_time,
            "last_error_time_iso": iso_utc(self.last_error_time),
            "final_sync": self.final_sync,
            "watch": self.watcher.describe() if self.watcher is not None else None,
            "bundle_file_count": len(self.bundle),
            "dirs": dirs,
            "provision": report,
            "restore": self.restore_info,
            "warnings": warnings,
        }

    def _persist_status(self) -> None:
        """status() as JSON in the state dir, for the `fractfs` command running in another process."""
        if self.config.passthrough:
            return
        try:
            st = self.status()
            st["initialized"] = not self.closed
            st["written_at"] = time.time()
            sdir = self.config.state_dir
            sdir.mkdir(parents=True, exist_ok=True)
            write_replace(sdir / STATUS_FILE, json.dumps(st, default=str).encode())
        except (OSError, TypeError, ValueError) as exc:
            log.debug("fractfs: could not write %s: %s", STATUS_FILE, exc)


def _join_app_threads() -> None:
    """Wait for the app's own non-daemon threads, as the interpreter is about to.

    Our exit hook runs before the interpreter joins them (it has to, see _register_exit_hook), but an app
    whose main thread has returned may still be writing from one: its final state comes after they end.
    Thread-pool workers are left out: they only stop once the pools are shut down, after these hooks.
    """
    workers = set(getattr(_cf_thread, "_threads_queues", {}).keys())
    me = threading.current_thread()
    for t in threading.enumerate():
        if t is me or t.daemon or t in workers or t is threading.main_thread():
            continue
        t.join()


def relpath_for(config: Config, path: Union[str, "os.PathLike[str]"]) -> str:
    """App-relative POSIX path for ``path`` (absolute under the root or scratch, or relative to the root)."""
    p = Path(os.fspath(path))
    if not p.is_absolute():
        rel = os.path.normpath(p.as_posix())
        if rel == ".":
            return ""
        if rel == ".." or rel.startswith("../"):
            raise FractfsError(f"{path}: outside the app root {config.root}")
        return Path(rel).as_posix()
    absp = Path(os.path.abspath(p))
    for base in (config.root, config.scratch):
        if absp == base:
            return ""
        if base in absp.parents:
            return absp.relative_to(base).as_posix()
    if config.dirs_root is not None:
        for d in config.dirs:
            try:
                rest = absp.relative_to(config.dirs_root / d)
            except ValueError:
                continue
            return (Path(d) / rest).as_posix()
    raise FractfsError(f"{path}: outside the app root {config.root}")


def load(root: Optional[Union[str, "os.PathLike[str]"]]) -> Config:
    return load_config(Path(os.fspath(root)) if root is not None else None)
