"""The running instance behind the public API: config → provision → restore → sync daemon → final checkpoint."""
from __future__ import annotations

import atexit
import logging
import os
import signal
import socket
import threading
import time
import uuid
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Optional, Union

from . import provision as _provision
from .config import Config, load_config
from .daemon import SyncDaemon
from .errors import FractfsError
from .selection import Selection, areas_for, detect_bundle, save_bundle
from .tiers import Tier, TierResolver

log = logging.getLogger("fractfs")

_SignalHandler = Union[Callable[[int, Optional[FrameType]], Any], int, None]


def _iso(ts: Optional[float]) -> Optional[str]:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


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
        self.lock = threading.Lock()
        self.last_sync_time: Optional[float] = None
        self.last_sync_start: Optional[float] = None
        self.last_sync_duration: Optional[float] = None
        self.last_snapshot_id: Optional[str] = None
        self.last_stored: list[str] = []
        self.last_files = 0
        self.last_bytes = 0
        self.last_error: Optional[str] = None
        self.last_error_time: Optional[float] = None
        self.restore_info: dict[str, Any] = {}
        self.closed = False
        self._prev_handlers: dict[int, _SignalHandler] = {}
        self._atexit_registered = False

    # -- start-up --------------------------------------------------------------------------------------
    def start(self, *, force: bool, restore: bool, start_daemon: bool) -> None:
        cfg = self.config
        if cfg.passthrough:
            log.info("fractfs: no volume configured (set fractfs_VOLUME_ROOT or volume_root): passthrough "
                     "mode, nothing is provisioned or checkpointed; root %s", cfg.root)
            return
        from .stores import open_store

        if cfg.dirs:
            self.report = _provision.provision(cfg, self.resolver, force=force)
            self.warnings.extend(self.report.warnings)
        self.store = open_store(cfg.checkpoint_location or "", backend=cfg.backend)
        from . import snapshot

        known: set[str] = set()
        try:
            known = {rel for area, rel in snapshot.latest_paths(self.store) if area == "root"}
        except FractfsError as exc:
            self._record_error(exc)
            raise
        if cfg.auto_ignore_bundle:
            self.bundle = detect_bundle(cfg, self.resolver, known)
        save_bundle(cfg, self.bundle)
        if restore:
            self.restore_info = self._restore()
        if start_daemon:
            self.daemon = SyncDaemon(self._daemon_tick, cfg.sync_interval)
            self.daemon.start()
            self._install_exit_hooks()
        log.info("fractfs: ready (root %s, store %s, %d bundle files ignored)",
                 cfg.root, cfg.checkpoint_location, len(self.bundle))

    def _restore(self) -> dict[str, Any]:
        from . import snapshot

        started = time.monotonic()
        res = snapshot.restore(self.store, areas_for(self.config), transfers=self.config.transfers)
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
            self.warnings.append(f"restore: snapshot {sid} is damaged; restored the previous valid one")
        if res.snapshot_id:
            self.last_snapshot_id = res.snapshot_id
            log.info("fractfs: restored %d files from snapshot %s in %.2fs (%d already present)",
                     len(res.restored), res.snapshot_id, info["duration"], len(res.skipped_existing))
        return info

    # -- checkpoints -----------------------------------------------------------------------------------
    def selection(self) -> Selection:
        return Selection(self.config, self.resolver, self.bundle)

    def checkpoint(self, deadline: Optional[float] = None) -> list[str]:
        if self.config.passthrough:
            return []
        from . import snapshot

        with self.lock:
            start = time.time()
            self.last_sync_start = start
            try:
                res = snapshot.checkpoint(
                    self.store, areas_for(self.config), self.selection(),
                    state_dir=self.config.state_dir, content_hash=self.config.content_hash,
                    node_id=self.node_id, transfers=self.config.transfers,
                    keep=self.config.keep_snapshots, deadline=deadline,
                )
            except Exception as exc:
                self._record_error(exc)
                raise
            self.last_sync_time = time.time()
            self.last_sync_duration = round(self.last_sync_time - start, 3)
            if res.snapshot_id:
                self.last_snapshot_id = res.snapshot_id
            # the engine names paths "area:relpath"; both areas hold app-relative paths
            self.last_stored = [p.split(":", 1)[1] if ":" in p else p for p in res.stored]
            self.last_files = res.files
            self.last_bytes = res.bytes
            self.last_error = None
            if res.missed_deadline:
                log.warning("fractfs: checkpoint ran out of time; %d changed files not stored: %s",
                            len(res.missed_deadline), ", ".join(res.missed_deadline[:20]))
            return list(self.last_stored)

    def _record_error(self, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.last_error_time = time.time()

    def _daemon_tick(self) -> None:
        self.checkpoint()

    # -- stopping --------------------------------------------------------------------------------------
    def shutdown(self, final_sync: bool = True) -> None:
        if self.closed:
            return
        self.closed = True
        if self.daemon is not None:
            self.daemon.stop(timeout=self.config.grace)
        if final_sync and not self.config.passthrough and self.store is not None:
            try:
                self.checkpoint(deadline=time.monotonic() + self.config.grace)
            except Exception:  # noqa: BLE001 - shutdown must not raise out of atexit/signal paths
                log.exception("final checkpoint failed")
        self._restore_handlers()

    def _install_exit_hooks(self) -> None:
        if not self._atexit_registered:
            atexit.register(self._atexit)
            self._atexit_registered = True
        if threading.current_thread() is not threading.main_thread():
            log.info("fractfs: init() ran outside the main thread; SIGTERM is covered by atexit only")
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

    def _atexit(self) -> None:
        self.shutdown(final_sync=True)

    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        prev = self._prev_handlers.get(signum, signal.SIG_DFL)
        log.info("fractfs: signal %d: final checkpoint", signum)
        self.shutdown(final_sync=True)
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
        return {
            "initialized": True,
            "root": str(cfg.root),
            "config_file": str(cfg.config_file) if cfg.config_file else None,
            "backend": cfg.backend,
            "volume_root": cfg.volume_root,
            "dirs_root": str(cfg.dirs_root) if cfg.dirs_root else None,
            "checkpoint_location": cfg.checkpoint_location,
            "scratch": str(cfg.scratch),
            "passthrough": cfg.passthrough,
            "sync_interval": cfg.sync_interval,
            "sync_mode": cfg.sync_mode,
            "content_hash": cfg.content_hash,
            "auto_ignore_bundle": cfg.auto_ignore_bundle,
            "keep_snapshots": cfg.keep_snapshots,
            "daemon_running": bool(self.daemon and self.daemon.running),
            "node_id": self.node_id,
            "last_sync_time": self.last_sync_time,
            "last_sync_time_iso": _iso(self.last_sync_time),
            "last_sync_start": self.last_sync_start,
            "last_sync_duration": self.last_sync_duration,
            "last_snapshot_id": self.last_snapshot_id,
            "last_stored_count": len(self.last_stored),
            "files": self.last_files,
            "bytes": self.last_bytes,
            "last_error": self.last_error,
            "last_error_time": self.last_error_time,
            "bundle_file_count": len(self.bundle),
            "dirs": dirs,
            "patterns": {"local": list(cfg.local_patterns), "ignore": list(cfg.ignore_patterns)},
            "provision": report,
            "restore": self.restore_info,
            "warnings": list(self.warnings),
        }


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
