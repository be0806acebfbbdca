"""Operator-side views of a fractfs setup, built from the config alone (no Runtime, no daemon, no provisioning).

The ``fractfs`` command runs in another process than the app, possibly while the app is running, so nothing
here changes the app tree or the [dirs] layout. What it may touch: temp names on the Volume for the capability
probe (as ``init()`` does), a probe object in the checkpoint area (``doctor`` only), and the store itself for
the commands that exist to change it (``sync``, ``prune``).
"""
from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from .config import CONFIG_FILENAME, Config, _inside, _real
from .errors import ConfigError, CorruptCheckpointError, FractfsError, StoreError, StoreNotFound
from .provision import Capabilities, Pin, plan_pins, probe_volume
from .runtime import STATUS_FILE, iso_utc
from .selection import Selection, areas_for, detect_bundle, load_bundle
from .tiers import Tier, TierResolver

if TYPE_CHECKING:  # the stores package imports fsspec machinery; `fractfs --help` should not pay for it
    from .stores.base import Store

log = logging.getLogger("fractfs")

#: Where ``restore --to DIR`` puts the scratch area (pinned [local] files of [dirs] directories).
SCRATCH_SUBDIR = ".fractfs-scratch"
#: Below this much free space on the Volume ``doctor`` warns.
LOW_SPACE = 1 << 30


class SnapshotNotFound(FractfsError):
    """A snapshot id given on the command line matches nothing (or several) on the store."""


# ---------------------------------------------------------------------------------------------------------
# Store, bundle, selection


def open_checked_store(config: Config) -> Store:
    """The checkpoint store of ``config``; refuses an unmounted Volume instead of reading it as empty.

    A PosixStore lists a missing directory as empty and creates it on the first write, so an unmounted Volume
    would look like "no snapshots yet" and a sync would put "durable" data on ephemeral disk. Checked here.
    """
    if config.passthrough or config.checkpoint_location is None:
        # a configuration matter (exit 2 in the CLI), not a store failure: there is no store to ask
        toml = config.config_file or config.root / CONFIG_FILENAME
        raise ConfigError(f"no volume configured (passthrough mode): there is no checkpoint store; set "
                          f"volume_root in {toml} or fractfs_VOLUME_ROOT")
    if config.is_posix_store and config.volume_root is not None:
        vol = Path(config.volume_root)
        if not vol.is_dir():
            where = config.sources.get("volume_root", "volume_root")
            raise StoreError(f"the Volume {vol} ({where}) does not exist or is not mounted; mount it or fix "
                             "volume_root / fractfs_VOLUME_ROOT")
    from .stores import open_store

    try:
        return open_store(config.checkpoint_location, backend=config.backend, fast_path=config.s3_fast_path)
    except ImportError as exc:  # an optional backend dependency (s3fs, databricks-sdk) is missing
        extra = "databricks" if config.backend == "databricks" else "s3"
        raise StoreError(f"backend {config.backend!r} needs {exc.name or 'an extra package'}: "
                         f"pip install 'fractfs[{extra}]'") from exc


@dataclass
class BundleInfo:
    files: set[str]
    #: "recorded" (persisted by the app's init()), "detected" (computed now, as init() would), "off"
    source: str


def bundle_for(config: Config, resolver: TierResolver, store: Optional[Store]) -> BundleInfo:
    """The deploy bundle a checkpoint leaves out: the app's own record, else what init() would detect."""
    if not config.auto_ignore_bundle:
        return BundleInfo(set(), "off")
    recorded = load_bundle(config)
    if recorded is not None:
        return BundleInfo(recorded, "recorded")
    if store is None:
        return BundleInfo({CONFIG_FILENAME} if config.config_file else set(), "unknown")
    from . import snapshot

    known = {rel for area, rel in snapshot.latest_paths(store) if area == "root"}
    return BundleInfo(detect_bundle(config, resolver, known), "detected")


def cli_node_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:cli"


def resolve_snapshot(store: Store, sid: str) -> str:
    """A full snapshot id for ``sid``: a full id, a sequence number, a unique hash prefix, or the short
    ``<seq>-<hash prefix>`` form that logs and ``fractfs snapshots`` print."""
    from .snapshot import catalog

    names = catalog.list_names(store)
    text = sid.strip()
    seq, dash, prefix = text.partition("-")
    if dash and seq.isdigit() and len(prefix) >= 4 and len(text) < 77:
        hits = [n for n in names if n.seq == int(seq) and n.digest.startswith(prefix.lower())]
        if len(hits) == 1:
            return hits[0].id
    try:
        return catalog.resolve_id(names, text).id
    except CorruptCheckpointError as exc:  # resolve_id reports "not found" with this type
        raise SnapshotNotFound(f"{exc}; `fractfs snapshots` lists them") from None


