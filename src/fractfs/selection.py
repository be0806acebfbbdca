"""What a checkpoint contains: the walk filter built from the tiers, the [dirs] layout and the deploy bundle.

Two areas are walked: ``root`` (the app tree on node-local disk) and ``scratch`` (where pinned ``[local]``
files inside ``[dirs]`` directories really live, mirrored under their app-relative path).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

from .config import CONFIG_FILENAME, Config
from .localfile import write_replace
from .tiers import Tier, TierResolver

log = logging.getLogger("fractfs")

Want = Callable[[str, str, bool], bool]
BUNDLE_FILE = "bundle.json"


def areas_for(config: Config) -> dict[str, Path]:
    return {"root": config.root, "scratch": config.scratch}


def _relative_inside(path: Path, base: Path) -> Optional[str]:
    try:
        rel = path.relative_to(base)
    except ValueError:
        return None
    return rel.as_posix() if rel.parts else ""


class Selection:
    """The ``want(area, relpath, is_dir)`` callback handed to the snapshot engine."""

    def __init__(self, config: Config, resolver: TierResolver, bundle: Iterable[str] = ()):
        self.config = config
        self.resolver = resolver
        self.bundle = frozenset(bundle)
        # node-local directories that hold fractfs' own state, or scratch itself when it sits in the root
        self._root_skip = {r for r in (_relative_inside(config.scratch, config.root),) if r}
        self._state_rel = _relative_inside(config.state_dir, config.scratch) or ".fractfs-state"
        self._dir_prefixes = tuple(d + "/" for d in config.dirs)

    def _under_dirs(self, relpath: str) -> bool:
        return self.resolver.dir_of(relpath) is not None

    def _leads_to_dir(self, relpath: str) -> bool:
        return any(p.startswith(relpath + "/") for p in self._dir_prefixes)

    def want_root(self, relpath: str, is_dir: bool) -> bool:
        if relpath in self._root_skip or self._under_dirs(relpath):
            return False  # [dirs] are symlinks to the Volume: durable already, never walked
        if self.resolver.is_ignored(relpath, is_dir):
            return False
        if not is_dir and relpath in self.bundle:
            return False
        return True

    def want_scratch(self, relpath: str, is_dir: bool) -> bool:
        if relpath == self._state_rel or relpath.startswith(self._state_rel + "/"):
            return False
        if is_dir:
            # only descend where pinned files of [dirs] directories can be
            return self._under_dirs(relpath) or self._leads_to_dir(relpath)
        return self._under_dirs(relpath) and self.resolver.resolve(relpath) == Tier.LOCAL

    def __call__(self, area: str, relpath: str, is_dir: bool) -> bool:
        if area == "root":
            return self.want_root(relpath, is_dir)
        if area == "scratch":
            return self.want_scratch(relpath, is_dir)
        return False


def present_files(config: Config, resolver: TierResolver) -> set[str]:
    """Checkpoint-eligible files now in the root tree (before bundle exclusion)."""
    sel = Selection(config, resolver)
    found: set[str] = set()
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        base = config.root / rel_dir if rel_dir else config.root
        try:
            with os.scandir(base) as it:
                entries = list(it)
        except OSError:
            continue
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            is_dir = entry.is_dir(follow_symlinks=False)
            if not sel.want_root(rel, is_dir):
                continue
            if is_dir:
                stack.append(rel)
            else:
                found.add(rel)
    return found


def detect_bundle(config: Config, resolver: TierResolver, known_state: set[str]) -> set[str]:
    """Files already here at start-up that no checkpoint knows: the image's deploy bundle.

    On a cold node the checkpointed runtime state is not here yet, so what is present is what the platform
    shipped. Subtracting the newest snapshot's paths keeps real runtime files (warm disk) checkpointed.
    """
    bundle = present_files(config, resolver) - known_state
    if config.config_file is not None:
        bundle.add(CONFIG_FILENAME)
    return bundle


def save_bundle(config: Config, bundle: set[str]) -> None:
    """Persisted for the `fractfs` command, which runs in another process than the app."""
    try:
        config.state_dir.mkdir(parents=True, exist_ok=True)
        write_replace(config.state_dir / BUNDLE_FILE,
                      json.dumps({"root": str(config.root), "files": sorted(bundle)}).encode())
    except OSError as exc:
        log.warning("could not record the deploy bundle in %s: %s", config.state_dir, exc)


def load_bundle(config: Config) -> Optional[set[str]]:
    try:
        data = json.loads((config.state_dir / BUNDLE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if data.get("root") != str(config.root):
        return None
    return set(data.get("files", []))


@dataclass
class BundleInfo:
    """The deploy bundle a checkpoint taken from outside the app (``fractfs sync``) leaves out."""

    files: set[str]
    #: "recorded" (persisted by the app's init() on this node), "detected" (computed now, as init() would),
    #: "off" (auto_ignore_bundle = false) or "unknown" (no record and the store could not be asked)
    source: str


def bundle_for(config: Config, resolver: TierResolver,
               latest_paths: Callable[[], Optional[set[tuple[str, str]]]]) -> BundleInfo:
    """The app's own bundle record on this node, else what init() would detect now.

    ``latest_paths()`` gives the ``(area, relpath)`` set of the newest snapshot (None when the store cannot
    be asked); it is only called when there is no record, since loading a manifest can take a second.
    """
    if not config.auto_ignore_bundle:
        return BundleInfo(set(), "off")
    recorded = load_bundle(config)
    if recorded is not None:
        return BundleInfo(recorded, "recorded")
    paths = latest_paths()
    if paths is None:
        return BundleInfo({CONFIG_FILENAME} if config.config_file else set(), "unknown")
    known = {rel for area, rel in paths if area == "root"}
    return BundleInfo(detect_bundle(config, resolver, known), "detected")
