"""``fractfs status``: configuration, tiers, store, last snapshot, warnings and lease, from outside the app."""
from __future__ import annotations

import argparse
from typing import Any, Optional

from ..report import OfflineStatus, human_bytes, offline_status
from ..snapshot.format import short_id
from .common import config_of
from .exitcodes import EXIT_OK, EXIT_PROBLEM
from .output import Out, plural, when

HELP = "configuration, tiers, store, last snapshot, warnings and lease"
DESCRIPTION = (
    "Configuration, tiers, store, last snapshot, warnings and lease, read from outside the app (no daemon "
    "is started). Probes the Volume like init() does. Exit 1 if the store cannot be read or anything is "
    "unhealthy (the problems are listed, and under `problems` in --json).")


def configure(p: argparse.ArgumentParser) -> None:
    del p  # no options of its own


def run(args: argparse.Namespace, out: Out) -> int:
    st = offline_status(config_of(args, quiet_warnings=True))
    if out.json_mode:
        out.json(st)
    else:
        show(st, out)
    # a monitor polls this: 1 whenever something needs a human (the store unreadable, the Volume gone, the
    # app reporting a problem), with the problems listed
    return EXIT_PROBLEM if st["store_error"] or not st["healthy"] else EXIT_OK


def show(st: OfflineStatus, out: Out) -> None:
    """The human-readable status, one ``label  value`` line per topic."""
    config_file = st["config_file"] or "no .fractfs.toml: environment and defaults"
    out.line(f"root        {st['root']}  ({config_file})")
    if st["passthrough"]:
        out.line("store       none: passthrough mode (no volume_root), nothing is linked or checkpointed")
    else:
        out.line(f"store       {st['checkpoint_location']}  (backend {st['backend']})")
    out.line(f"scratch     {st['scratch']}")
    caps = st.get("capabilities")
    if caps:
        if caps.get("exists") and caps.get("writable"):
            yes = {True: "yes", False: "no"}
            out.line(f"volume      {caps['path']}: {caps.get('fs_type') or 'unknown fs'}, symlinks "
                     f"{yes[bool(caps['symlinks'])]}, rename {yes[bool(caps['rename'])]}, other filesystem "
                     f"{yes[bool(caps['cross_device'])]}, {human_bytes(caps.get('free_bytes'))} free")
        else:
            out.line(f"volume      {caps['path']}: NOT USABLE ({caps.get('error')})")
    _tiers(st, out)
    _snapshots(st, out)
    if st["bundle_file_count"] is None:
        bundle = "not recorded on this node (the app has not run init() here)" if st["auto_ignore_bundle"] \
            else "off (auto_ignore_bundle = false)"
    else:
        bundle = f"{st['bundle_file_count']} files recorded by the app, left out of checkpoints"
    out.line(f"bundle      {bundle}")
    lease = st.get("lease")
    if lease:
        if lease.get("error"):
            out.line(f"lease       ? ({lease['error']})")
        else:
            out.line(f"lease       {lease.get('holder')}: {lease.get('state')} (heartbeat "
                     f"{lease.get('heartbeat_age')}s ago, timeout {lease.get('timeout'):g}s)")
    elif not st["passthrough"] and not st["store_error"]:
        out.line("lease       none")
    if st["sync_interval"]:
        sync = f"every {st['sync_interval']:g}s ({st['sync_mode']})"
    else:
        sync = ("manual (sync_interval = 0: no background checkpoints; only `fractfs sync`, sync_now() and "
                "the final one at exit)")
    out.line(f"sync        {sync}, content_hash {'on' if st['content_hash'] else 'off'}, "
             f"{_budgets(st['cpu_budget'], st['upload_budget'])}")
    _app(st, out)
    if st["healthy"]:
        out.line("health      ok")
    else:
        out.line("health      UNHEALTHY")
        for p in st["problems"]:
            out.line(f"  - {p['kind']}: {p['message']}")
    if st["warnings"]:
        out.line("warnings")
        for w in st["warnings"]:
            out.line(f"  - {w}")


