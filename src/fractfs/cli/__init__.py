"""The ``fractfs`` command: look at and repair what the library does, without writing Python.

Runs in its own process, next to (or instead of) the app: it reads the same configuration as ``init()``
(``--root``, ``fractfs_*`` variables, ``.fractfs.toml``) but never provisions, restores into a live tree
behind the app's back, or starts a daemon. Exit codes (fractfs.cli.exitcodes): 0 ok, 1 a problem was found
(damage, a failed check, an unreachable store), 2 a usage or configuration error, 130 interrupted. Errors
are one line on stderr; ``--debug`` adds the traceback.

One module per command (status, sync, restore, snapshots, explain, doctor, verify, prune), each calling the
library; ``main`` parses the command line and turns errors into exit codes; ``output`` prints.
"""
from __future__ import annotations

from .main import build_parser, main

__all__ = ["build_parser", "main"]
