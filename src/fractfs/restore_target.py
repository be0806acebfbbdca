"""Where ``fractfs restore`` may write, and what a dry run of it would really write.

The library's restore (fractfs.snapshot.restore) writes into whatever areas it is given; the command adds
the operator's rules: ``--to DIR`` must be outside everything fractfs owns, and ``DIR`` gets the scratch
area under :data:`SCRATCH_SUBDIR`.
"""
from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from .config import Config, is_within, real_path
from .selection import areas_for

if TYPE_CHECKING:
    from .stores.base import Store

#: Where ``restore --to DIR`` puts the scratch area (pinned [local] files of [dirs] directories).
SCRATCH_SUBDIR = ".fractfs-scratch"


def restore_target_problem(config: Config, to: Path) -> Optional[str]:
    """Why ``restore --to`` must not write into ``to`` (None when it may).

    A copy restored where the app's own files live would be read back by the next checkpoint as app data:
    inside the app root (also through a symlink that resolves into it), the scratch directory (pinned files
    and fractfs' state), a [dirs] directory on the Volume, or the checkpoint area itself.
    """
    lexical = Path(os.path.abspath(to))
    if os.path.islink(lexical):
        # a link would send the files wherever it points (another user may have planted it): say where, and
        # let the operator name the real directory if that is really where the files should go
        return (f"--to {to} is a symbolic link to {os.readlink(lexical)}; fractfs does not restore through "
                f"links. Give the real directory ({real_path(lexical)}) if that is where the files should go")
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
        if any(is_within(t, b) for t in (lexical, real_path(lexical)) for b in (base, real_path(base))):
            return f"--to {to} is inside {what}: {why}. Restore into a directory outside it"
    return None


def restore_areas(config: Config, to: Optional[Path]) -> dict[str, Path]:
    """Where each snapshot area goes: the app's own areas, or DIR and DIR/.fractfs-scratch."""
    if to is None:
        return areas_for(config)
    to = Path(os.path.abspath(to))
    return {"root": to, "scratch": to / SCRATCH_SUBDIR}


def identical_on_disk(store: Store, snapshot_id: str, labels: Sequence[str], areas: dict[str, Path]) -> set[str]:
    """Which of ``labels`` (``area:relpath`` files of the snapshot) already have the same bytes on disk.

    A dry-run restore plans by existence only; with --overwrite the real run then skips identical files, so
    the dry run would overstate what it writes. This reads and hashes the local candidates to say it right.
    """
    from .snapshot import catalog
    from .snapshot.chunked import holds
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
            if holds(os.fspath(path), e):
                same.add(e.label)
        except OSError:
            continue
    return same
