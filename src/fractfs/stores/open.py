"""Opening the checkpoint store: the one place that picks a backend and refuses an unmounted Volume.

``init()`` (the runtime) and the ``fractfs`` command both open their store through :func:`open_store`, so
they agree on which backend a config means and on when the Volume counts as missing.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError, StoreError, VolumeNotMounted
from .base import Store
from .posix import PosixStore

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger("fractfs")


def check_volume_mounted(config: Config) -> None:
    """Raise :class:`VolumeNotMounted` when the Volume directory of a mounted-path backend is missing.

    A PosixStore lists a missing directory as empty and creates it on the first write, so an unmounted Volume
    would look like "no snapshots yet": a restore would find nothing and checkpoints would fill node-local
    disk while claiming durability. fractfs never creates the Volume root itself.
    """
    if not config.is_posix_store or config.volume_root is None:
        return
    vol = Path(config.volume_root)
    if not vol.is_dir():
        where = config.sources.get("volume_root", "volume_root")
        raise VolumeNotMounted(
            f"the Volume {vol} ({where}) does not exist or is not mounted; mount it there or fix volume_root / "
            "fractfs_VOLUME_ROOT. fractfs does not create it, so an unmounted Volume never silently becomes "
            "local disk")


def open_store(config: Config) -> Store:
    """The checkpoint store of ``config``, after :func:`check_volume_mounted`.

    Passthrough mode (no volume configured) is a ConfigError: there is no store to open. A missing optional
    backend dependency (s3fs, databricks-sdk) is a StoreError naming the extra to install.
    """
    if config.passthrough or config.checkpoint_location is None:
        from ..config import CONFIG_FILENAME

        toml = config.config_file or config.root / CONFIG_FILENAME
        raise ConfigError(f"no volume configured (passthrough mode): there is no checkpoint store; set "
                          f"volume_root in {toml} or fractfs_VOLUME_ROOT")
    check_volume_mounted(config)
    # Looked up on the package at call time, not bound at import: the fault-injection tests and the
    # torture benchmark wrap every store the app opens by replacing ``fractfs.stores.open_store``.
    from . import open_store as open_location_now

    try:
        return open_location_now(config.checkpoint_location, backend=config.backend,
                                 fast_path=config.s3_fast_path)
    except ImportError as exc:
        extra = "databricks" if config.backend == "databricks" else "s3"
        raise StoreError(f"backend {config.backend!r} needs {exc.name or 'an extra package'}: "
                         f"pip install 'fractfs[{extra}]'") from exc


def open_location(location: str, *, backend: str | None = None, transfers: int = 16,
                  fast_path: bool = True) -> Store:
    """The store for ``location`` (exported as ``fractfs.stores.open_store``).

    ``backend`` is the configured backend name (``volumes``/``local``/``s3``/``databricks``):

    - ``databricks`` (or a ``dbfs:`` location) → the Files API (:class:`DatabricksFilesStore`);
    - ``volumes`` with a ``/Volumes/...`` path that is not mounted here → the Files API as well: a Databricks
      App container reaches Unity Catalog Volumes over REST, not necessarily through a FUSE mount;
    - otherwise the location decides: ``scheme://...`` → :class:`FsspecStore`, a path → :class:`PosixStore`.

    ``fast_path`` is ``Config.s3_fast_path``, handed to :class:`FsspecStore` (it matters for S3 only).
    """
    if not location:
        raise ValueError("open_store: empty location; set fractfs_VOLUME_ROOT (a mounted path or a URL)")
    if backend == "databricks" or (backend is None and location.startswith("dbfs:")):
        return _files_api(location, transfers, "backend 'databricks'")
    if backend == "volumes" and location.startswith("/Volumes/") and not _mounted_volume(location):
        return _files_api(location, transfers, "/Volumes is not mounted here")
    if "://" in location:
        from .fsspec import FsspecStore  # on first use: it pulls in asyncio, ssl, http and xml

        return FsspecStore(location, fast_path=fast_path)
    return PosixStore(location)


def _mounted_volume(location: str) -> bool:
    """True when the Volume part of ``/Volumes/<catalog>/<schema>/<volume>/...`` exists as a directory."""
    parts = location.strip("/").split("/")
    return os.path.isdir("/" + "/".join(parts[:4]))


def _files_api(location: str, transfers: int, why: str) -> Store:
    from .databricks import DatabricksFilesStore  # optional dependency (databricks-sdk)

    log.info("fractfs: using the Databricks Files API for %s (%s)", location, why)
    store: Store = DatabricksFilesStore(location, transfers=transfers)
    return store
