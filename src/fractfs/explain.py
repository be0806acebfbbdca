"""``fractfs explain PATH``: a path's tier, the rule that decided it, where its bytes live, whether (and in
which snapshot) it is checkpointed.

Read-only and built from the config alone (no Runtime): the command runs in another process than the app.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from .config import Config, relpath_for
from .errors import FractfsError
from .layout import pin_for, pin_in_place
from .provision import Capabilities, Pin, plan_pins, probe_volume
from .selection import BundleInfo, Selection, bundle_for
from .tiers import Tier, TierResolver


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
                    from .stores.open import open_store

                    m, _ = catalog.newest_valid(open_store(self.config))
                    if m is not None:
                        self._snapshot = (m.id, {(e.area, e.path) for e in m.entries})
                except FractfsError as exc:
                    self.store_error = str(exc)
        return self._snapshot

    def bundle(self) -> BundleInfo:
        """The bundle ``fractfs sync`` would leave out: the app's record, else what init() would detect."""
        if self._bundle is None:
            self._bundle = bundle_for(self.config, self.resolver, self._latest_paths)
        return self._bundle

    def _latest_paths(self) -> Optional[set[tuple[str, str]]]:
        _sid, paths = self.snapshot()
        return paths if self._store_lookup and self.store_error is None else None

    def relpath(self, arg: str) -> str:
        """App-relative path for a command-line argument: absolute, or relative to the current directory
        when that is inside the app (like git), else relative to the app root."""
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
