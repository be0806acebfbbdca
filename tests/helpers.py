"""Small helpers tests import directly (``from helpers import run_py``)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"


class SubprocessFailed(AssertionError):
    """A child interpreter exited non-zero; the message carries its stdout and stderr."""


def run_py(
    code: str,
    *,
    env: Mapping[str, str | None] | None = None,
    cwd: str | Path | None = None,
    timeout: float = 120,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (``sys.executable``) and return the completed process.

    ``code`` is dedented, so tests can write it as an indented triple-quoted string. The child inherits
    ``os.environ`` (which the session fixtures point at the test S3 server) updated with ``env``, where a
    value of ``None`` removes that variable. ``src/`` is put on
    PYTHONPATH so the child imports this checkout even without an editable install. With ``check`` (the
    default) a non-zero exit raises SubprocessFailed showing the exit code, stdout and stderr.
    """
    child_env = dict(os.environ)
    for name, value in (env or {}).items():
        if value is None:
            child_env.pop(name, None)
        else:
            child_env[name] = value
    pp = child_env.get("PYTHONPATH", "")
    child_env["PYTHONPATH"] = str(SRC) + (os.pathsep + pp if pp else "")
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=child_env,
        cwd=str(cwd) if cwd is not None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if check and proc.returncode != 0:
        raise SubprocessFailed(
            f"child python exited {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        )
    return proc
