"""One status schema for app and operator: what ``fractfs.status()`` returns, what the runtime persists in
``status.json``, and the status the ``fractfs`` command builds from outside the app.

The runtime builds :class:`Status` (``Runtime.status()``) and writes it, plus ``written_at``, to
``<state dir>/status.json`` for the command, which runs in another process. The command reads that back
(:func:`read_app_status`) and adds what it can learn itself without a running app (:func:`offline_status`):
the Volume's capabilities, the snapshot list, the recorded bundle, the lease on the store.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any, Optional, TypedDict, cast

from .errors import FractfsError, StoreNotFound, VolumeNotMounted
from .health import STORE_ERROR, VOLUME_MISSING, problem
from .layout import DirStatus, DirView, dir_state
from .provision import Capabilities, plan_pins, probe_volume
from .selection import load_bundle
from .tiers import TierResolver

if TYPE_CHECKING:  # the stores package imports fsspec machinery; `fractfs --help` should not pay for it
    from .config import Config
    from .stores.base import Store

log = logging.getLogger("fractfs")

#: Where the runtime persists its status() for the `fractfs` command (in the state directory).
STATUS_FILE = "status.json"


class Patterns(TypedDict):
    local: list[str]
    ignore: list[str]


class ConfigSummary(TypedDict):
    """The settings part of every status: the keys of ``Config.summary()``."""

    root: str
    config_file: Optional[str]
    backend: str
    volume_root: Optional[str]
    dirs_root: Optional[str]
    checkpoint_location: Optional[str]
    scratch: str
    passthrough: bool
    sync_interval: float
    #: the configured mode in ConfigSummary; in Status the mode in use (see Status.sync_mode_configured)
    sync_mode: str
    grace: float
    lease_timeout: float
    content_hash: bool
    auto_ignore_bundle: bool
    keep_snapshots: int
    #: fraction of one core the background checkpoints may use; None: unbounded (budget.py)
    cpu_budget: Optional[float]
    #: bytes per second the background checkpoints may upload; None: unbounded
    upload_budget: Optional[float]
    patterns: Patterns


class Status(ConfigSummary):
    """``fractfs.status()`` of an initialized app: exactly the keys ``Runtime.status()`` returns."""

    initialized: bool
    sync_mode_configured: str
    daemon_running: bool
    sync_running: bool
    node_id: str
    pid: int
    writer: bool
    lease_holder: Optional[str]
    #: ``Lease.describe()`` of this node's lease keeper, None in passthrough mode
    lease: Optional[dict[str, Any]]
    last_sync_time: Optional[float]
    last_sync_time_iso: Optional[str]
    last_sync_start: Optional[float]
    last_sync_start_iso: Optional[str]
    last_sync_duration: Optional[float]
    last_snapshot_id: Optional[str]
    last_stored_count: int
    last_uploaded_bytes: int
    last_missed_deadline: list[str]
    last_skipped_busy: list[str]
    #: changed files the store refused ({"path", "reason"}); the last checkpoint committed the rest
    not_stored: list[dict[str, str]]
    #: files stored from two agreeing reads while they kept changing (a whole version, or an append's prefix)
    last_unsettled: list[str]
    kept_unrestored: list[str]
    files: int
    bytes: int
    syncs: int
    consecutive_failures: int
    last_error: Optional[str]
    last_error_time: Optional[float]
    last_error_time_iso: Optional[str]
    final_sync: Optional[dict[str, Any]]
    watch: Optional[dict[str, Any]]
    #: ``Budget.describe()``: the budgets, the CPU fraction and upload rate used over the last minute, and how
    #: long the next background checkpoint is held; None in passthrough mode
    budget: Optional[dict[str, Any]]
    #: ``SyncDaemon.loss_window()``: the data-loss window achieved recently (``seconds``: the longest time from
    #: a change to the commit that saved it; ``stretched_by``: the budget that made it longer); None without
    #: background checkpoints
    data_loss_window: Optional[dict[str, Any]]
    bundle_file_count: int
    dirs: dict[str, DirStatus]
    provision: Optional[dict[str, Any]]
    restore: dict[str, Any]
    warnings: list[str]
    #: "writer" / "standby" (another process on this node writes for the root) / "forked-child"
    process_role: str
    #: False while ``problems`` is not empty (health.py): what a monitor polls
    healthy: bool
    problems: list[dict[str, str]]


class PersistedStatus(Status):
    """``status.json``: the app's :class:`Status` with the time it was written."""

    written_at: float


class Uninitialized(TypedDict):
    """``fractfs.status()`` before ``init()``."""

    initialized: bool
    daemon_running: bool
    warnings: list[str]


def uninitialized() -> Uninitialized:
    return {"initialized": False, "daemon_running": False, "warnings": []}


