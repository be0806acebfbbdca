"""``fractfs sync``: one checkpoint now, with the selection the app would use."""
from __future__ import annotations

import argparse

from ..report import human_bytes
from ..snapshot.format import short_id
from .common import check_lease, config_of, node_id, store_of
from .exitcodes import EXIT_OK
from .output import Out, app_path, plural

HELP = "take one checkpoint now and print what was stored"
DESCRIPTION = (
    "Take one checkpoint now, with the same selection as the app (tiers and the deploy bundle the app "
    "recorded). Refuses when another node holds the single-writer lease, unless --force.")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--content-hash", action="store_true",
                   help="hash every file instead of trusting size and mtime (catches same-size edits)")
    p.add_argument("--force", action="store_true", help="checkpoint even if another node holds the lease")


def run(args: argparse.Namespace, out: Out) -> int:
    from .. import snapshot
    from ..checkpointer import one_shot
    from ..selection import Selection, bundle_for
    from ..tiers import TierResolver

    cfg = config_of(args)
    store = store_of(cfg)  # passthrough: a config error (exit 2), as for every store command
    check_lease(store, force=args.force, action="checkpoint from here")
    resolver = TierResolver(cfg)
    bundle = bundle_for(cfg, resolver, lambda: snapshot.latest_paths(store))
    if bundle.source == "detected":
        out.note(f"no deploy bundle recorded on this node; leaving out the {len(bundle.files)} files that no "
                 "snapshot knows, as init() would")
    # the same prepare -> fence -> commit as the app, holding the lease for the whole run: a concurrent prune
    # elsewhere cannot delete what this run is about to commit (a pre-check above gave the friendlier message)
    res = one_shot(cfg, store, Selection(cfg, resolver, bundle.files), node_id=node_id(), force=args.force,
                   content_hash=cfg.content_hash or args.content_hash)
    stored = [app_path(p) for p in res.stored]
    if out.json_mode:
        out.json({"snapshot_id": res.snapshot_id, "parent": res.parent, "stored": stored,
                  "deleted": [app_path(p) for p in res.deleted],
                  "skipped_busy": [app_path(p) for p in res.skipped_busy],
                  "missed_deadline": [app_path(p) for p in res.missed_deadline],
                  "files": res.files, "bytes": res.bytes, "uploaded_bytes": res.uploaded_bytes,
                  "duration": round(res.duration, 3), "bundle": bundle.source,
                  "bundle_file_count": len(bundle.files)})
        return EXIT_OK
    if res.snapshot_id is None:
        out.line(f"no changes: the newest snapshot is current ({plural(res.files, 'file')}, "
                 f"{human_bytes(res.bytes)})")
    else:
        out.line(f"snapshot {short_id(res.snapshot_id)} saved: {len(stored)} stored, {len(res.deleted)} "
                 f"deleted, {human_bytes(res.uploaded_bytes)} uploaded; {plural(res.files, 'file')}, "
                 f"{human_bytes(res.bytes)} in total ({res.duration:.2f}s)")
    for p in stored:
        out.line(f"  stored   {p}")
    for p in res.deleted:
        out.line(f"  deleted  {app_path(p)}")
    for p in res.skipped_busy:
        out.line(f"  busy     {app_path(p)} (changing while read; next checkpoint)")
    return EXIT_OK