# ---------------------------------------------------------------------------------------------------------
# Lease (owned by fractfs.lease; read here, never taken or renewed)


def read_lease(store: Optional[Store], *, now: Optional[float] = None) -> Optional[dict[str, Any]]:
    """The single-writer lease as a plain dict, or None when there is none (or no lease support).

    The lease module judges staleness by watching the heartbeat change for ``timeout`` seconds; a one-shot
    command cannot wait that long, so it goes by the holder's own heartbeat time instead: ``live`` within
    ``timeout``, ``uncertain`` up to the clock-skew allowance the lease module itself grants, then ``stale``.
    ``blocks_writers`` is True for live and uncertain leases (and for one that cannot be read): a command that
    writes checkpoints refuses then, unless forced.
    """
    if store is None:
        return None
    try:
        from . import lease as _lease
    except ImportError:
        return None
    now = time.time() if now is None else now
    try:
        gens = sorted(g for g in (_lease.parse_generation(k) for k, _size in store.list(_lease.PREFIX))
                      if g is not None)
        if not gens:
            return None
        key = _lease.lease_key(gens[-1])
        rec = _lease.LeaseRecord.decode(store.get(key))
        skew = float(getattr(_lease, "MAX_CLOCK_SKEW", 120.0))
    except StoreNotFound:
        return None  # released and cleaned up between the listing and the read
    except FractfsError as exc:
        return {"state": "unknown", "holder": None, "error": str(exc), "blocks_writers": False}
    except (AttributeError, TypeError) as exc:  # the lease module changed shape: say so, do not guess
        log.debug("fractfs: cannot interpret the lease: %s", exc)
        return None
    if rec is None:
        return {"state": "unknown", "holder": None, "key": key, "error": "the lease object is unreadable "
                "(being written, or from a newer fractfs)", "blocks_writers": True}
    age = now - rec.time
    if rec.released:
        state = "free"
    elif age <= rec.timeout:
        state = "live"
    elif age <= rec.timeout + skew:
        state = "uncertain"
    else:
        state = "stale"
    return {
        "state": state,
        "holder": rec.node,
        "host": rec.host,
        "pid": rec.pid,
        "generation": rec.generation,
        "key": key,
        "acquired": rec.acquired,
        "heartbeat_time": rec.time,
        "heartbeat_age": round(age, 1),
        "timeout": rec.timeout,
        "released": rec.released,
        "blocks_writers": state in ("live", "uncertain"),
    }


# ---------------------------------------------------------------------------------------------------------
# [dirs] links and pins as they are on disk


def dir_state(config: Config, resolver: TierResolver, d: str) -> dict[str, Any]:
    """What ``root/<d>`` is right now, against what provisioning wants it to be."""
    local = config.root / d
    target = (config.dirs_root / d) if config.dirs_root is not None else None
    out: dict[str, Any] = {"tier": Tier.DIRS.value, "local_path": str(local),
                           "target": str(target) if target else None, "linked": False}
    own = resolver.explain(d, is_dir=True)
    if own.tier in (Tier.LOCAL, Tier.IGNORE):
        out.update(tier=own.tier.value, state="kept-local",
                   detail=f"matches [{own.table}] {own.rule!r}, which takes precedence: not linked")
        return out
    try:
        st = os.lstat(local)
    except FileNotFoundError:
        out.update(state="missing", detail="no link yet: init() creates it")
        return out
    except OSError as exc:
        out.update(state="error", detail=str(exc))
        return out
    if stat.S_ISLNK(st.st_mode):
        link = os.readlink(local)
        out["points_to"] = link
        resolved = link if os.path.isabs(link) else os.path.join(str(local.parent), link)
        if target is not None and os.path.normpath(resolved) == os.path.normpath(str(target)):
            out["linked"] = True
            if os.path.isdir(target):
                out.update(state="linked", detail=f"-> {target}")
            else:
                out.update(state="dangling", detail=f"-> {target}, which does not exist (Volume not mounted?)")
        else:
            out.update(state="elsewhere", detail=f"-> {link}, not {target}")
        return out
    if stat.S_ISDIR(st.st_mode):
        with os.scandir(local) as it:
            empty = next(it, None) is None
        if empty:
            out.update(state="empty-dir", detail="an empty real directory: init() replaces it with the link")
        else:
            out.update(state="real-dir", detail="a non-empty real directory is in the way")
        return out
    out.update(state="file", detail="a file is in the way of the directory link")
    return out


def pin_for(pins: Sequence[Pin], rel: str) -> Optional[Pin]:
    for p in pins:
        if rel == p.relpath or (p.is_dir and rel.startswith(p.relpath + "/")):
            return p
    return None


def pin_in_place(config: Config, pin: Pin) -> bool:
    vol = pin.volume_path(config)
    try:
        link = os.readlink(vol)
    except OSError:
        return False
    return os.path.normpath(link) == os.path.normpath(str(pin.scratch_path(config)))


