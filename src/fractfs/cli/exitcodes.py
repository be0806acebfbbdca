"""The ``fractfs`` command's exit codes (README "The fractfs command" lists them) and its usage error."""
from __future__ import annotations

#: Everything went as asked.
EXIT_OK = 0
#: A problem was found: damage, a failed check, an unreachable store, a refused or failed action.
EXIT_PROBLEM = 1
#: A usage or configuration error: bad arguments, an invalid config, no such snapshot.
EXIT_USAGE = 2
#: Interrupted by Ctrl-C (128 + SIGINT, as a shell reports it).
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """Bad command line: exit 2 with one line."""
