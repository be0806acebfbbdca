"""``fractfs explain PATH...``: tier, deciding rule, where the bytes live, whether they are checkpointed."""
from __future__ import annotations

import argparse
from typing import Any

from ..errors import FractfsError
from ..explain import Explainer
from ..snapshot.format import short_id
from .common import config_of
from .exitcodes import EXIT_OK, EXIT_USAGE
from .output import Out, one_line

HELP = "show the tier of paths, the rule that decided it, where the bytes live and if they are saved"
DESCRIPTION = (
    "For each PATH: its tier, the rule that decided it (which pattern, from which table), where its bytes "
    "physically live, and whether it is checkpointed. Relative paths are taken from the current "
    "directory when it is inside the app, else from the app root.")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--offline", action="store_true", help="do not ask the store whether the path is in the "
                                                          "newest snapshot")


def run(args: argparse.Namespace, out: Out) -> int:
    ex = Explainer(config_of(args), store_lookup=not args.offline)
    docs: list[dict[str, Any]] = []
    bad = 0
    for arg in args.paths:
        try:
            docs.append(ex.explain(arg))
        except FractfsError as exc:
            bad += 1
            out.error(one_line(exc))
    if out.json_mode:
        out.json(docs)
    else:
        for i, d in enumerate(docs):
            if i:
                out.line()
            show(d, out)
        if ex.store_error:
            out.note(f"store not consulted: {ex.store_error}")
    return EXIT_USAGE if bad else EXIT_OK


def show(d: dict[str, Any], out: Out) -> None:
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
        out.line(f"  in snapshot   {'yes' if d['in_snapshot'] else 'no'} (newest: {short_id(d['snapshot_id'])})")
