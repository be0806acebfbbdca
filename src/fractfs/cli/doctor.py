"""``fractfs doctor``: every check as ``ok|warn|FAIL  what  — fix``; exit 1 if anything FAILs."""
from __future__ import annotations

import argparse

from ..doctor import doctor
from .common import config_of
from .exitcodes import EXIT_OK, EXIT_PROBLEM
from .output import Out, library_quiet

HELP = "check the Volume, the store, the config and the [dirs] links; print each finding with a fix"
DESCRIPTION = (
    "Check the config, the Volume (reachable, writable, symlinks, rename, other filesystem, free space), "
    "the store (list, write a probe object), the newest snapshot, scratch and the [dirs] links. Prints "
    "`ok|warn|FAIL  what  — fix` per finding; exit 1 if anything FAILs.")


def configure(p: argparse.ArgumentParser) -> None:
    del p  # no options of its own


def run(args: argparse.Namespace, out: Out) -> int:
    cfg = config_of(args, quiet_warnings=True)
    with library_quiet(args):
        findings = doctor(cfg)
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
