"""``fractfs prune``: keep the newest N valid snapshots, drop the rest and every object none of them uses."""
from __future__ import annotations

import argparse
import contextlib

from ..report import human_bytes, read_raw_app_status
from ..snapshot.format import short_id
from .common import check_lease, config_of, node_id, store_of
from .exitcodes import EXIT_OK, EXIT_PROBLEM, UsageError
from .output import Out, library_quiet, plural

HELP = "drop old snapshots and the objects no kept snapshot uses"
DESCRIPTION = (
    "Keep the newest N valid snapshots, delete older ones and every object none of the kept ones uses. "
    "Do not run it while another node is checkpointing to the same store (the lease, when present, "
    "makes it refuse unless --force).")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keep", type=int, metavar="N", help="snapshots to keep (default: keep_snapshots)")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed; change nothing")
    p.add_argument("--force", action="store_true", help="prune even if another node holds the lease")


def run(args: argparse.Namespace, out: Out) -> int:
    from .. import snapshot
    from ..checkpointer import exclusive_lease
    from ..snapshot.statcache import StateLock

    cfg = config_of(args)
    keep = args.keep if args.keep is not None else cfg.keep_snapshots
    if keep < 1:
        raise UsageError(f"--keep {keep}: keep at least 1 snapshot")
    store = store_of(cfg)
    if not args.dry_run:
        check_lease(store, force=args.force, action="prune while that node may be checkpointing")
    held = contextlib.ExitStack()
    if not args.dry_run:
        # hold the lease while deleting: a checkpoint elsewhere (the app, `fractfs sync`) cannot be between
        # uploading its objects and committing the manifest that references them
        held.enter_context(exclusive_lease(store, node_id(), cfg.lease_timeout, force=args.force))
        state = cfg.state_dir
        if state.parent.is_dir():
            # a checkpoint by the app on this node holds this lock: its new objects are unreferenced until its
            # manifest lands, so prune must not run in the middle of one
            state.mkdir(parents=True, exist_ok=True)
            held.enter_context(StateLock(state))
    # the newest snapshot this node's app knows: a store listing that does not show it yet is stale, and
    # pruning against it would delete blobs that snapshot needs
    app = read_raw_app_status(cfg)
    known = app.get("last_snapshot_id") if app is not None else None
    with held, library_quiet(args):
        res = snapshot.prune(store, keep, dry_run=args.dry_run,
                             newest_known=known if isinstance(known, str) else None)
    if res.stale_listing:
        out.note(f"the store does not list snapshot {known} yet (stale listing); nothing was pruned, "
                 "try again later")
        return EXIT_PROBLEM
    if out.json_mode:
        out.json({"dry_run": res.dry_run, "keep": keep, "kept": res.kept,
                  "deleted_snapshots": res.deleted_snapshots, "damaged": res.damaged,
                  "deleted_objects": res.deleted_blobs, "freed_bytes": res.freed_bytes,
                  "referenced_objects": res.referenced_blobs})
        return EXIT_PROBLEM if res.damaged else EXIT_OK
    verb = "would remove" if args.dry_run else "removed"
    for sid in res.deleted_snapshots:
        out.line(f"{verb} snapshot  {short_id(sid)}")
    for key in res.deleted_blobs:
        if out.verbose:
            out.line(f"{verb} object    {key}")
    for sid in res.damaged:
        out.line(f"damaged snapshot left in place  {short_id(sid)} (newer than the oldest kept one)")
    prefix = "dry run: " if args.dry_run else ""
    out.line(f"{prefix}kept {plural(len(res.kept), 'snapshot')}, {verb} {plural(len(res.deleted_snapshots), 'snapshot')} "
             f"and {plural(len(res.deleted_blobs), 'unreferenced object')} ({human_bytes(res.freed_bytes)})")
    return EXIT_PROBLEM if res.damaged else EXIT_OK
