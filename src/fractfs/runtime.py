"""The running instance behind the public API: config → provision → lease → restore → sync → final checkpoint.

Threads: ``fractfs-sync`` (the daemon: decides when to checkpoint), ``fractfs-lease`` (the LeaseKeeper's
heartbeat, or waiting to take the lease), ``fractfs-watch`` (inotify, watch mode only) and, while stopping,
``fractfs-final``. Every checkpoint goes through the one :class:`~fractfs.checkpointer.Checkpointer` and runs
under its lock; the final one at SIGTERM must never wait on it longer than its budget, so a checkpoint that is
still running then is *aborted* (its store calls start failing, it never commits) and, if it does not let go
quickly, the final pass runs against a separate stat cache instead.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
import weakref
from concurrent.futures import thread as _cf_thread  # imported (and its exit hook registered) before ours
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from . import provision as _provision
from .budget import Budget
from .checkpointer import Checkpointer, CheckpointStats, options_for, status_fields
from .config import Config, load_config
from .config import relpath_for as relpath_for  # re-exported: it lived here before
from .daemon import SyncDaemon
from .errors import CheckpointAborted as CheckpointAborted  # re-exported: older callers import it from here
from .errors import FractfsError, ProvisionError, StoreError, VolumeChanged, VolumeNotMounted
from .health import VOLUME_CHANGED, VOLUME_MISSING, assess
from .lease import Lease, LeaseKeeper
from .localfile import private_dir, write_replace
from .nodelock import NodeLock, holder_pid
from .ownership import ensure_private_dir
from .redact import redact_value
from .report import STATUS_FILE, iso_utc
from .selection import Selection, areas_for, detect_bundle, load_bundle, save_bundle
from .snapshot import gcpause
from .tiers import Tier, TierResolver

if TYPE_CHECKING:
    from .snapshot.format import Manifest

log = logging.getLogger("fractfs")

_SignalHandler = Union[Callable[[int, Optional[FrameType]], Any], int, None]
#: Below this much time left, the final checkpoint is not even started (only the lease is released).
MIN_FINAL = 0.3
#: A checkpoint held back (see Checkpointer.run) is retried this soon.
RETRY_SOON = 1.0
#: status()["sync_mode"] with sync_interval = 0: checkpoints only when asked, and the final one.
MANUAL = "manual"
#: While the Volume is missing, the daemon looks for it again this often (seconds).
VOLUME_RETRY = 2.0
#: A standby process polls the node's writer lock this often (seconds).
STANDBY_POLL = 0.25
#: status()["process_role"]: this process writes checkpoints for the root / waits to / is a fork() child.
WRITER, STANDBY, FORKED = "writer", "standby", "forked-child"

#: Every live Runtime, so a fork() child can disown the parent's writer rights (see _after_fork_in_child).
_live: weakref.WeakSet[Runtime] = weakref.WeakSet()




def _import_engine() -> None:
    from .snapshot import engine  # noqa: F401 - imported for later (see _start_writer)


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
        self.keeper: Optional[LeaseKeeper] = None
        self.checkpointer: Optional[Checkpointer] = None
        self.stats = CheckpointStats()
        #: paces the background checkpoints (cpu_budget, upload_budget); None in passthrough mode
        self.budget = None if config.passthrough else Budget(config.cpu_budget, config.upload_budget)
        self.watcher: Any = None  # fractfs.watch.TreeWatcher in watch mode
        # effective mode: watch falls back to interval where unavailable; MANUAL when sync_interval is 0
        self.sync_mode = config.sync_mode
        self._final_at_exit = False  # start_daemon: the exit hook runs a final checkpoint
        self.final_sync: Optional[dict[str, Any]] = None
        self.restore_info: dict[str, Any] = {}
        #: Set while init() has the lease but has not yet loaded the store's newest snapshot: a takeover then
        #: leaves the "superseded?" check to _start_writer, which loads that snapshot anyway (see
        #: _warn_superseded).
        self._newest_pending = False
        self._superseded_check = False
        #: The restore's stat-cache writer, still running after init() returned (see snapshot.restore).
        self._seeding: Optional[threading.Thread] = None
        self.closed = False
        self._prev_handlers: dict[int, _SignalHandler] = {}
        self._exit_hook_registered = False
        self._in_signal = False
        self._signal_time: Optional[float] = None
        self._stop_lock = threading.Lock()
        self._stop_state = 0  # 0 running, 1 stopping, 2 stopped
        self._stop_owner: Optional[int] = None
        self._stopped = threading.Event()
        #: WRITER, STANDBY (another process on this node writes for the root) or FORKED (see _forked)
        self.role = WRITER
        self.nodelock: Optional[NodeLock] = None
        self.volume: Any = None  # the stores.volume.VolumeGuard in front of a mounted Volume, if any
        self._volume_problem: Optional[tuple[str, str]] = None
        self._lease_lost: Optional[str] = None
        self._start_daemon = False
        self._importing: Optional[threading.Thread] = None  # see _start_writer and _before_fork
        _live.add(self)

    # -- start-up --------------------------------------------------------------------------------------
    def start(self, *, force: bool, restore: bool, start_daemon: bool) -> None:
        cfg = self.config
        if cfg.passthrough:
            log.info("fractfs: no volume configured (set fractfs_VOLUME_ROOT or volume_root): passthrough "
                     "mode, nothing is provisioned or checkpointed; root %s", cfg.root)
            return
        from .stores.open import check_volume_mounted

        check_volume_mounted(cfg)  # before provisioning links anything to it
        # scratch holds the app's pinned files, the stat cache, restore temps and the locks: refuse one another
        # local user could read, plant files in or redirect (docs/security.md), before anything is written there
        ensure_private_dir(cfg.scratch, "fractfs_SCRATCH")
        ensure_private_dir(cfg.state_dir, "fractfs_SCRATCH (its .fractfs-state)")
        self._start_daemon = start_daemon
        # One writer process per root on this node (nodelock.py). The start lock is held until the writer's
        # restore is done, so a second process starting alongside waits and then sees the restored tree.
        self.nodelock = NodeLock(cfg.state_dir, cfg.sources.get("scratch", "scratch (fractfs_SCRATCH)"))
        self._check_state_dir()
        self.nodelock.begin_start()
        try:
            if self.nodelock.try_acquire():
                # The cyclic collector stays off through the whole cold start, not only while decoding and
                # restoring (snapshot/gcpause.py): turned on in between, its first pass walked every object the
                # restore had made, 15 ms of init() at 20 000 files and 90 ms at 100 000. After init() most of
                # those are freed, and the pass that remains is short, off the app's path.
                with gcpause.paused():
                    self._start_writer(force=force, restore=restore, start_daemon=start_daemon)
            else:
                self._start_standby(force=force)
        except BaseException:
            self.nodelock.release()
            raise
        finally:
            self.nodelock.end_start()

    def _check_state_dir(self) -> None:
        """Scratch must be writable: the stat cache, the locks and every checkpoint's bookkeeping live there.
        Found out now, not as a raw PermissionError at every checkpoint."""
        cfg = self.config
        sdir = cfg.state_dir
        probe = sdir / f".probe-{os.getpid()}"
        try:
            sdir.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ProvisionError(
                f"the state dir {sdir} is not writable ({exc.strerror or exc}); it lives in scratch "
                f"{cfg.scratch} ({cfg.sources.get('scratch', 'fractfs_SCRATCH')}): point fractfs_SCRATCH at a "
                "writable node-local directory") from exc

    def _open_store(self) -> Any:
        from .stores.open import open_store
        from .stores.volume import VolumeGuard, guard

        cfg = self.config
        store = open_store(cfg)
        # A mounted Volume is checked before every store call: unmounted or replaced, it must not silently
        # become node-local disk (stores/volume.py).
        store = guard(store, cfg.volume_root if cfg.is_posix_store else None)
        self.volume = store if isinstance(store, VolumeGuard) else None
        return store

    def _make_writer_parts(self) -> None:
        cfg = self.config
        self.lease = Lease(self.store, self.node_id, cfg.lease_timeout)
        self.keeper = LeaseKeeper(self.lease, where=str(cfg.checkpoint_location),
                                  on_acquired=self._on_lease_acquired, on_lost=self._on_lease_lost)
        self.checkpointer = Checkpointer(
            self.store, areas=lambda: areas_for(self.config), want=self.selection, state_dir=cfg.state_dir,
            options=options_for(cfg, self.node_id), keeper=self.keeper, stats=self.stats,
            on_change=self._persist_status, budget=self.budget)

    def _start_writer(self, *, force: bool, restore: bool, start_daemon: bool) -> None:
        cfg = self.config
        if cfg.dirs:
            self.report = _provision.provision(cfg, self.resolver, force=force)
            self.warnings.extend(self.report.warnings)
        self.store = self._open_store()
        from .snapshot import catalog
        from .snapshot.format import DIR

        # Take the lease (or learn who has it) before restoring: a node that holds it knows nobody else is
        # committing while it reads. A node that does not hold it still restores (reading is always safe:
        # a restore uses exactly one manifest, whole) but will not write.
        self._make_writer_parts()
        assert self.keeper is not None and self.lease is not None
        self._newest_pending = True
        try:
            if start_daemon:
                self.keeper.tick()
            try:
                # loaded once for every use: decoding a 100 000-file manifest takes half a second
                newest, damaged = catalog.newest_valid(self.store)
            except FractfsError as exc:
                self.stats.record_error(exc)
                raise
            finally:
                self._newest_pending = False
            if cfg.auto_ignore_bundle:
                # made and dropped here, not kept through the restore (a string slot per file), and without
                # Manifest.paths()'s set of every (area, path) on the way
                self.bundle = detect_bundle(cfg, self.resolver, {
                    e.path for e in (newest.entries if newest else ()) if e.area == "root" and e.type != DIR})
            save_bundle(cfg, self.bundle)
            if restore:
                self.restore_info = self._restore(newest, damaged)
            if self._superseded_check:
                self._superseded_check = False
                self._warn_superseded(newest)
        except BaseException:
            self._release_quietly()  # init failed: don't leave others waiting for our heartbeat to stop
            if self._seeding is not None:
                self._seeding.start()  # it releases the state lock when done
            raise
        try:
            self._start_threads(start_daemon)
            self._persist_status()
        finally:
            if self._seeding is not None:
                self._seeding.start()  # the stat cache, last (see snapshot.restore): it holds the state lock
        # init() does not import the checkpoint engine (snapshot/options.py); this thread does, right away, so
        # that no checkpoint imports it later. The one at SIGTERM, the only one with sync_interval = 0, would
        # otherwise import it while the interrupted main thread might hold the import lock of a module the
        # engine needs, and wait for it.
        self._importing = threading.Thread(target=_import_engine, name="fractfs-import", daemon=True)
        self._importing.start()
        log.info("fractfs: ready (root %s, store %s, %s sync, %d bundle files ignored%s)",
                 cfg.root, cfg.checkpoint_location, self.sync_mode, len(self.bundle),
                 "" if not start_daemon or self.lease.held else ", read-only: another node holds the lease")

    def _start_threads(self, start_daemon: bool) -> None:
        cfg = self.config
        assert self.keeper is not None
        if start_daemon:
            self._final_at_exit = True
            if cfg.sync_interval > 0:
                # after each round the status file gets the round's data-loss window (the checkpoint itself
                # wrote it before the daemon knew)
                self.daemon = SyncDaemon(self._daemon_tick, cfg.sync_interval,
                                         hold=self.budget.hold if self.budget is not None else None,
                                         after=self._persist_status)
                self.daemon.start()
                if self.sync_mode == "watch":
                    self._start_watch()
            else:
                # 0 asks for no background checkpoints at all: neither the timer nor the watcher's
                # change-driven ones. The lease heartbeat and the final checkpoint at SIGTERM/exit stay.
                self.sync_mode = MANUAL
                log.info("fractfs: sync_interval = 0 (%s): no background checkpoints; only sync_now(), "
                         "`fractfs sync` and the final checkpoint at exit", cfg.sources.get("sync_interval"))
            self.keeper.start()
            self._install_exit_hooks()

    # -- standby processes (another process on this node is the writer) --------------------------------
    def _start_standby(self, *, force: bool) -> None:
        """Another process on this node writes checkpoints for this root; it has restored (we waited for the
        start lock). Share its tree: no restore over its files, no bundle detection (its new files are not
        deploy bundle), no lease, no commits. A thread takes over when that process ends."""
        cfg = self.config
        self.role = STANDBY
        if cfg.dirs:
            self.report = _provision.provision(cfg, self.resolver, force=force)
            self.warnings.extend(self.report.warnings)
        self.store = self._open_store()
        self.bundle = load_bundle(cfg) or set()
        pid = holder_pid(cfg.state_dir)
        self.restore_info = {"skipped": f"process {pid or '?'} on this node is the writer for this root and "
                                        "restored it"}
        log.info("fractfs: process %s on this node writes checkpoints for %s; this process (%d) is a standby "
                 "and takes over when that one ends", pid or "?", cfg.root, os.getpid())
        if self._start_daemon:
            # installed now, from the main thread: if this process takes over, SIGTERM must reach us
            self._final_at_exit = True
            self._install_exit_hooks()
        threading.Thread(target=self._standby_loop, name="fractfs-standby", daemon=True).start()

    def _standby_loop(self) -> None:
        lock = self.nodelock
        while lock is not None and not self.closed and self.role == STANDBY:
            if lock.try_acquire():
                if self.closed or self.role != STANDBY:
                    lock.release()
                    return
                try:
                    self._become_writer()
                except Exception as exc:  # noqa: BLE001 - a standby thread must not die silently
                    log.error("fractfs: taking over as the writer process failed: %s", exc)
                    self.stats.record_error(exc)
                return
            time.sleep(STANDBY_POLL)

    def _become_writer(self) -> None:
        """The writer process ended (its final checkpoint done, its lease released): carry on from its last
        snapshot with the tree it left, so nothing it wrote is lost."""
        cfg = self.config
        self.bundle = load_bundle(cfg) or self.bundle
        try:
            prev = json.loads((cfg.state_dir / STATUS_FILE).read_text())
        except (OSError, ValueError):
            prev = {}
        # The tree on disk descends from the writer's last snapshot (restored or committed by it): it is
        # this process's base, not another node's.
        if isinstance(prev, dict) and prev.get("last_snapshot_id"):
            self.stats.last_snapshot_id = str(prev["last_snapshot_id"])
        self._make_writer_parts()
        assert self.keeper is not None
        self.role = WRITER
        log.warning("fractfs: the writer process for %s ended; this process (%d) takes over checkpoints from "
                    "snapshot %s", cfg.root, os.getpid(), self.stats.last_snapshot_id)
        if self._start_daemon:
            self.keeper.tick()
            self._start_threads(True)
        self._persist_status()

    # -- fork() ---------------------------------------------------------------------------------------
    def _forked(self) -> None:
        """In the child of fork(): the parent keeps being the writer. The child has none of its threads, and
        shares its lock descriptors: drop them without a store call, so the child never commits, never
        releases the parent's lease at its exit and never keeps the writer lock alive."""
        self.role = FORKED
        if self.nodelock is not None:
            self.nodelock.forget()
        if self.keeper is not None:
            self.keeper.forget()
        elif self.lease is not None:
            self.lease.forget()
        self.daemon = None
        self.watcher = None
        self._stop_lock = threading.Lock()
        self._stopped = threading.Event()
        self._stop_state, self._stop_owner = 2, None
        self._stopped.set()

    def _start_watch(self) -> None:
        from . import watch

        why = watch.available()
        watcher: Optional[watch.TreeWatcher] = None
        if why is None:
            assert self.daemon is not None
            watcher = watch.TreeWatcher(areas_for(self.config), self.selection(), self.daemon.notify_change)
            try:
                watcher.start(background=True)
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
        assert self.daemon is not None
        self.daemon.watched = True

    def _restore(self, newest: Optional[Manifest], damaged: list[str]) -> dict[str, Any]:
        """Restore ``newest`` (as start() found it), or report why there is nothing to restore."""
        from . import snapshot

        started = time.monotonic()
        res = snapshot.restore(self.store, areas_for(self.config), transfers=self.config.transfers,
                               state_dir=self.config.state_dir, manifest=newest, seed_in_background=True,
                               list_restored=False)
        self._seeding = res.seeding
        if newest is not None:
            res.fell_back_from = list(damaged)
        info = {
            "snapshot_id": res.snapshot_id,
            "restored": res.restored_count,
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
            self.stats.last_snapshot_id = res.snapshot_id
            log.info("fractfs: restored %d files from snapshot %s in %.2fs (%d already present)",
                     res.restored_count, res.snapshot_id, info["duration"], len(res.skipped_existing))
        return info

    # -- the lease -------------------------------------------------------------------------------------
    def _standby_message(self) -> str:
        return self.keeper.standby_message() if self.keeper is not None else "checkpoints are paused"

    def _on_lease_acquired(self) -> None:
        self._lease_lost = None
        if self.checkpointer is not None:
            self.checkpointer.lease_acquired()  # look at the store's newest snapshot before the next commit
        if not self._exit_hook_registered:
            self._register_exit_hook()  # start_daemon=False: at least give the lease back at exit
        if self.daemon is not None and self.daemon.running:
            # This node's tree is now what the next snapshot holds: save it now rather than at the next tick.
            self.daemon.poke()
        if self.lease is not None and self.lease.takeovers:
            self._warn_superseded()
        self._persist_status()

    def _on_lease_lost(self) -> None:
        lease = self.lease
        holder = lease.holder.node if lease is not None and lease.holder is not None else "another node"
        if not self.closed:
            self._lease_lost = f"{holder} holds it now"
        self._persist_status()

    def _warn_superseded(self, newest: Optional[Manifest] = None) -> None:
        """Warn when the store's newest valid snapshot is another node's and not the one this node restored:
        this node's state will be checkpointed over it. ``newest``: that snapshot, when already loaded."""
        if newest is None:
            if self._newest_pending:  # init() is about to load it: check then, not with a second decode
                self._superseded_check = True
                return
            from .snapshot import catalog

            try:
                names = catalog.list_names(self.store)
                if names and names[-1].id == self.restore_info.get("snapshot_id"):
                    return  # still the snapshot this node restored: nothing to decode
                newest, _ = catalog.newest_valid(self.store, names)  # the newest alone, not every one kept
            except FractfsError:
                return
        restored = self.restore_info.get("snapshot_id")
        if newest is not None and newest.id != restored and newest.node != self.node_id:
            log.warning("fractfs: snapshot %s was written by %s after this node restored %s; this node's own "
                        "state will be checkpointed over it (nothing is merged)",
                        (newest.id or "")[:20], newest.node, restored)

    # -- checkpoints -----------------------------------------------------------------------------------
    def selection(self) -> Selection:
        return Selection(self.config, self.resolver, self.bundle)

    def checkpoint(self, deadline: Optional[float] = None) -> list[str]:
        """One checkpoint now (sync_now). [] when passthrough or when another node holds the lease."""
        if self.config.passthrough:
            return []
        if self.role != WRITER or self.checkpointer is None:
            # Documented choice: a no-op with a warning, like a node that does not hold the lease. The writer
            # process checkpoints this same root on its own schedule (and at its exit).
            why = ("this process is a fork() child of the process that called fractfs.init(); that process "
                   "writes the checkpoints" if self.role == FORKED else
                   f"process {holder_pid(self.config.state_dir) or '?'} on this node writes the checkpoints "
                   "for this root")
            log.warning("fractfs: sync_now() stored nothing: %s", why)
            return []
        self.check_volume()
        try:
            return self.checkpointer.checkpoint(deadline, eager=True)
        except (VolumeNotMounted, VolumeChanged) as exc:
            self._volume_lost(exc)
            raise

    # -- the Volume -----------------------------------------------------------------------------------
    def check_volume(self) -> None:
        """Raise VolumeNotMounted/VolumeChanged while the Volume is missing or replaced; notes the change
        either way (status, log)."""
        g = self.volume
        if g is None:
            return
        if self._volume_problem is not None:
            g.invalidate()  # a store call saw it gone: don't trust an earlier good check
        try:
            g.check()
        except (VolumeNotMounted, VolumeChanged) as exc:
            self._volume_lost(exc)
            raise
        if self._volume_problem is not None:
            self._volume_problem = None
            # the next checkpoint renews the lease first (still ours unless another node took it meanwhile)
            log.warning("fractfs: the Volume %s is back; checkpoints resume", self.config.volume_root)
            self._persist_status()

    def _volume_lost(self, exc: StoreError) -> None:
        kind = VOLUME_CHANGED if isinstance(exc, VolumeChanged) else VOLUME_MISSING
        first = self._volume_problem is None
        self._volume_problem = (kind, str(exc))
        if first:
            log.error("fractfs: checkpoints paused: %s (looking again every %gs)", exc, VOLUME_RETRY)
            self._persist_status()

    def _daemon_tick(self) -> Optional[float]:
        """One background checkpoint; returns a delay when the next one should come sooner than usual."""
        cp = self.checkpointer
        if self.closed or cp is None:
            return None
        try:
            # A missing Volume pauses checkpoints (it is not a failure to back off from, and certainly not a
            # lost lease): look again soon, and carry on as soon as the same Volume is back.
            self.check_volume()
            cp.checkpoint(None, eager=False, stopping=lambda: self.closed)
        except (VolumeNotMounted, VolumeChanged) as exc:
            self._volume_lost(exc)
            return VOLUME_RETRY
        except FractfsError:
            if self.closed:  # cut short by the final checkpoint: not a failure worth a retry or a warning
                log.info("fractfs: background checkpoint stopped for the final one")
                return None
            if self._volume_problem is not None:
                return VOLUME_RETRY
            raise
        return RETRY_SOON if cp.retry_soon else None

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
            if self.checkpointer is not None:
                self.checkpointer.abort_running()
            out["error"] = "did not finish within the grace budget; the previous snapshot stays the checkpoint"
            log.error("fractfs: %s checkpoint %s", kind, out["error"])
        out["duration"] = round(time.monotonic() - t0, 3)
        self.final_sync = out
        return out

    def _final_pass(self, end: float, caller: int, kind: str) -> dict[str, Any]:
        cp, keeper = self.checkpointer, self.keeper
        assert cp is not None and keeper is not None
        try:
            self.check_volume()
        except (VolumeNotMounted, VolumeChanged) as exc:
            return {"skipped": f"the Volume is missing: {exc}"}
        if not keeper.may_write(True):
            return {"skipped": "this node does not hold the checkpoint lease"}
        deadline = end - 0.15  # the engine's own deadline, a little inside ours
        owner = cp.lock_owner
        # A checkpoint already running has most of the recent changes: let it finish if it can do so within
        # half the budget. The caller's own thread cannot finish anything while it is in here (a signal
        # arrived during its sync_now), so don't wait for that one.
        wait = 0.0 if owner is not None and owner == caller else max(0.0, (deadline - time.monotonic()) / 2)
        got = cp.acquire(wait)
        if not got:
            cp.abort_running()
            log.info("fractfs: %s checkpoint: aborted the checkpoint still running", kind)
            if owner != caller:
                got = cp.acquire(min(1.0, max(0.0, (deadline - time.monotonic()) / 4)))
        path = "normal"
        try:
            if got:
                stored = cp.run(deadline, self.config.state_dir, kind)
            else:
                # The aborted run still holds the stat cache's lock. Its store refuses everything now, so it
                # cannot commit; a pass with a separate cache is safe (it compares against the newest valid
                # snapshot and stores the most recently modified files first).
                path = "separate-cache"
                stored = cp.run(deadline, self.config.state_dir / "final", kind)
        finally:
            if got:
                cp.release()
        report = cp.final_report()  # ok only when every changed file made it (issue 11, point 1)
        return {"ok": report["complete"], "path": path, "stored": len(stored), "held_back": cp.retry_soon,
                "snapshot_id": self.stats.last_snapshot_id, **report}

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
        if final_sync and not self.config.passthrough and self.store is not None and self.role == WRITER \
                and self.checkpointer is not None:
            if end - reserve - time.monotonic() > MIN_FINAL:
                self._bounded_checkpoint(end - reserve, "final")
            else:
                self.final_sync = {"kind": "final", "ok": False, "error": "no time left in the grace budget"}
                log.warning("fractfs: no time left for a final checkpoint")
        if self.keeper is not None:
            self.keeper.stop()
        self._release_lease(end)
        if self._seeding is not None:  # a shutdown right after init(): the cache spares the next start a re-read
            self._seeding.join(max(0.05, end - time.monotonic()))
        self._restore_handlers()
        self._persist_status()
        if self.nodelock is not None:
            self.nodelock.release()  # last: a standby process takes over from the snapshot just committed

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
        if self._prev_handlers:
            return  # already installed (a standby process that took over)
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
        if self.closed or self.role == FORKED:
            return
        _join_app_threads()
        # without the daemon (start_daemon=False) the app checkpoints by hand; exit only gives the lease back
        self.shutdown(final_sync=self._final_at_exit, anchor=self._signal_time)

    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        prev = self._prev_handlers.get(signum, signal.SIG_DFL)
        if self.role == FORKED:
            self._chain(signum, frame, prev)  # the parent saves; this child just behaves as without fractfs
            return
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
        self._chain(signum, frame, prev)

    @staticmethod
    def _chain(signum: int, frame: Optional[FrameType], prev: _SignalHandler) -> None:
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
        if self.role != WRITER and not self.closed:
            warnings.append("this process does not write checkpoints: " + (
                "it is a fork() child of the process that called fractfs.init()" if self.role == FORKED else
                f"process {holder_pid(cfg.state_dir) or '?'} on this node is the writer for this root"))
        st: dict[str, Any] = {
            "initialized": True,
            **cfg.summary(),
            # the mode in use: watch falls back to interval without inotify; "manual" when sync_interval is 0
            "sync_mode": self.sync_mode,
            "sync_mode_configured": cfg.sync_mode,
            "daemon_running": bool(self.daemon and self.daemon.running),
            "sync_running": self.checkpointer is not None and self.checkpointer.lock.locked(),
            "node_id": self.node_id,
            "pid": os.getpid(),
            "writer": writer,
            "lease_holder": lease["holder"] if lease else None,
            "lease": lease,
            **status_fields(self.stats, iso_utc),
            "final_sync": self.final_sync,
            "watch": self.watcher.describe() if self.watcher is not None else None,
            # the pacing of background checkpoints (budget.py) and the window it leads to (daemon.py)
            "budget": self.budget.describe() if self.budget is not None else None,
            "data_loss_window": self.daemon.loss_window() if self.daemon is not None else None,
            "bundle_file_count": len(self.bundle),
            "dirs": dirs,
            "provision": report,
            "restore": self.restore_info,
            "warnings": warnings,
            "process_role": self.role,
        }
        # status() only reads: what the daemon, sync_now and the final pass found (check_volume), or what the
        # lease heartbeat just ran into (it often notices a lost Volume first)
        volume, store_error = self._volume_problem, None
        if self.keeper is not None and self.keeper.failing and self.lease is not None:
            exc = self.keeper.last_exc
            if isinstance(exc, (VolumeNotMounted, VolumeChanged)):
                volume = volume or (VOLUME_CHANGED if isinstance(exc, VolumeChanged) else VOLUME_MISSING, str(exc))
            else:
                store_error = self.lease.last_error
        problems = [] if cfg.passthrough else assess(
            st, volume=volume, lease_lost=self._lease_lost, store_error=store_error)
        st["healthy"] = not problems
        st["problems"] = problems
        # redact_value: a Volume URL may carry user:secret@ (docs/security.md); status.json is written from this
        redacted: dict[str, Any] = redact_value(st)
        return redacted

    def _persist_status(self) -> None:
        """status() as JSON in the state dir, for the `fractfs` command running in another process."""
        if self.config.passthrough or self.role != WRITER:
            return  # status.json describes the writer process: standbys and fork() children leave it alone
        try:
            st = self.status()
            st["initialized"] = not self.closed
            st["written_at"] = time.time()
            sdir = self.config.state_dir
            private_dir(sdir)
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


def load(root: Optional[Union[str, "os.PathLike[str]"]]) -> Config:
    return load_config(Path(os.fspath(root)) if root is not None else None)


def _before_fork() -> None:
    # A fork while that thread imports would leave the child holding import locks of a thread it does not have:
    # the child's first import of one of those modules (sqlite3, say) would wait forever. Web servers fork
    # right after the app's start-up, when the import is likely still running (20-30 ms).
    for rt in list(_live):
        if rt._importing is not None and rt._importing.is_alive():
            rt._importing.join(10)


def _after_fork_in_child() -> None:
    for rt in list(_live):
        rt._forked()


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
