"""The command line: global options, one subcommand per module, and the one place errors become exit codes."""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from types import ModuleType
from typing import Any, NoReturn, Optional

from .._version import __version__
from ..errors import ConfigError, FractfsError, SnapshotNotFound
from . import doctor, explain, prune, restore, snapshots, status, sync, verify
from .exitcodes import EXIT_INTERRUPTED, EXIT_PROBLEM, EXIT_USAGE, UsageError
from .output import PROG, Out, one_line, setup_logging

#: The subcommands, in the order ``fractfs --help`` lists them. Each module has HELP, DESCRIPTION,
#: configure(parser) and run(args, out) -> exit code.
COMMANDS: dict[str, ModuleType] = {
    "status": status,
    "sync": sync,
    "restore": restore,
    "snapshots": snapshots,
    "explain": explain,
    "doctor": doctor,
    "verify": verify,
    "prune": prune,
}

_EPILOG = """\
exit codes: 0 ok, 1 a problem was found, 2 usage or configuration error.
Configuration is read like fractfs.init(): --root or fractfs_ROOT, fractfs_* variables, .fractfs.toml.
"""


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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Look after a fractfs app: tiers, checkpoints, restores, checks.",
                     epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _add_globals(parser, sub=False)
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, module in COMMANDS.items():
        p = subs.add_parser(name, help=module.HELP, description=module.DESCRIPTION, epilog=_EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=module.run)
        p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
        _add_globals(p, sub=True)
        module.configure(p)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one ``fractfs`` command; returns its exit code (see fractfs.cli.exitcodes)."""
    parser = build_parser()
    err = Out(json_mode=False, quiet=False, verbose=False)
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        err.error(one_line(exc))
        return EXIT_USAGE
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    undo_logging = setup_logging(args)
    out = Out(json_mode=bool(getattr(args, "json", False)), quiet=args.quiet, verbose=args.verbose)
    try:
        code: int = args.func(args, out)
        sys.stdout.flush()
        return code
    except (UsageError, ConfigError, SnapshotNotFound) as exc:
        if args.debug:
            traceback.print_exc()
        message = one_line(exc)
        if args.root:  # the loader names its caller's parameter; here that is the --root option
            message = message.replace("(init(root=...))", "(--root)")
        out.error(message)
        return EXIT_USAGE
    except FractfsError as exc:
        if args.debug:
            traceback.print_exc()
        out.error(one_line(exc))
        return EXIT_PROBLEM
    except KeyboardInterrupt:
        out.error("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (`fractfs snapshots | head`): not an error worth a message
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_PROBLEM
    except OSError as exc:
        if args.debug:
            traceback.print_exc()
        where = f" ({exc.filename})" if exc.filename else ""
        out.error(f"{exc.strerror or exc}{where}")
        return EXIT_PROBLEM
    except Exception as exc:  # noqa: BLE001 - one line unless --debug, as promised
        if args.debug:
            raise
        out.error(f"unexpected {type(exc).__name__}: {one_line(exc)} (run with --debug for the traceback)")
        return EXIT_PROBLEM
    finally:
        undo_logging()
