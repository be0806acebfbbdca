"""What several commands share: reading the config as ``init()`` does, opening the store, naming a snapshot,
and refusing to write while another node holds the single-writer lease."""
from __future__ import annotations

import argparse
import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Config, load_config
from ..errors import FractfsError, SnapshotNotFound
from ..report import read_lease

if TYPE_CHECKING:
    from ..stores.base import Store

log = logging.getLogger("fractfs")


def config_of(args: argparse.Namespace, *, quiet_warnings: bool = False) -> Config:
    """The app's config from ``--root`` (else fractfs_ROOT / the current directory), like ``init()``.

    ``quiet_warnings``: the command prints the config warnings itself (status, doctor); don't also log them.
    """
    root = Path(args.root) if args.root else None
    if not quiet_warnings:
        return load_config(root)
    previous = log.level
    log.setLevel(logging.ERROR if previous <= logging.WARNING else previous)
    try:
        return load_config(root)
    finally:
        log.setLevel(previous)


def store_of(config: Config) -> Store:
    """The checkpoint store, refusing passthrough (a config error, exit 2) and an unmounted Volume."""
    from ..stores.open import open_store

    return open_store(config)


def node_id() -> str:
    """How a checkpoint taken by this command names its node (the app's carry a random suffix instead)."""
    return f"{socket.gethostname()}:{os.getpid()}:cli"


def resolve_snapshot(store: Store, text: str) -> str:
    """The full id of the snapshot the operator named (full id, sequence number, hash prefix, short form)."""
    from ..snapshot import catalog

    try:
        return catalog.resolve_id(catalog.list_names(store), text).id
    except SnapshotNotFound as exc:
        raise SnapshotNotFound(f"{exc}; `fractfs snapshots` lists them") from None


def check_lease(store: Store, *, force: bool, action: str) -> None:
    """Refuse to write checkpoints (or prune) while another node holds the single-writer lease."""
    lease = read_lease(store)
    if not lease or not lease.get("blocks_writers"):
        return
    holder = str(lease.get("holder") or "another node")
    if force:
        log.warning("fractfs: %s holds the lease; going ahead because of --force", holder)
        return
    if lease.get("state") == "unknown":
        why = f"the lease at {lease.get('key')} cannot be read ({lease.get('error')})"
    else:
        why = (f"{holder} holds the single-writer lease (heartbeat {lease.get('heartbeat_age')}s ago): it is "
               "the node that writes checkpoints to this store")
    raise FractfsError(f"{why}. Refusing to {action}; pass --force to do it anyway")