class AppView(TypedDict):
    """The part of the app's persisted status the ``fractfs`` command shows, and whether the app still runs."""

    node_id: Optional[str]
    pid: Optional[int]
    initialized: Optional[bool]
    daemon_running: Optional[bool]
    writer: Optional[bool]
    sync_mode: Optional[str]
    last_sync_time: Optional[float]
    last_sync_time_iso: Optional[str]
    last_error: Optional[str]
    last_error_time: Optional[float]
    consecutive_failures: Optional[int]
    syncs: Optional[int]
    watch: Optional[dict[str, Any]]
    budget: Optional[dict[str, Any]]
    data_loss_window: Optional[dict[str, Any]]
    healthy: Optional[bool]
    problems: Optional[list[dict[str, str]]]
    written_at: Optional[float]
    alive: bool


_APP_KEYS = tuple(k for k in AppView.__annotations__ if k != "alive")


class LeaseView(TypedDict, total=False):
    """The single-writer lease as seen from outside the app (:func:`read_lease`)."""

    #: live | uncertain | stale | free, or unknown when it cannot be read
    state: str
    holder: Optional[str]
    host: str
    pid: int
    generation: int
    key: str
    acquired: float
    heartbeat_time: float
    heartbeat_age: float
    timeout: float
    released: bool
    error: str
    #: live and uncertain leases (and one that cannot be read): a command that writes checkpoints refuses
    blocks_writers: bool


class OfflineStatus(ConfigSummary):
    """What ``fractfs status`` knows from outside the app: the keys of :class:`Status` it can know, plus
    the Volume's capabilities, the snapshot summary, the lease on the store and the app's own record."""

    initialized: Optional[bool]  #: None: whether an app ran init() is not knowable without its record
    daemon_running: Optional[bool]
    bundle_file_count: Optional[int]
    dirs: dict[str, DirView]
    capabilities: Optional[dict[str, Any]]
    pins: list[str]
    unpinned: list[str]
    store_error: Optional[str]
    snapshot_count: int
    damaged_snapshots: list[str]
    last_snapshot_id: Optional[str]
    last_snapshot_time: Optional[float]
    last_snapshot_time_iso: Optional[str]
    files: Optional[int]
    bytes: Optional[int]
    last_snapshot_node: Optional[str]
    lease: Optional[LeaseView]
    app: Optional[AppView]
    warnings: list[str]
    healthy: bool  #: False when any problem below stands (`fractfs status` then exits 1)
    problems: list[dict[str, str]]  #: ``{kind, message}``: the running app's own, plus what is seen from here


def iso_utc(ts: Optional[float]) -> Optional[str]:
    """A Unix time as ISO 8601 UTC (as status() and the CLI show times), None for None."""
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


# ---------------------------------------------------------------------------------------------------------
# The app's own record on this node