# ---------------------------------------------------------------------------------------------------------
# status without a running app


#: The keys shown from what the app's runtime persists for this command (``Runtime._persist_status``).
_APP_KEYS = ("node_id", "pid", "initialized", "daemon_running", "writer", "sync_mode", "last_sync_time",
             "last_sync_time_iso", "last_error", "last_error_time", "consecutive_failures", "syncs", "watch",
             "written_at")


def read_raw_app_status(config: Config) -> Optional[dict[str, Any]]:
    """The status document the app's runtime last wrote on this node, unfiltered; None if absent/foreign."""
    import json

    try:
        doc = json.loads((config.state_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("root") != str(config.root):
        return None
    return doc


def read_app_status(config: Config) -> Optional[dict[str, Any]]:
    """The app's own last status() on this node (written by its runtime), with ``alive`` added: whether
    that process still runs. None when the app never wrote one here."""
    doc = read_raw_app_status(config)
    if doc is None:
        return None
    out = {k: doc.get(k) for k in _APP_KEYS}
    pid = doc.get("pid")
    alive = False
    if isinstance(pid, int) and pid > 0:
        try:
            os.kill(pid, 0)
            alive = True
        except PermissionError:
            alive = True  # exists, owned by someone else
        except OSError:
            alive = False
    out["alive"] = alive and bool(doc.get("initialized", True))
    return out


def offline_status(config: Config, *, probe: bool = True) -> dict[str, Any]:
    """The same keys as ``fractfs.status()`` where they can be known from outside the app, plus what the CLI
    can add: the Volume's capabilities, the snapshot list summary, the persisted bundle, the lease."""
    resolver = TierResolver(config)
    warnings: list[str] = list(config.warnings)
    bundle = load_bundle(config)
    st: dict[str, Any] = {
        "initialized": None,  # another process: whether the app ran init() is not knowable from here
        "daemon_running": None,
        **config.summary(),
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
        store = open_checked_store(config)
        from .snapshot import catalog

        names = catalog.list_names(store)
        st["snapshot_count"] = len(names)
        m, damaged = catalog.newest_valid(store, names)
        st["damaged_snapshots"] = damaged
        for sid in damaged:
            warnings.append(f"snapshot {sid} is damaged; a restore would use an older one")
        if m is not None:
            created = m.created_ns / 1e9
            st.update(last_snapshot_id=m.id, last_snapshot_time=created, last_snapshot_time_iso=iso_utc(created),
                      files=m.file_count, bytes=m.byte_count, last_snapshot_node=m.node)
    except FractfsError as exc:
        st["store_error"] = str(exc)
        warnings.append(f"store: {exc}")
    st["lease"] = read_lease(store)
    return st


# ---------------------------------------------------------------------------------------------------------
# explain


class Explainer:
    """Answers "where does this path live, and is it checkpointed?" for many paths with one set of probes."""

    def __init__(self, config: Config, *, store_lookup: bool = True):
        self.config = config
        self.resolver = TierResolver(config)
        self._caps: Optional[Capabilities] = None
        self._probed = False
        self._pins: Optional[list[Pin]] = None
        self._store_lookup = store_lookup and not config.passthrough
        self._snapshot: Optional[tuple[Optional[str], set[tuple[str, str]]]] = None
        self.store_error: Optional[str] = None
        self._bundle: Optional[BundleInfo] = None

    def caps(self) -> Optional[Capabilities]:
        if not self._probed and self.config.dirs_root is not None:
            self._caps = probe_volume(self.config.dirs_root, app_root=self.config.root, strict=False)
        self._probed = True
        return self._caps

    def pins(self) -> list[Pin]:
        if self._pins is None:
            self._pins = list(plan_pins(self.config, self.resolver).pins) if self.config.dirs else []
        return self._pins

    def snapshot(self) -> tuple[Optional[str], set[tuple[str, str]]]:
        if self._snapshot is None:
            self._snapshot = (None, set())
            if self._store_lookup:
                try:
                    from .snapshot import catalog

                    m, _ = catalog.newest_valid(open_checked_store(self.config))
                    if m is not None:
                        self._snapshot = (m.id, {(e.area, e.path) for e in m.entries})
                except FractfsError as exc:
                    self.store_error = str(exc)
        return self._snapshot

    def bundle(self) -> BundleInfo:
        """The bundle ``fractfs sync`` would leave out: the app's record, else what init() would detect."""
        if self._bundle is None:
            cfg = self.config
            recorded = load_bundle(cfg) if cfg.auto_ignore_bundle else set()
            if recorded is not None:
                self._bundle = BundleInfo(recorded, "recorded" if cfg.auto_ignore_bundle else "off")
            else:
                sid, paths = self.snapshot()
                if self.store_error is None and self._store_lookup:
                    known = {rel for area, rel in paths if area == "root"}
                    self._bundle = BundleInfo(detect_bundle(cfg, self.resolver, known), "detected")
                else:
                    self._bundle = BundleInfo({CONFIG_FILENAME} if cfg.config_file else set(), "unknown")
        return self._bundle

    def relpath(self, arg: str) -> str:
        """App-relative path for a command-line argument: absolute, or relative to the current directory
        when that is inside the app (like git), else relative to the app root."""
        from .runtime import relpath_for

        p = Path(arg)
        if not p.is_absolute():
            cwd = Path(os.path.abspath(os.getcwd()))
            cfg = self.config
            inside = any(cwd == base or base in cwd.parents for base in (cfg.root, cfg.scratch))
            if not inside and cfg.dirs_root is not None:
                inside = any(cwd == cfg.dirs_root / d or (cfg.dirs_root / d) in cwd.parents for d in cfg.dirs)
            if inside:
                p = cwd / p
        rel = relpath_for(self.config, p)
        return rel

    def explain(self, arg: str) -> dict[str, Any]:
        cfg = self.config
        rel = self.relpath(arg)
        local = cfg.root / rel if rel else cfg.root
        exists = os.path.lexists(local)
        is_dir = arg.endswith("/") or local.is_dir()
        d = self.resolver.explain(rel, is_dir)
        out: dict[str, Any] = {"input": arg, "path": rel, "exists": exists, "is_dir": is_dir, **d.as_dict()}
        out["rule_text"] = self._rule_text(d.table, d.rule, d.matched_as)
        owner = self.resolver.dir_of(rel)
        location, kind, note = self._location(rel, d.tier, owner, is_dir)
        out.update(location=location, location_kind=kind, location_note=note)
        checkpointed, why, area = self._checkpointed(rel, d.tier, owner, kind, is_dir)
        out.update(checkpointed=checkpointed, checkpoint_reason=why)
        out["in_snapshot"] = None
        out["snapshot_id"] = None
        if checkpointed and area is not None and not is_dir:
            sid, paths = self.snapshot()
            if sid is not None:
                out["snapshot_id"] = sid
                out["in_snapshot"] = (area, rel) in paths
        return out

    @staticmethod
    def _rule_text(table: Optional[str], rule: Optional[str], matched_as: Optional[str]) -> str:
        if table is None:
            return "no rule matched: default tier"
        key = "paths" if table == "dirs" else "patterns"
        text = f"[{table}].{key} {rule!r}"
        if matched_as:
            text += f" (matched the directory {matched_as})"
        return text

    def _location(self, rel: str, tier: Tier, owner: Optional[str], is_dir: bool) -> tuple[str, str, str]:
        cfg = self.config
        local = str(cfg.root / rel) if rel else str(cfg.root)
        if owner is None or cfg.passthrough or cfg.dirs_root is None:
            note = "node-local disk"
            if cfg.passthrough and owner is not None:
                note += " (passthrough: [dirs] are not linked)"
            return local, "local", note
        vol_path = str(cfg.dirs_root / rel)
        if rel == owner:
            if tier in (Tier.LOCAL, Tier.IGNORE):
                return local, "local", "node-local disk: the [dirs] entry itself matches a pattern, so it is not linked"
            return vol_path, "volume", f"on the Volume: {cfg.root / owner} is a symlink to {cfg.dirs_root / owner}"
        if tier == Tier.DIRS:
            return vol_path, "volume", f"on the Volume, through the [dirs] symlink {cfg.root / owner}"
        # a [local]/[ignore] path inside a [dirs] directory: node-local only through a back-symlink (pin)
        pin = pin_for(self.pins(), rel)
        caps = self.caps()
        if pin is None:
            return vol_path, "volume-unpinned", ("on the Volume: a glob pattern cannot be pinned before the file "
                                                 "exists, so it follows the [dirs] symlink (durable, not "
                                                 "node-local)")
        if caps is not None and caps.exists and not caps.symlinks:
            return vol_path, "volume-unpinned", "on the Volume (pin not possible: the Volume refuses symlinks)"
        scratch_path = str(cfg.scratch / rel)
        link = f"{pin.volume_path(cfg)} -> {pin.scratch_path(cfg)}"
        if pin_in_place(cfg, pin):
            return scratch_path, "scratch", f"node-local scratch, through the pin {link}"
        return scratch_path, "scratch", f"node-local scratch once init() places the pin {link} (not there now)"

    def _checkpointed(self, rel: str, tier: Tier, owner: Optional[str], kind: str,
                      is_dir: bool) -> tuple[bool, str, Optional[str]]:
        cfg = self.config
        if cfg.passthrough:
            return False, "passthrough mode: no volume configured, nothing is checkpointed", None
        if tier == Tier.IGNORE:
            return False, "matches [ignore]: never checkpointed", None
        if kind in ("volume", "volume-unpinned"):
            return False, "lives on the Volume: durable already, not checkpointed", None
        if kind == "scratch":
            if tier == Tier.LOCAL:
                return True, "pinned [local] file: checkpointed from scratch", "scratch"
            return False, "not checkpointed", None
        sel = Selection(cfg, self.resolver, self.bundle().files)
        if not rel:
            return True, "the app root: its checkpoint-eligible files are checkpointed", "root"
        skip_rel = None
        try:
            skip_rel = cfg.scratch.relative_to(cfg.root).as_posix()
        except ValueError:
            pass
        if skip_rel and (rel == skip_rel or rel.startswith(skip_rel + "/")):
            return False, "fractfs' own scratch directory", None
        if not is_dir and rel in self.bundle().files:
            how = {"recorded": "recorded by the app's init() on this node",
                   "detected": "present but in no snapshot, as init() would decide",
                   "unknown": "the config file is always part of it"}.get(self.bundle().source, "")
            return False, f"part of the deploy bundle ({how}; auto_ignore_bundle)", None
        if not sel.want_root(rel, is_dir):
            return False, "left out by the checkpoint selection", None
        if tier == Tier.LOCAL:
            return True, "[local]: node-local and checkpointed", "root"
        return True, "node-local, not ignored, not part of the deploy bundle", "root"


# ---------------------------------------------------------------------------------------------------------
# doctor


@dataclass
class Finding:
    level: str  #: "ok", "warn" or "FAIL"
    what: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"level": self.level, "what": self.what, "fix": self.fix}


@dataclass
class Doctor:
    config: Config
    findings: list[Finding] = field(default_factory=list)

    def ok(self, what: str, fix: str = "") -> None:
        self.findings.append(Finding("ok", what, fix))

    def warn(self, what: str, fix: str) -> None:
        self.findings.append(Finding("warn", what, fix))

    def fail(self, what: str, fix: str) -> None:
        self.findings.append(Finding("FAIL", what, fix))

    @property
    def failed(self) -> bool:
        return any(f.level == "FAIL" for f in self.findings)

    def run(self) -> list[Finding]:
        cfg = self.config
        self._config()
        self._scratch()
        if cfg.passthrough:
            return self.findings
        caps = self._volume()
        store = self._store(volume_ok=caps is None or caps.writable)
        if store is not None:
            self._snapshots(store)
        self._dirs(caps)
        lease = read_lease(store)
        if lease is not None:
            holder = lease.get("holder") or "?"
            state = lease.get("state")
            if lease.get("error"):
                self.warn(f"lease: {lease['error']}", "check the store (see above); it is re-read next time")
            elif state == "live":
                self.ok(f"lease: held by {holder} (the node that writes checkpoints; heartbeat "
                        f"{lease.get('heartbeat_age')}s ago)")
            elif state == "uncertain":
                self.warn(f"lease: held by {holder}, but no heartbeat for {lease.get('heartbeat_age')}s",
                          "if that node is gone, the next node to start takes the lease over once it is stale")
            elif state == "stale":
                self.ok(f"lease: last held by {holder}, stale (heartbeat {lease.get('heartbeat_age')}s ago); "
                        "the next node to start takes it over")
            else:
                self.ok(f"lease: released by {holder}")
        return self.findings

    def _config(self) -> None:
        cfg = self.config
        if cfg.config_file is not None:
            self.ok(f"config: {cfg.config_file} is valid (backend {cfg.backend})")
        else:
            self.ok(f"config: no {CONFIG_FILENAME} at {cfg.root}; environment and defaults only")
        for w in cfg.warnings:
            self.warn(f"config: {w}", "correct the name (see the suggestion) or remove it")
        if cfg.passthrough:
            self.warn("config: no volume_root: passthrough mode, nothing is provisioned or checkpointed",
                      "set volume_root in .fractfs.toml or fractfs_VOLUME_ROOT")

    def _volume(self) -> Optional[Capabilities]:
        cfg = self.config
        path: Optional[Path] = cfg.dirs_root
        if path is None and cfg.is_posix_store and cfg.volume_root is not None:
            path = Path(cfg.volume_root)
        if path is None:
            return None
        caps = probe_volume(path, app_root=cfg.root, strict=False)
        source = cfg.sources.get("dirs_root" if cfg.dirs_root is not None and "dirs_root" in cfg.sources
                                 else "volume_root", "volume_root")
        if not caps.exists:
            self.fail(f"Volume {path}: not reachable ({caps.error})",
                      f"mount the Volume, or fix the path ({source})")
            return caps
        if not caps.writable:
            self.fail(f"Volume {path}: not writable ({caps.error})",
                      "grant this user / service principal write access, or point the setting at a writable "
                      "location")
            return caps
        fs = caps.fs_type or "unknown filesystem"
        self.ok(f"Volume {path}: reachable and writable ({fs})")
        pins = plan_pins(cfg, TierResolver(cfg), scan_limit=0).pins if cfg.dirs else []
        if caps.symlinks:
            self.ok("Volume: symlinks work (pins of [local]/[ignore] files inside [dirs] are possible)")
        elif pins:
            self.warn(f"Volume: refuses symlinks, so {len(pins)} pin(s) cannot be honoured: "
                      f"{', '.join(p.label for p in pins)} (they live on the Volume, not checkpointed)",
                      "keep such files outside [dirs] (plain local disk is checkpointed)")
        else:
            self.ok("Volume: refuses symlinks (no pins are needed, so nothing is lost)")
        if caps.rename:
            self.ok("Volume: rename works")
        else:
            self.ok("Volume: no rename (fractfs writes objects under their final name and verifies them)")
        if caps.cross_device:
            self.ok("Volume: another filesystem than the app root (moves copy, fsync and verify)")
        else:
            self.warn("Volume: on the same filesystem as the app root: if that disk is wiped with the node, "
                      "the checkpoints go with it",
                      "point volume_root at durable storage (a Volume mount), unless this disk persists")
        if caps.free_bytes is not None:
            free = human_bytes(caps.free_bytes)
            if caps.free_bytes < LOW_SPACE:
                self.warn(f"Volume: only {free} free", "free space on the Volume or grow it")
            else:
                self.ok(f"Volume: {free} free")
        return caps

    def _store(self, *, volume_ok: bool) -> Optional[Store]:
        cfg = self.config
        url = cfg.checkpoint_location or "?"
        s3 = cfg.backend == "s3"
        fix = "check volume_root and that the Volume is mounted"
        if s3:
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            has_key = "set" if os.environ.get("AWS_ACCESS_KEY_ID") else "not set"
            fix = (f"check AWS_ENDPOINT_URL (now {endpoint or 'unset: AWS itself'}), AWS_ACCESS_KEY_ID "
                   f"({has_key}) / AWS_SECRET_ACCESS_KEY, and that the bucket exists")
        elif cfg.backend == "databricks":
            fix = "check DATABRICKS_HOST and DATABRICKS_CLIENT_ID / DATABRICKS_CLIENT_SECRET (or a token)"
        if not volume_ok and cfg.is_posix_store:
            self.fail(f"store {url}: not checked, the Volume is not usable", "fix the Volume first")
            return None
        try:
            store = open_checked_store(cfg)
            from .snapshot import catalog

            count = len(catalog.list_names(store))
        except FractfsError as exc:
            self.fail(f"store {url}: cannot list the checkpoint area: {exc}", fix)
            return None
        self.ok(f"store {url}: reachable, {count} snapshot(s)")
        key = f"fractfs-doctor/probe-{secrets.token_hex(6)}"
        payload = b"fractfs doctor probe\n"
        try:
            store.put(key, payload)
            back = store.get(key)
            store.delete(key)
            if back != payload:
                self.fail(f"store {url}: a probe object read back different bytes", "check the store/mount")
            else:
                self.ok(f"store {url}: writable (probe object written, read back and deleted)")
        except FractfsError as exc:
            with contextlib.suppress(Exception):
                store.delete(key)
            self.fail(f"store {url}: not writable: {exc}", fix)
        return store

    def _snapshots(self, store: Store) -> None:
        from .snapshot import catalog

        try:
            m, damaged = catalog.newest_valid(store)
        except FractfsError as exc:
            self.fail(f"snapshots: cannot be read: {exc}", "check the store (see above)")
            return
        if damaged:
            older = (f"; a restore would fall back to {short_id(m.id)}" if m is not None
                     else "; no valid snapshot is left")
            self.fail(f"snapshots: the newest {len(damaged)} are damaged ({', '.join(map(short_id, damaged))})"
                      f"{older}",
                      "run `fractfs verify --all` for details; `fractfs sync` writes a fresh snapshot and "
                      "`fractfs prune` drops old ones")
        elif m is None:
            self.warn("snapshots: none yet", "run `fractfs sync` (or start the app) to write the first one")
        if m is not None and not damaged:
            when = iso_utc(m.created_ns / 1e9)
            self.ok(f"snapshots: newest {short_id(m.id)} ({when}, {m.file_count} file{'' if m.file_count == 1 else 's'}) loads and matches its checksum "
                    "(`fractfs verify` reads every object)")

    def _scratch(self) -> None:
        scratch = self.config.scratch
        if scratch.is_dir():
            try:
                fd, name = tempfile.mkstemp(prefix=".fractfs-probe-", dir=scratch)
                os.close(fd)
                os.unlink(name)
            except OSError as exc:
                self.fail(f"scratch {scratch}: not writable ({exc.strerror or exc})",
                          "make it writable for this user or set scratch / fractfs_SCRATCH elsewhere")
                return
            self.ok(f"scratch {scratch}: writable")
        else:
            parent = scratch.parent
            while not parent.exists() and parent != parent.parent:
                parent = parent.parent
            if os.access(parent, os.W_OK | os.X_OK):
                self.ok(f"scratch {scratch}: does not exist yet; init() creates it")
            else:
                self.fail(f"scratch {scratch}: cannot be created ({parent} is not writable)",
                          "set scratch / fractfs_SCRATCH to a writable node-local directory")
        if load_bundle(self.config) is None and self.config.auto_ignore_bundle:
            self.ok("deploy bundle: not recorded on this node yet (the app has not run init() here)")

    def _dirs(self, caps: Optional[Capabilities]) -> None:
        cfg = self.config
        resolver = TierResolver(cfg)
        for d in cfg.dirs:
            info = dir_state(cfg, resolver, d)
            state = info.get("state")
            local, target = info["local_path"], info["target"]
            if state == "linked":
                self.ok(f"[dirs] {d}: linked to {target}")
            elif state == "missing":
                self.warn(f"[dirs] {d}: no link at {local} yet", "start the app (fractfs.init() creates it)")
            elif state == "empty-dir":
                self.warn(f"[dirs] {d}: {local} is an empty real directory, not linked",
                          "start the app (fractfs.init() replaces it with the link)")
            elif state == "elsewhere":
                self.warn(f"[dirs] {d}: {local} points to {info.get('points_to')}, not {target}",
                          "start the app (fractfs.init() relinks it), or move the data first if it matters")
            elif state == "dangling":
                self.fail(f"[dirs] {d}: {local} -> {target}, which does not exist",
                          "mount the Volume (the link is right, its target is missing)")
            elif state == "real-dir":
                self.fail(f"[dirs] {d}: {local} is a non-empty real directory; init() will refuse "
                          "(ClobberError)",
                          "move the data away, or call fractfs.init(force=True) to migrate it to the Volume")
            elif state == "file":
                self.fail(f"[dirs] {d}: a file is in the way at {local}", "move or delete it")
            elif state == "kept-local":
                self.warn(f"[dirs] {d}: {info.get('detail')}", "remove one of the two rules")
            else:
                self.fail(f"[dirs] {d}: {info.get('detail')}", "check the path")
        if not cfg.dirs:
            return
        plan = plan_pins(cfg, resolver)
        for w in plan.warnings:
            # the planner's warnings end with their own advice ("To keep such files node-local, ...")
            what, sep, advice = w.partition(" To keep ")
            self.warn(f"pins: {what}", f"to keep {advice}" if sep else
                      "use a directory pattern (e.g. \".locks/\") or keep the files outside [dirs]")
        if caps is None or not caps.exists or not caps.symlinks or not plan.pins:
            return
        linked = {d for d in cfg.dirs if dir_state(cfg, resolver, d).get("state") == "linked"}
        missing = [p.label for p in plan.pins if p.dir in linked and not pin_in_place(cfg, p)]
        if missing:
            self.warn(f"pins: not in place on the Volume: {', '.join(missing)}",
                      "start the app (fractfs.init() places them before the app writes)")
        else:
            self.ok(f"pins: {len(plan.pins)} in place ({', '.join(p.label for p in plan.pins)})")


def doctor(config: Config) -> list[Finding]:
    return Doctor(config).run()


# ---------------------------------------------------------------------------------------------------------
# Progress: a store wrapper that counts the bytes read, for the CLI's progress line


class CountingStore:
    """Delegates to ``inner``; counts bytes fetched so a caller can show progress of a long read."""

    def __init__(self, inner: Store):
        self.inner = inner
        self.url = inner.url
        self.read_bytes = 0
        self._lock = threading.Lock()

    def _count(self, n: int) -> None:
        with self._lock:
            self.read_bytes += n

    def put(self, key: str, data: bytes, *, exclusive: bool = False) -> None:
        self.inner.put(key, data, exclusive=exclusive)

    def put_file(self, key: str, path: Path) -> None:
        self.inner.put_file(key, path)

    def get(self, key: str) -> bytes:
        data = self.inner.get(key)
        self._count(len(data))
        return data

    def get_range(self, key: str, start: int, length: int) -> bytes:
        data = self.inner.get_range(key, start, length)
        self._count(len(data))
        return data

    def get_file(self, key: str, path: Path) -> None:
        self.inner.get_file(key, path)
        with contextlib.suppress(OSError):
            self._count(os.path.getsize(path))

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        return self.inner.list(prefix)

    def size(self, key: str) -> Optional[int]:
        return self.inner.size(key)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def __getattr__(self, name: str) -> Any:
        # Batch fast paths exist only when the wrapped store has them (the engine tests for them by name).
        if name == "get_many":
            inner_many = getattr(self.inner, "get_many")  # noqa: B009 - not on the Store protocol

            def get_many(keys: Sequence[str], *, workers: int = 32) -> list[bytes]:
                out: list[bytes] = list(inner_many(keys, workers=workers))
                self._count(sum(len(b) for b in out))
                return out

            return get_many
        if name == "put_many":
            return getattr(self.inner, "put_many")  # noqa: B009 - not on the Store protocol
        raise AttributeError(name)


def human_bytes(n: Optional[float]) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"  # pragma: no cover - the loop returns at TiB


def short_id(sid: Optional[str]) -> str:
    """``000000000003-<64 hex>`` → ``3-<12 hex>``, which :func:`resolve_snapshot` accepts back."""
    if not sid:
        return "-"
    seq, _, digest = sid.partition("-")
    return f"{int(seq)}-{digest[:12]}" if seq.isdigit() and digest else sid


def identical_on_disk(store: Store, snapshot_id: str, labels: Sequence[str], areas: dict[str, Path]) -> set[str]:
    """Which of ``labels`` (``area:relpath`` files of the snapshot) already have the same bytes on disk.

    A dry-run restore plans by existence only; with --overwrite the real run then skips identical files, so
    the dry run would overstate what it writes. This reads and hashes the local candidates to say it right.
    """
    import hashlib

    from .snapshot import catalog
    from .snapshot.format import FILE, parse_snapshot_id

    name = parse_snapshot_id(snapshot_id)
    if name is None:
        return set()
    wanted = set(labels)
    same: set[str] = set()
    for e in catalog.load(store, name).entries:
        if e.type != FILE or e.label not in wanted or e.area not in areas:
            continue
        path = areas[e.area] / e.path
        try:
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode) or st.st_size != e.size:
                continue
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        except OSError:
            continue
        if h.hexdigest() == e.sha256:
            same.add(e.label)
    return same


def restore_target_problem(config: Config, to: Path) -> Optional[str]:
    """Why ``restore --to`` must not write into ``to`` (None when it may).

    A copy restored where the app's own files live would be read back by the next checkpoint as app data:
    inside the app root (also through a symlink that resolves into it), the scratch directory (pinned files
    and fractfs' state), a [dirs] directory on the Volume, or the checkpoint area itself.
    """
    lexical = Path(os.path.abspath(to))
    as_app_data = "the next checkpoint would store the restored copy as the app's own data"
    places = [(config.root, f"the app root {config.root}", as_app_data),
              (config.scratch, f"the scratch directory {config.scratch} (pinned files and fractfs' state)",
               as_app_data)]
    if config.dirs_root is not None:
        places += [(config.dirs_root / d, f"the [dirs] directory {d!r} on the Volume ({config.dirs_root / d})",
                    "the app would find the restored copy among its own files") for d in config.dirs]
    if config.is_posix_store and config.checkpoint_location is not None:
        places.append((Path(config.checkpoint_location), f"the checkpoint area {config.checkpoint_location}",
                       "the restored files would be mixed into the checkpoint store"))
    for base, what, why in places:
        if any(_inside(t, b) for t in (lexical, _real(lexical)) for b in (base, _real(base))):
            return f"--to {to} is inside {what}: {why}. Restore into a directory outside it"
    return None


def restore_areas(config: Config, to: Optional[Path]) -> dict[str, Path]:
    """Where each snapshot area goes: the app's own areas, or DIR and DIR/.fractfs-scratch."""
    if to is None:
        return areas_for(config)
    to = Path(os.path.abspath(to))
    return {"root": to, "scratch": to / SCRATCH_SUBDIR}


def blob_total(store: Store, snapshot_ids: Optional[Sequence[str]]) -> int:
    """Bytes of the packs/objects the given snapshots reference (None = all blobs): a progress total."""
    from .snapshot import catalog
    from .snapshot.format import OBJECTS, PACKS, blob_id_from_key, parse_snapshot_id

    sizes: dict[str, int] = {}
    for prefix in (PACKS, OBJECTS):
        for key, size in store.list(prefix):
            bid = blob_id_from_key(key)
            if bid is not None:
                sizes[bid] = size
    if snapshot_ids is None:
        return sum(sizes.values())
    wanted: set[str] = set()
    for sid in snapshot_ids:
        name = parse_snapshot_id(sid)
        if name is None:
            continue
        with contextlib.suppress(CorruptCheckpointError):
            m = catalog.load(store, name)
            wanted.update(e.pack or e.object for e in m.entries if e.pack or e.object)
    return sum(sizes.get(b, 0) for b in wanted)
