"""The ``fractfs`` command: look at and repair what the library does, without writing Python.

Runs in its own process, next to (or instead of) the app: it reads the same configuration as ``init()``
(``--root``, ``fractfs_*`` variables, ``.fractfs.toml``) but never provisions, restores into a live tree
behind the app's back, or starts a daemon. Exit codes: 0 ok, 1 a problem was found (damage, a failed check,
an unreachable store), 2 a usage or configuration error. Errors are one line on stderr; ``--debug`` adds the
traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable, NoReturn, Optional, TextIO

from . import __version__
from . import ops
from .config import Config, load_config
from .errors import ConfigError, FractfsError
from .localfile import private_dir
from .ops import SnapshotNotFound, human_bytes
from .runtime import iso_utc

log = logging.getLogger("fractfs")

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2
PROG = "fractfs"


class UsageError(Exception):
    """Bad command line: exit 2 with one line."""


# ---------------------------------------------------------------------------------------------------------
# Output


class Out:
    """Everything the command prints goes through here: stdout for results, stderr for notes and errors."""

    def __init__(self, *, json_mode: bool, quiet: bool, verbose: bool,
                 stdout: TextIO = sys.stdout, stderr: TextIO = sys.stderr):
        self.json_mode = json_mode
        self.quiet = quiet
        self.verbose = verbose
        self.stdout = stdout
        self.stderr = stderr

    def line(self, text: str = "") -> None:
        """A result line (suppressed by --json, whose document is the result)."""
        if not self.json_mode:
            print(text, file=self.stdout)

    def info(self, text: str) -> None:
        """A line worth seeing but not needed by a script (suppressed by -q and --json)."""
        if not self.quiet and not self.json_mode:
            print(text, file=self.stdout)

    def note(self, text: str) -> None:
        """A side remark on stderr (never mixed into --json output)."""
        if not self.quiet:
            print(f"{PROG}: {text}", file=self.stderr)

    def json(self, doc: Any) -> None:
        print(json.dumps(doc, indent=2, sort_keys=False, default=str), file=self.stdout)

    def progress(self, label: str, total: Optional[int], counter: Callable[[], int]) -> Progress:
        enabled = not self.quiet and _isatty(self.stderr)
        return Progress(label, total, counter, self.stderr, enabled=enabled)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """A one-line progress bar on stderr, redrawn with ``\\r`` from a background thread.

    Only drawn on a terminal: in a pipe or a log file the redraws would be noise. The work itself reports
    nothing; ``counter()`` (bytes read so far) is polled, so the library needs no progress hooks.
    """

    WIDTH = 24

    def __init__(self, label: str, total: Optional[int], counter: Callable[[], int], stream: TextIO,
                 *, enabled: bool, interval: float = 0.2):
        self.label = label
        self.total = total
        self.counter = counter
        self.stream = stream
        self.enabled = enabled
        self.interval = interval
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._started = time.monotonic()
        self._width = 0

    def render(self, done: int, elapsed: float) -> str:
        if self.total:
            frac = min(done / self.total, 1.0)
            filled = int(frac * self.WIDTH)
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            return (f"{self.label} [{bar}] {frac * 100:3.0f}%  {human_bytes(done)} / "
                    f"{human_bytes(self.total)}  {elapsed:.0f}s")
        return f"{self.label}  {human_bytes(done)}  {elapsed:.0f}s"

    def _draw(self) -> None:
        text = self.render(self.counter(), time.monotonic() - self._started)
        pad = max(self._width - len(text), 0)
        self._width = len(text)
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._draw()

    def __enter__(self) -> Progress:
        if self.enabled:
            self._started = time.monotonic()
            self._thread = threading.Thread(target=self._run, name="fractfs-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._draw()
        # leave the final state visible, then move on to a fresh line for the report
        self.stream.write("\n")
        self.stream.flush()


class _Formatter(logging.Formatter):
    """``fractfs: warning: message`` (library messages often start with ``fractfs:`` already)."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if msg.startswith("fractfs: "):
            msg = msg[len("fractfs: "):]
        text = f"{PROG}: {record.levelname.lower()}: {msg}"
        if record.exc_info and record.levelno >= logging.ERROR and log.isEnabledFor(logging.DEBUG):
            text += "\n" + self.formatException(record.exc_info)
        return text


