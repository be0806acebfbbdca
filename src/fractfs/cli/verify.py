"""``fractfs verify``: read back and hash every object a snapshot references; exit 1 on any damage."""
from __future__ import annotations

import argparse
from typing import Optional

from ..report import human_bytes
from ..snapshot.format import short_id
from .common import config_of, resolve_snapshot, store_of
from .exitcodes import EXIT_OK, EXIT_PROBLEM
from .output import Out, library_quiet, plural, shorten_ids

HELP = "read back and hash every stored object of a snapshot; exit 1 on any damage"
DESCRIPTION = (
    "Read back every object a snapshot references and check each file's sha256. Exit 1 on any damage, "
    "naming the damaged objects and files.")


def configure(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group()
    which.add_argument("--snapshot", metavar="ID", help="verify this snapshot (default: the newest valid one)")
    which.add_argument("--all", action="store_true", help="verify every snapshot")


def run(args: argparse.Namespace, out: Out) -> int:
    from .. import snapshot
    from ..snapshot import catalog
    from ..snapshot.maint import blob_total
    from ..stores.counting import CountingStore

    cfg = config_of(args)
    store = store_of(cfg)
    target: Optional[str]
    if args.all:
        target = "all"
    elif args.snapshot:
        target = resolve_snapshot(store, args.snapshot)
    else:
        target = None
    counting = CountingStore(store)
    total: Optional[int] = None
    if out.shows_progress():
        with library_quiet(args):
            if target == "all":
                total = blob_total(store, None)
            elif target is not None:
                total = blob_total(store, [target])
            else:
                m, _ = catalog.newest_valid(store)
                total = blob_total(store, [m.id]) if m is not None and m.id else 0
    with library_quiet(args), out.progress("verify", total, lambda: counting.read_bytes):
        res = snapshot.verify(counting, target, transfers=cfg.transfers)
    if out.json_mode:
        out.json({"ok": res.ok, "snapshots": res.snapshots, "invalid_snapshots": res.invalid_snapshots,
                  "files_checked": res.files_checked, "bytes_checked": res.bytes_checked,
                  "damaged_files": res.damaged_files, "bad_objects": res.bad_blobs,
                  "duration": round(res.duration, 3)})
        return EXIT_OK if res.ok else EXIT_PROBLEM
    if not res.snapshots and not res.invalid_snapshots:
        out.line(f"no snapshots in {store.url}: nothing to verify")
        return EXIT_OK
    for msg in res.invalid_snapshots:
        out.line(f"damaged snapshot  {shorten_ids(msg)}")
    for key in res.bad_blobs:
        out.line(f"damaged object    {key}")
    for msg in res.damaged_files:
        out.line(f"damaged file      {shorten_ids(msg)}")
    which = ", ".join(short_id(s) for s in res.snapshots) or "none"
    summary = (f"{plural(len(res.snapshots), 'snapshot')} ({which}): {plural(res.files_checked, 'file')}, "
               f"{human_bytes(res.bytes_checked)} read back and hashed in {res.duration:.2f}s")
    if res.ok:
        out.line(f"ok: {summary}; no damage")
        return EXIT_OK
    out.line(f"DAMAGE: {summary}; {plural(len(res.damaged_files), 'damaged file')} in "
             f"{plural(len(res.bad_blobs), 'object')}, {plural(len(res.invalid_snapshots), 'damaged snapshot')}")
    return EXIT_PROBLEM