def read_raw_app_status(config: Config) -> Optional[PersistedStatus]:
    """The status the app's runtime last wrote on this node, whole; None if absent, unreadable or written
    for another app root."""
    try:
        doc = json.loads((config.state_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("root") != str(config.root):
        return None
    return cast(PersistedStatus, doc)


def process_alive(pid: object) -> bool:
    """Whether a process with this pid exists (also one owned by another user)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def read_app_status(config: Config) -> Optional[AppView]:
    """The app's last status on this node (the keys of :class:`AppView`), with ``alive``: whether that
    process still runs and had not shut down. None when the app never wrote one here."""
    doc = read_raw_app_status(config)
    if doc is None:
        return None
    raw = cast(dict[str, Any], doc)
    view = cast(AppView, {k: raw.get(k) for k in _APP_KEYS})
    view["alive"] = process_alive(raw.get("pid")) and bool(raw.get("initialized", True))
    return view


# ---------------------------------------------------------------------------------------------------------
# The lease, read from the store (owned by fractfs.lease; never taken or renewed here)


def read_lease(store: Optional[Store], *, now: Optional[float] = None) -> Optional[LeaseView]:
    """The single-writer lease on ``store``, or None when there is none (or no store)."""
    if store is None:
        return None
    from . import lease as _lease

    now = time.time() if now is None else now
    try:
        found = _lease.newest(store)
        if found is None:
            return None
        key, rec = found
    except StoreNotFound:
        return None  # released and cleaned up between the listing and the read
    except FractfsError as exc:
        return {"state": "unknown", "holder": None, "error": str(exc), "blocks_writers": False}
    if rec is None:
        return {"state": "unknown", "holder": None, "key": key, "error": "the lease object is unreadable "
                "(being written, or from a newer fractfs)", "blocks_writers": True}
    state = rec.state(now)  # the one judgement of a lease read once (fractfs.lease)
    return {
        "state": state,
        "holder": rec.node,
        "host": rec.host,
        "pid": rec.pid,
        "generation": rec.generation,
        "key": key,
        "acquired": rec.acquired,
        "heartbeat_time": rec.time,
        "heartbeat_age": round(now - rec.time, 1),
        "timeout": rec.timeout,
        "released": rec.released,
        "blocks_writers": state in ("live", "uncertain"),
    }


# ---------------------------------------------------------------------------------------------------------
# status without a running app


def offline_status(config: Config, *, probe: bool = True) -> OfflineStatus:
    """The keys of ``fractfs.status()`` that can be known from outside the app, plus what the command adds:
    the Volume's capabilities (probed like init() does, unless ``probe`` is False), the snapshot summary,
    the persisted bundle, the lease and the app's own last record on this node."""
    from .stores.open import open_store

    resolver = TierResolver(config)
    warnings: list[str] = list(config.warnings)
    bundle = load_bundle(config)
    summary = cast(ConfigSummary, config.summary())
    st: OfflineStatus = {
        "initialized": None,  # another process: whether the app ran init() is not knowable from here
        "daemon_running": None,
        **summary,
        "bundle_file_count": len(bundle) if bundle is not None else None,
        "dirs": {d: dir_state(config, resolver, d) for d in config.dirs},
        "capabilities": None,
        "pins": [],
        "unpinned": [],
        "store_error": None,
        "snapshot_count": 0,
        "damaged_snapshots": [],
        "last_snapshot_id": None,
        "last_snapshot_time": None,
        "last_snapshot_time_iso": None,
        "files": None,
        "bytes": None,
        "last_snapshot_node": None,
        "lease": None,
        "app": None,
        "warnings": warnings,
        "healthy": True,
        "problems": [],
    }
    app = read_app_status(config)
    if app is not None:
        st["app"] = app
        st["initialized"] = app["alive"]
        st["daemon_running"] = bool(app["alive"] and app.get("daemon_running"))
        if app["alive"] and app.get("last_error"):
            warnings.append(f"the app's last checkpoint failed: {app['last_error']}")
    if config.passthrough:
        warnings.append("no volume configured: passthrough mode, nothing is provisioned or checkpointed")
        return st
    caps: Optional[Capabilities] = None
    if probe and config.dirs_root is not None:
        caps = probe_volume(config.dirs_root, app_root=config.root, strict=False)
        st["capabilities"] = caps.as_dict()
        if caps.error:
            warnings.append(caps.error)
    if config.dirs:
        plan = plan_pins(config, resolver, scan_limit=0 if caps is not None and not caps.symlinks else 64)
        warnings.extend(plan.warnings)
        st["pins"] = [p.label for p in plan.pins]
        if caps is not None and caps.exists and not caps.symlinks and plan.pins:
            st["unpinned"] = [p.label for p in plan.pins]
            warnings.append(f"the Volume at {config.dirs_root} refuses symlinks, so {len(plan.pins)} "
                            f"[local]/[ignore] pin(s) cannot be honoured: {', '.join(st['unpinned'])}")
    for d, info in st["dirs"].items():
        if info.get("state") not in ("linked", "kept-local", "missing"):
            warnings.append(f"[dirs] {d}: {info.get('detail')}")
    store: Optional[Store] = None
    try:
        store = open_store(config)
        from .snapshot import catalog

        names = catalog.list_names(store)
        st["snapshot_count"] = len(names)
        m, damaged = catalog.newest_valid(store, names)
        st["damaged_snapshots"] = damaged
        for sid in damaged:
            warnings.append(f"snapshot {sid} is damaged; a restore would use an older one")
        if m is not None:
            created = m.created_ns / 1e9
            st.update({"last_snapshot_id": m.id, "last_snapshot_time": created,
                       "last_snapshot_time_iso": iso_utc(created), "files": m.file_count, "bytes": m.byte_count,
                       "last_snapshot_node": m.node})
    except FractfsError as exc:
        st["store_error"] = str(exc)
        warnings.append(f"store: {exc}")
        volume_gone = isinstance(exc, VolumeNotMounted)
        st["problems"].append(problem(VOLUME_MISSING if volume_gone else STORE_ERROR, str(exc)))
    st["lease"] = read_lease(store)
    if caps is not None and not caps.exists and not any(p["kind"] == VOLUME_MISSING for p in st["problems"]):
        st["problems"].append(problem(VOLUME_MISSING, caps.error or f"the Volume {config.dirs_root} is missing"))
    if app is not None and app["alive"]:
        # what only the running app knows (lease lost, files not stored, failing checkpoints ...)
        st["problems"].extend(p for p in app.get("problems") or () if p not in st["problems"])
    st["healthy"] = not st["problems"]
    return st


def human_bytes(n: Optional[float]) -> str:
    """``1536`` → ``1.5 KiB`` (``?`` for None): sizes as the command and doctor's findings print them."""
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"  # pragma: no cover - the loop returns at TiB