def _setup_logging(args: argparse.Namespace) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    level = logging.WARNING
    if args.debug:
        level = logging.DEBUG
    elif args.verbose:
        level = logging.INFO
    elif args.quiet:
        level = logging.ERROR
    log.setLevel(level)
    handler.setLevel(level)
    log.addHandler(handler)
    log.propagate = False
    return handler


@contextlib.contextmanager
def _library_quiet(args: argparse.Namespace) -> Iterator[None]:
    """Hide library log lines that this command reports itself (verify's damage list, ...), unless -v."""
    if args.verbose or args.debug:
        yield
        return
    previous = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(previous)


# ---------------------------------------------------------------------------------------------------------
# Formatting helpers


def _when(ts: Optional[float]) -> str:
    if ts is None:
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


_short = ops.short_id
_FULL_ID = re.compile(r"\b\d{12}-[0-9a-f]{64}\b")


def _shorten_ids(text: str) -> str:
    """Library messages name snapshots by their 77-character id; print the short form instead."""
    return _FULL_ID.sub(lambda m: _short(m.group(0)), text)


def _n(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _app_path(label: str) -> str:
    """``root:a/b`` / ``scratch:a/b`` → the app-relative path (both areas mirror app-relative paths)."""
    return label.split(":", 1)[1] if ":" in label else label


def _dest(label: str, areas: dict[str, Path]) -> str:
    area, _, rel = label.partition(":")
    if area == "root":
        return rel
    base = areas.get(area)
    return str(base / rel) if base is not None else label


# ---------------------------------------------------------------------------------------------------------
# Commands


def _config(args: argparse.Namespace, *, quiet_warnings: bool = False) -> Config:
    root = Path(args.root) if args.root else None
    if not quiet_warnings:
        return load_config(root)
    # the command prints the config warnings itself; don't also log them
    previous = log.level
    log.setLevel(logging.ERROR if previous <= logging.WARNING else previous)
    try:
        return load_config(root)
    finally:
        log.setLevel(previous)


def _check_lease(store: Any, *, force: bool, action: str) -> None:
    """Refuse to write checkpoints (or prune) while another node holds the single-writer lease."""
    lease = ops.read_lease(store)
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


def cmd_status(args: argparse.Namespace, out: Out) -> int:
    cfg = _config(args, quiet_warnings=True)
    st = ops.offline_status(cfg)
    if out.json_mode:
        out.json(st)
        return EXIT_PROBLEM if st["store_error"] else EXIT_OK
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
    if not st["passthrough"]:
        if st["store_error"]:
            out.line(f"snapshots   ? (store error: {st['store_error']})")
        else:
            out.line(f"snapshots   {st['snapshot_count']} (keep {st['keep_snapshots']})")
        if st["last_snapshot_id"]:
            out.line(f"last        {_short(st['last_snapshot_id'])}  {_when(st['last_snapshot_time'])}  "
                     f"{_n(st['files'], 'file')}  {human_bytes(st['bytes'])}  node {st['last_snapshot_node']}")
        elif not st["store_error"]:
            out.line("last        none yet")
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
        when = f"every {st['sync_interval']:g}s ({st['sync_mode']})"
    else:
        when = ("manual (sync_interval = 0: no background checkpoints; only `fractfs sync`, sync_now() and "
                "the final one at exit)")
    out.line(f"sync        {when}, content_hash {'on' if st['content_hash'] else 'off'}")
    app = st.get("app")
    if app:
        if app.get("alive"):
            last = app.get("last_sync_time")
            synced = f", last checkpoint {_when(last)}" if isinstance(last, (int, float)) else ""
            role = "writer" if app.get("writer") else "not the writer"
            out.line(f"app         running here (pid {app.get('pid')}, {role}{synced})")
        else:
            out.line(f"app         not running here (last seen pid {app.get('pid')})")
    else:
        out.line("app         no status recorded on this node")
    if st["warnings"]:
        out.line("warnings")
        for w in st["warnings"]:
            out.line(f"  - {w}")
    return EXIT_PROBLEM if st["store_error"] else EXIT_OK


def cmd_sync(args: argparse.Namespace, out: Out) -> int:
    from . import snapshot
    from .selection import Selection, areas_for
    from .tiers import TierResolver

    cfg = _config(args)
    store = ops.open_checked_store(cfg)  # passthrough: a config error (exit 2), as for every store command
    _check_lease(store, force=args.force, action="checkpoint from here")
    resolver = TierResolver(cfg)
    bundle = ops.bundle_for(cfg, resolver, store)
    if bundle.source == "detected":
        out.note(f"no deploy bundle recorded on this node; leaving out the {len(bundle.files)} files that no "
                 "snapshot knows, as init() would")
    res = snapshot.checkpoint(
        store, areas_for(cfg), Selection(cfg, resolver, bundle.files), state_dir=cfg.state_dir,
        content_hash=cfg.content_hash or args.content_hash, node_id=ops.cli_node_id(),
        transfers=cfg.transfers, keep=cfg.keep_snapshots,
    )
    stored = [_app_path(p) for p in res.stored]
    if out.json_mode:
        out.json({"snapshot_id": res.snapshot_id, "parent": res.parent, "stored": stored,
                  "deleted": [_app_path(p) for p in res.deleted],
                  "skipped_busy": [_app_path(p) for p in res.skipped_busy],
                  "missed_deadline": [_app_path(p) for p in res.missed_deadline],
                  "files": res.files, "bytes": res.bytes, "uploaded_bytes": res.uploaded_bytes,
                  "duration": round(res.duration, 3), "bundle": bundle.source,
                  "bundle_file_count": len(bundle.files)})
        return EXIT_OK
    if res.snapshot_id is None:
        out.line(f"no changes: the newest snapshot is current ({_n(res.files, 'file')}, "
                 f"{human_bytes(res.bytes)})")
    else:
        out.line(f"snapshot {_short(res.snapshot_id)} saved: {len(stored)} stored, {len(res.deleted)} "
                 f"deleted, {human_bytes(res.uploaded_bytes)} uploaded; {_n(res.files, 'file')}, "
                 f"{human_bytes(res.bytes)} in total ({res.duration:.2f}s)")
    for p in stored:
        out.line(f"  stored   {p}")
    for p in res.deleted:
        out.line(f"  deleted  {_app_path(p)}")
    for p in res.skipped_busy:
        out.line(f"  busy     {_app_path(p)} (changing while read; next checkpoint)")
    return EXIT_OK


def cmd_snapshots(args: argparse.Namespace, out: Out) -> int:
    from . import snapshot

    cfg = _config(args)
    store = ops.open_checked_store(cfg)
    with _library_quiet(args):
        infos = snapshot.list_snapshots(store)
    if out.json_mode:
        out.json([{"id": i.id, "short": _short(i.id), "seq": i.seq, "time": i.time,
                   "time_iso": iso_utc(i.time), "files": i.files, "bytes": i.bytes, "node": i.node,
                   "parent": i.parent, "valid": i.valid, "error": i.error} for i in infos])
        return EXIT_OK
    if not infos:
        out.line(f"no snapshots in {store.url}")
        return EXIT_OK
    rows = [(_short(i.id), _when(i.time), str(i.files), human_bytes(i.bytes), i.node) if i.valid
            else (_short(i.id), "DAMAGED", "", "", i.error or "") for i in infos]
    head = ("ID", "TIME", "FILES", "SIZE", "NODE")
    widths = [max(len(r[c]) for r in [head, *rows]) for c in range(4)]
    for r in [head, *rows]:
        out.line(f"{r[0].ljust(widths[0])}  {r[1].ljust(widths[1])}  {r[2].rjust(widths[2])}  "
                 f"{r[3].rjust(widths[3])}  {r[4]}")
    damaged = sum(1 for i in infos if not i.valid)
    out.info(_n(len(infos), "snapshot") + (f", {damaged} damaged (see `fractfs verify --all`)" if damaged else ""))
    return EXIT_OK


def cmd_restore(args: argparse.Namespace, out: Out) -> int:
    from . import snapshot
    from .snapshot import catalog

    cfg = _config(args)
    to = Path(args.to) if args.to else None
    if to is not None and to.exists() and not to.is_dir():
        raise UsageError(f"--to {to}: exists and is not a directory")
    problem = ops.restore_target_problem(cfg, to) if to is not None else None
    if problem is not None:
        raise UsageError(problem)
    store = ops.open_checked_store(cfg)
    sid = ops.resolve_snapshot(store, args.snapshot) if args.snapshot else None
    areas = ops.restore_areas(cfg, to)
    if to is None and args.overwrite and not args.dry_run:
        _check_lease(store, force=args.force, action="overwrite files under the running app")
    if to is not None:
        out.note(f"restoring into {areas['root']}; pinned scratch files go to {areas['scratch']}")
    counting = ops.CountingStore(store)
    total: Optional[int] = None
    show = not args.dry_run and not out.quiet and _isatty(out.stderr)
    if show:
        # the bytes the restore will fetch, approximately: the sizes of the files it plans to write
        with _library_quiet(args):
            plan = snapshot.restore(store, areas, snapshot_id=sid, overwrite=args.overwrite, dry_run=True)
            if plan.snapshot_id:
                from .snapshot.format import parse_snapshot_id

                name = parse_snapshot_id(plan.snapshot_id)
                if name is not None:
                    m = catalog.load(store, name)
                    want = set(plan.restored)
                    total = sum(e.size for e in m.entries if e.label in want)
    with _library_quiet(args), out.progress("restore", total, lambda: counting.read_bytes):
        res = snapshot.restore(counting, areas, snapshot_id=sid, overwrite=args.overwrite,
                               dry_run=args.dry_run, transfers=cfg.transfers)
    if args.dry_run and args.overwrite and res.snapshot_id and res.restored:
        # the real run skips files whose bytes already match; say the same in the dry run
        same = ops.identical_on_disk(store, res.snapshot_id, res.restored, areas)
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
            out.line(f"error    {_shorten_ids(msg)}")
        if not res.errors:
            out.line(f"nothing to restore: {store.url} holds no snapshot")
        return EXIT_PROBLEM
    for old in res.fell_back_from:
        out.line(f"warning  snapshot {_short(old)} is damaged; used the previous valid one")
    target = areas["root"]
    kept = len(res.skipped_existing)
    if args.dry_run:
        out.line(f"dry run: would restore {_n(len(res.restored), 'file')} from snapshot "
                 f"{_short(res.snapshot_id)} into {target}")
        for label in res.restored:
            out.line(f"  would write  {_dest(label, areas)}")
    else:
        out.line(f"restored {_n(len(res.restored), 'file')} ({human_bytes(res.bytes)}) from snapshot "
                 f"{_short(res.snapshot_id)} into {target} in {res.duration:.2f}s")
        if out.verbose:
            for label in res.restored:
                out.line(f"  wrote  {_dest(label, areas)}")
    if kept:
        what = ("identical, left as is" if args.overwrite
                else "already present, kept (--overwrite replaces those that differ)")
        out.info(f"{_n(kept, 'file')} {what}")
        if out.verbose:
            for label in res.skipped_existing:
                out.line(f"  kept   {_dest(label, areas)}")
    for msg in res.refused:
        out.line(f"refused  {_shorten_ids(msg)}")
    for msg in res.errors:
        out.line(f"error    {_shorten_ids(msg)}")
    return EXIT_PROBLEM if problems else EXIT_OK


def cmd_explain(args: argparse.Namespace, out: Out) -> int:
    cfg = _config(args)
    ex = ops.Explainer(cfg, store_lookup=not args.offline)
    docs: list[dict[str, Any]] = []
    bad = 0
    for arg in args.paths:
        try:
            docs.append(ex.explain(arg))
        except FractfsError as exc:
            bad += 1
            print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
    if out.json_mode:
        out.json(docs)
    else:
        for i, d in enumerate(docs):
            if i:
                out.line()
            shown = d["path"] or "."
            if d["is_dir"] and d["path"]:
                shown += "/"
            out.line(shown + ("" if d["exists"] else "  (does not exist yet)"))
            out.line(f"  tier          {d['tier']}")
            out.line(f"  rule          {d['rule_text']}")
            out.line(f"  lives at      {d['location']}")
            out.line(f"                {d['location_note']}")
            out.line(f"  checkpointed  {'yes' if d['checkpointed'] else 'no'}: {d['checkpoint_reason']}")
            if d.get("in_snapshot") is not None:
                out.line(f"  in snapshot   {'yes' if d['in_snapshot'] else 'no'} "
                         f"(newest: {_short(d['snapshot_id'])})")
        if ex.store_error:
            out.note(f"store not consulted: {ex.store_error}")
    return EXIT_USAGE if bad else EXIT_OK


def cmd_doctor(args: argparse.Namespace, out: Out) -> int:
    cfg = _config(args, quiet_warnings=True)
    with _library_quiet(args):
        findings = ops.doctor(cfg)
    failed = any(f.level == "FAIL" for f in findings)
    if out.json_mode:
        out.json({"ok": not failed, "findings": [f.as_dict() for f in findings]})
        return EXIT_PROBLEM if failed else EXIT_OK
    for f in findings:
        if f.level == "ok" and out.quiet:
            continue
        line = f"{f.level.ljust(4)}  {f.what}"
        if f.fix and f.level != "ok":
            line += f"  — {f.fix}"
        out.line(line)
    counts = {lvl: sum(1 for f in findings if f.level == lvl) for lvl in ("ok", "warn", "FAIL")}
    out.info(f"{counts['ok']} ok, {counts['warn']} warnings, {counts['FAIL']} failures")
    return EXIT_PROBLEM if failed else EXIT_OK


def cmd_verify(args: argparse.Namespace, out: Out) -> int:
    from . import snapshot
    from .snapshot import catalog

    cfg = _config(args)
    store = ops.open_checked_store(cfg)
    target: Optional[str]
    if args.all:
        target = "all"
    elif args.snapshot:
        target = ops.resolve_snapshot(store, args.snapshot)
    else:
        target = None
    counting = ops.CountingStore(store)
    total: Optional[int] = None
    if not out.quiet and _isatty(out.stderr):
        with _library_quiet(args):
            if target == "all":
                total = ops.blob_total(store, None)
            elif target is not None:
                total = ops.blob_total(store, [target])
            else:
                m, _ = catalog.newest_valid(store)
                total = ops.blob_total(store, [m.id]) if m is not None and m.id else 0
    with _library_quiet(args), out.progress("verify", total, lambda: counting.read_bytes):
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
        out.line(f"damaged snapshot  {_shorten_ids(msg)}")
    for key in res.bad_blobs:
        out.line(f"damaged object    {key}")
    for msg in res.damaged_files:
        out.line(f"damaged file      {_shorten_ids(msg)}")
    which = ", ".join(_short(s) for s in res.snapshots) or "none"
    summary = (f"{_n(len(res.snapshots), 'snapshot')} ({which}): {_n(res.files_checked, 'file')}, "
               f"{human_bytes(res.bytes_checked)} read back and hashed in {res.duration:.2f}s")
    if res.ok:
        out.line(f"ok: {summary}; no damage")
        return EXIT_OK
    out.line(f"DAMAGE: {summary}; {_n(len(res.damaged_files), 'damaged file')} in "
             f"{_n(len(res.bad_blobs), 'object')}, {_n(len(res.invalid_snapshots), 'damaged snapshot')}")
    return EXIT_PROBLEM


def cmd_prune(args: argparse.Namespace, out: Out) -> int:
    from . import snapshot
    from .snapshot.engine import _StateLock

    cfg = _config(args)
    keep = args.keep if args.keep is not None else cfg.keep_snapshots
    if keep < 1:
        raise UsageError(f"--keep {keep}: keep at least 1 snapshot")
    store = ops.open_checked_store(cfg)
    if not args.dry_run:
        _check_lease(store, force=args.force, action="prune while that node may be checkpointing")
    state = cfg.state_dir
    lock: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if not args.dry_run and state.parent.is_dir():
        # a checkpoint by the app on this node holds this lock: its new objects are unreferenced until its
        # manifest lands, so prune must not run in the middle of one
        private_dir(state)
        lock = _StateLock(state)
    # the newest snapshot this node's app knows: a store listing that does not show it yet is stale, and
    # pruning against it would delete blobs that snapshot needs
    known = (ops.read_raw_app_status(cfg) or {}).get("last_snapshot_id")
    with lock, _library_quiet(args):
        res = snapshot.prune(store, keep, dry_run=args.dry_run,
                             newest_known=known if isinstance(known, str) else None)
    if res.stale_listing:
        out.note(f"fractfs: the store does not list snapshot {known} yet (stale listing); nothing was pruned, "
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
        out.line(f"{verb} snapshot  {_short(sid)}")
    for key in res.deleted_blobs:
        if out.verbose:
            out.line(f"{verb} object    {key}")
    for sid in res.damaged:
        out.line(f"damaged snapshot left in place  {_short(sid)} (newer than the oldest kept one)")
    prefix = "dry run: " if args.dry_run else ""
    out.line(f"{prefix}kept {_n(len(res.kept), 'snapshot')}, {verb} {_n(len(res.deleted_snapshots), 'snapshot')} "
             f"and {_n(len(res.deleted_blobs), 'unreferenced object')} ({human_bytes(res.freed_bytes)})")
    return EXIT_PROBLEM if res.damaged else EXIT_OK


# ---------------------------------------------------------------------------------------------------------
# Parser


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line on stderr (the caller prints it) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _add_globals(p: argparse.ArgumentParser, *, sub: bool) -> None:
    # On subcommands the defaults are SUPPRESS, so `fractfs --root X status` is not undone by the
    # subparser's own default: global options work before and after the command name.
    d: Any = argparse.SUPPRESS if sub else None
    g = p.add_argument_group("global options")
    g.add_argument("--root", metavar="DIR", default=d,
                   help="the app root holding .fractfs.toml (default: fractfs_ROOT, else the current directory "
                        "or the nearest parent with a .fractfs.toml)")
    g.add_argument("--debug", action="store_true", default=d if sub else False,
                   help="debug logging, and a traceback with errors")
    g.add_argument("-q", "--quiet", action="store_true", default=d if sub else False,
                   help="print only results and errors; no progress bar")
    g.add_argument("-v", "--verbose", action="store_true", default=d if sub else False,
                   help="more detail (every file written or deleted, library info logs)")


_COMMANDS = {
    "status": "configuration, tiers, store, last snapshot, warnings and lease",
    "sync": "take one checkpoint now and print what was stored",
    "restore": "restore a snapshot into the app root (missing files only) or another directory",
    "snapshots": "list the snapshots in the store",
    "explain": "show the tier of paths, the rule that decided it, where the bytes live and if they are saved",
    "doctor": "check the Volume, the store, the config and the [dirs] links; print each finding with a fix",
    "verify": "read back and hash every stored object of a snapshot; exit 1 on any damage",
    "prune": "drop old snapshots and the objects no kept snapshot uses",
}

_EPILOG = """\
exit codes: 0 ok, 1 a problem was found, 2 usage or configuration error.
Configuration is read like fractfs.init(): --root or fractfs_ROOT, fractfs_* variables, .fractfs.toml.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Look after a fractfs app: tiers, checkpoints, restores, checks.",
                     epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _add_globals(parser, sub=False)
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    def add(name: str, func: Callable[[argparse.Namespace, Out], int], *, json_flag: bool = True,
            description: str = "") -> argparse.ArgumentParser:
        p = subs.add_parser(name, help=_COMMANDS[name], description=description or _COMMANDS[name],
                            epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=func)
        if json_flag:
            p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
        _add_globals(p, sub=True)
        return p

    add("status", cmd_status, description=(
        "Configuration, tiers, store, last snapshot, warnings and lease, read from outside the app (no daemon "
        "is started). Probes the Volume like init() does. Exit 1 if the store cannot be read."))

    p = add("sync", cmd_sync, description=(
        "Take one checkpoint now, with the same selection as the app (tiers and the deploy bundle the app "
        "recorded). Refuses when another node holds the single-writer lease, unless --force."))
    p.add_argument("--content-hash", action="store_true",
                   help="hash every file instead of trusting size and mtime (catches same-size edits)")
    p.add_argument("--force", action="store_true", help="checkpoint even if another node holds the lease")

    p = add("restore", cmd_restore, description=(
        "Point-in-time restore. By default into the app root and scratch, writing only files that are "
        "missing (as at start-up). With --to DIR the app tree goes to DIR and pinned scratch files to "
        f"DIR/{ops.SCRATCH_SUBDIR}."))
    p.add_argument("--snapshot", metavar="ID", help="snapshot to restore: an id from `fractfs snapshots`, its "
                                                    "sequence number or a unique hash prefix (default: newest valid)")
    p.add_argument("--to", metavar="DIR", help="restore into DIR instead of the app root")
    p.add_argument("--overwrite", action="store_true", help="also replace existing files whose content differs")
    p.add_argument("--dry-run", action="store_true", help="list what would be written; change nothing")
    p.add_argument("--force", action="store_true",
                   help="with --overwrite into the app root: go ahead even if a live node holds the lease")

    add("snapshots", cmd_snapshots, description="List the snapshots: id, time, files, size, node (oldest first).")

    p = add("explain", cmd_explain, description=(
        "For each PATH: its tier, the rule that decided it (which pattern, from which table), where its bytes "
        "physically live, and whether it is checkpointed. Relative paths are taken from the current "
        "directory when it is inside the app, else from the app root."))
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--offline", action="store_true", help="do not ask the store whether the path is in the "
                                                          "newest snapshot")

    add("doctor", cmd_doctor, description=(
        "Check the config, the Volume (reachable, writable, symlinks, rename, other filesystem, free space), "
        "the store (list, write a probe object), the newest snapshot, scratch and the [dirs] links. Prints "
        "`ok|warn|FAIL  what  — fix` per finding; exit 1 if anything FAILs."))

    p = add("verify", cmd_verify, description=(
        "Read back every object a snapshot references and check each file's sha256. Exit 1 on any damage, "
        "naming the damaged objects and files."))
    which = p.add_mutually_exclusive_group()
    which.add_argument("--snapshot", metavar="ID", help="verify this snapshot (default: the newest valid one)")
    which.add_argument("--all", action="store_true", help="verify every snapshot")

    p = add("prune", cmd_prune, description=(
        "Keep the newest N valid snapshots, delete older ones and every object none of the kept ones uses. "
        "Do not run it while another node is checkpointing to the same store (the lease, when present, "
        "makes it refuse unless --force)."))
    p.add_argument("--keep", type=int, metavar="N", help="snapshots to keep (default: keep_snapshots)")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed; change nothing")
    p.add_argument("--force", action="store_true", help="prune even if another node holds the lease")
    return parser


# ---------------------------------------------------------------------------------------------------------
# Entry point


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        _error(_one_line(exc))
        return EXIT_USAGE
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    handler = _setup_logging(args)
    out = Out(json_mode=bool(getattr(args, "json", False)), quiet=args.quiet, verbose=args.verbose)
    try:
        code: int = args.func(args, out)
        sys.stdout.flush()
        return code
    except (UsageError, ConfigError, SnapshotNotFound) as exc:
        if args.debug:
            traceback.print_exc()
        message = _one_line(exc)
        if args.root:  # the loader names its caller's parameter; here that is the --root option
            message = message.replace("(init(root=...))", "(--root)")
        _error(message)
        return EXIT_USAGE
    except FractfsError as exc:
        if args.debug:
            traceback.print_exc()
        _error(_one_line(exc))
        return EXIT_PROBLEM
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except BrokenPipeError:
        # the reader went away (`fractfs snapshots | head`): not an error worth a message
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_PROBLEM
    except OSError as exc:
        if args.debug:
            traceback.print_exc()
        where = f" ({exc.filename})" if exc.filename else ""
        _error(f"{exc.strerror or exc}{where}")
        return EXIT_PROBLEM
    except Exception as exc:  # noqa: BLE001 - one line unless --debug, as promised
        if args.debug:
            raise
        _error(f"unexpected {type(exc).__name__}: {_one_line(exc)} (run with --debug for the traceback)")
        return EXIT_PROBLEM
    finally:
        log.removeHandler(handler)


if __name__ == "__main__":  # pragma: no cover - `python -m fractfs` goes through __main__.py
    sys.exit(main())