def _tiers(st: OfflineStatus, out: Out) -> None:
    out.line("tiers")
    if st["dirs"]:
        width = max(len(d) for d in st["dirs"])
        for i, (d, info) in enumerate(st["dirs"].items()):
            head = "  dirs      " if i == 0 else "            "
            state = info.get("state", "?")
            out.line(f"{head}{d.ljust(width)} -> {info.get('target')}  ({state})")
    else:
        out.line("  dirs      (none)")
    pats = st["patterns"]
    out.line(f"  local     {', '.join(pats['local']) or '(none)'}")
    out.line(f"  ignore    {', '.join(pats['ignore']) or '(none)'}")
    out.line("  default   everything else: node-local, checkpointed")
    if st["pins"]:
        unpinned = set(st.get("unpinned") or ())
        out.line("pins        " + ", ".join(p + (" (not possible)" if p in unpinned else "") for p in st["pins"]))


def _snapshots(st: OfflineStatus, out: Out) -> None:
    if st["passthrough"]:
        return
    if st["store_error"]:
        out.line(f"snapshots   ? (store error: {st['store_error']})")
    else:
        out.line(f"snapshots   {st['snapshot_count']} (keep {st['keep_snapshots']})")
    if st["last_snapshot_id"]:
        out.line(f"last        {short_id(st['last_snapshot_id'])}  {when(st['last_snapshot_time'])}  "
                 f"{plural(st['files'] or 0, 'file')}  {human_bytes(st['bytes'])}  node {st['last_snapshot_node']}")
    elif not st["store_error"]:
        out.line("last        none yet")


def _app(st: OfflineStatus, out: Out) -> None:
    app = st.get("app")
    if not app:
        out.line("app         no status recorded on this node")
    elif app.get("alive"):
        last = app.get("last_sync_time")
        synced = f", last checkpoint {when(last)}" if isinstance(last, (int, float)) else ""
        role = "writer" if app.get("writer") else "not the writer"
        out.line(f"app         running here (pid {app.get('pid')}, {role}{synced})")
        budget, window = app.get("budget"), app.get("data_loss_window")
        if budget:
            out.line(f"cost        {_cost(budget)}")
        if window:
            out.line(f"loss window {_window(window)}")
    else:
        out.line(f"app         not running here (last seen pid {app.get('pid')})")


def _share(fraction: float) -> str:
    return f"{fraction * 100:.3g} %"


def _budgets(cpu: Optional[float], upload: Optional[float]) -> str:
    text = f"cpu budget {_share(cpu)} of a core" if cpu else "no cpu budget"
    return text + (f", upload budget {human_bytes(upload)}/s" if upload else "")


def _cost(b: dict[str, Any]) -> str:
    """What the background checkpoints used over the last minute, against their budgets."""
    cpu = f"cpu {_share(float(b.get('cpu_used') or 0))} of a core over the last minute"
    cpu += f" (budget {_share(b['cpu_budget'])})" if b.get("cpu_budget") else " (no budget)"
    if b.get("cpu_measured") == "process":
        cpu += ", counting the whole process"
    up = f"upload {human_bytes(b.get('upload_rate') or 0)}/s"
    up += f" (budget {human_bytes(b['upload_budget'])}/s)" if b.get("upload_budget") else ""
    held = f"; next checkpoint held {b['held_for']:g}s by the {b['held_by']}" if b.get("held_by") else ""
    return f"{cpu}, {up}{held}"


def _window(w: dict[str, Any]) -> str:
    """``~1.2 s (target 1 s; stretched by cpu budget)``: the recent data-loss window and why it is longer."""
    target = f"target {'debounce' if w.get('basis') == 'changes' else 'interval'} {w.get('target'):g} s"
    why = f"; stretched by {w['stretched_by']}" if w.get("stretched_by") else ""
    seconds = w.get("seconds")
    if seconds is None:
        return f"nothing unsaved recently ({target}{why})"
    return f"up to ~{seconds:.3g} s recently ({target}{why})"
