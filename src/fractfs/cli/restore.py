"""``fractfs restore``: a snapshot back into the app root (missing files only) or into another directory."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from ..report import human_bytes
from ..restore_target import SCRATCH_SUBDIR, identical_on_disk, restore_areas, restore_target_problem
from ..snapshot.format import short_id
from .common import check_lease, config_of, resolve_snapshot, store_of
from .exitcodes import EXIT_OK, EXIT_PROBLEM, UsageError
from .output import Out, dest, library_quiet, plural, shorten_ids

HELP = "restore a snapshot into the app root (missing files only) or another directory"
DESCRIPTION = (
    "Point-in-time restore. By default into the app root and scratch, writing only files that are "
    "missing (as at start-up). With --to DIR the app tree goes to DIR and pinned scratch files to "
    f"DIR/{SCRATCH_SUBDIR}.")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--snapshot", metavar="ID", help="snapshot to restore: an id from `fractfs snapshots`, its "
                                                    "sequence number or a unique hash prefix (default: newest valid)")
    p.add_argument("--to", metavar="DIR", help="restore into DIR instead of the app root")
    p.add_argument("--overwrite", action="store_true", help="also replace existing files whose content differs")
    p.add_argument("--dry-run", action="store_true", help="list what would be written; change nothing")
    p.add_argument("--force", action="store_true",
                   help="restore into the app root even if a live node holds the lease")


def run(args: argparse.Namespace, out: Out) -> int:
    from .. import snapshot
    from ..snapshot import catalog
    from ..snapshot.format import parse_snapshot_id
    from ..stores.counting import CountingStore

    cfg = config_of(args)
    to = Path(args.to) if args.to else None
    if to is not None and to.exists() and not to.is_dir():
        raise UsageError(f"--to {to}: exists and is not a directory")
    problem = restore_target_problem(cfg, to) if to is not None else None
    if problem is not None:
        raise UsageError(problem)
    store = store_of(cfg)
    sid = resolve_snapshot(store, args.snapshot) if args.snapshot else None
    areas = restore_areas(cfg, to)
    if to is None and not args.dry_run:
        # writing into the app's own places while a live node checkpoints them rolls its state back (and that
        # node would store the rollback): only when no node holds the lease, or with --force
        check_lease(store, force=args.force, action="restore into the app's files while that node runs")
    if to is not None:
        out.note(f"restoring into {areas['root']}; pinned scratch files go to {areas['scratch']}")
    counting = CountingStore(store)
    total: Optional[int] = None
    if not args.dry_run and out.shows_progress():
        # the bytes the restore will fetch, approximately: the sizes of the files it plans to write
        with library_quiet(args):
            plan = snapshot.restore(store, areas, snapshot_id=sid, overwrite=args.overwrite, dry_run=True)
            name = parse_snapshot_id(plan.snapshot_id) if plan.snapshot_id else None
            if name is not None:
                want = set(plan.restored)
                total = sum(e.size for e in catalog.load(store, name).entries if e.label in want)
    with library_quiet(args), out.progress("restore", total, lambda: counting.read_bytes):
        res = snapshot.restore(counting, areas, snapshot_id=sid, overwrite=args.overwrite,
                               dry_run=args.dry_run, transfers=cfg.transfers)
    if args.dry_run and args.overwrite and res.snapshot_id and res.restored:
        # the real run skips files whose bytes already match; say the same in the dry run
        same = identical_on_disk(store, res.snapshot_id, res.restored, areas)
        res.restored = [lb for lb in res.restored if lb not in same]
        res.skipped_existing = sorted(set(res.skipped_existing) | same)
    problems = bool(res.errors or res.refused) or res.snapshot_id is None
    if out.json_mode:
        out.json({"snapshot_id": res.snapshot_id, "target": str(areas["root"]),
                  "scratch_target": str(areas["scratch"]), "dry_run": args.dry_run,
                  "overwrite": args.overwrite, "restored": res.restored, "skipped_existing": res.skipped_existing,
                  "refused": res.refused, "errors": res.errors, "fell_back_from": res.fell_back_from,
                  "bytes": res.bytes, "duration": round(res.duration, 3)})
        return EXIT_PROBLEM if problems else EXIT_OK
    if res.snapshot_id is None:
        for msg in res.errors:
            out.line(f"error    {shorten_ids(msg)}")
        if not res.errors:
            out.line(f"nothing to restore: {store.url} holds no snapshot")
        return EXIT_PROBLEM
    for old in res.fell_back_from:
        out.line(f"warning  snapshot {short_id(old)} is damaged; used the previous valid one")
    target = areas["root"]
    kept = len(res.skipped_existing)
    if args.dry_run:
        out.line(f"dry run: would restore {plural(len(res.restored), 'file')} from snapshot "
                 f"{short_id(res.snapshot_id)} into {target}")
        for label in res.restored:
            out.line(f"  would write  {dest(label, areas)}")
    else:
        out.line(f"restored {plural(len(res.restored), 'file')} ({human_bytes(res.bytes)}) from snapshot "
                 f"{short_id(res.snapshot_id)} into {target} in {res.duration:.2f}s")
        if out.verbose:
            for label in res.restored:
                out.line(f"  wrote  {dest(label, areas)}")
    if kept:
        what = ("identical, left as is" if args.overwrite
                else "already present, kept (--overwrite replaces those that differ)")
        out.info(f"{plural(kept, 'file')} {what}")
        if out.verbose:
            for label in res.skipped_existing:
                out.line(f"  kept   {dest(label, areas)}")
    for msg in res.refused:
        out.line(f"refused  {shorten_ids(msg)}")
    for msg in res.errors:
        out.line(f"error    {shorten_ids(msg)}")
    return EXIT_PROBLEM if problems else EXIT_OK
