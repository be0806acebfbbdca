"""``fractfs doctor``: check the config, the Volume, the store, the newest snapshot, scratch and the [dirs]
links, and say for each finding what to do about it.

Built from the config alone (no Runtime). What it touches: temp names on the Volume and in scratch for the
capability probes (as ``init()`` does) and one probe object in the checkpoint area, each removed again.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from .config import CONFIG_FILENAME, Config
from .errors import FractfsError
from .layout import dir_state, pin_in_place
from .provision import Capabilities, plan_pins, probe_volume
from .report import human_bytes, iso_utc, read_lease
from .selection import load_bundle
from .tiers import TierResolver

if TYPE_CHECKING:
    from .stores.base import Store

#: Below this much free space on the Volume doctor warns.
LOW_SPACE = 1 << 30


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
        self._lease(store)
        return self.findings

    def _lease(self, store: Optional[Store]) -> None:
        lease = read_lease(store)
        if lease is None:
            return
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
            from .snapshot import catalog
            from .stores.open import open_store

            store = open_store(cfg)
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
        from .snapshot.format import short_id

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
