"""``fractfs snapshots``: the snapshots on the store, oldest first."""
from __future__ import annotations

import argparse

from ..report import human_bytes, iso_utc
from ..snapshot.format import short_id
from .common import config_of, store_of
from .exitcodes import EXIT_OK
from .output import Out, library_quiet, plural, when

HELP = "list the snapshots in the store"
DESCRIPTION = "List the snapshots: id, time, files, size, node (oldest first)."


def configure(p: argparse.ArgumentParser) -> None:
    del p  # no options of its own


def run(args: argparse.Namespace, out: Out) -> int:
    from .. import snapshot

    store = store_of(config_of(args))
    with library_quiet(args):
        infos = snapshot.list_snapshots(store)
    if out.json_mode:
        out.json([{"id": i.id, "short": short_id(i.id), "seq": i.seq, "time": i.time,
                   "time_iso": iso_utc(i.time), "files": i.files, "bytes": i.bytes, "node": i.node,
                   "parent": i.parent, "valid": i.valid, "error": i.error} for i in infos])
        return EXIT_OK
    if not infos:
        out.line(f"no snapshots in {store.url}")
        return EXIT_OK
    rows = [(short_id(i.id), when(i.time), str(i.files), human_bytes(i.bytes), i.node) if i.valid
            else (short_id(i.id), "DAMAGED", "", "", i.error or "") for i in infos]
    head = ("ID", "TIME", "FILES", "SIZE", "NODE")
    widths = [max(len(r[c]) for r in [head, *rows]) for c in range(4)]
    for r in [head, *rows]:
        out.line(f"{r[0].ljust(widths[0])}  {r[1].ljust(widths[1])}  {r[2].rjust(widths[2])}  "
                 f"{r[3].rjust(widths[3])}  {r[4]}")
    damaged = sum(1 for i in infos if not i.valid)
    out.info(plural(len(infos), "snapshot") + (f", {damaged} damaged (see `fractfs verify --all`)" if damaged else ""))
    return EXIT_OK
