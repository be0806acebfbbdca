"""Small helpers tests import directly: ``run_py`` (app code in a fresh interpreter) and ``Node`` (an app on a
node whose local disk can be wiped)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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


class Node:
    """An app root and scratch on 'node-local' disk, a Volume, and app code run in fresh interpreters."""

    def __init__(self, base: Path, volume: str | Path, config: str = "", *, bundle: dict[str, str] | None = None,
                 env: dict[str, str] | None = None):
        self.base = base
        self.root = base / "app"
        self.scratch = base / "scratch"
        self.volume = str(volume)
        self.config = config
        self.bundle = bundle or {}
        self.extra_env = env or {}
        self.deploy()

    def deploy(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / ".fractfs.toml").write_text(self.config)
        for rel, content in self.bundle.items():
            p = self.root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            if content.startswith("->"):
                os.symlink(content[2:], p)
            else:
                p.write_text(content)

    def wipe(self) -> None:
        """A cold restart: node-local disk is gone, the bundle is deployed again."""
        shutil.rmtree(self.root)
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.deploy()

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.lower().startswith("fractfs_")}
        env.update({
            "fractfs_VOLUME_ROOT": self.volume,
            "fractfs_SCRATCH": str(self.scratch),
            "fractfs_SYNC_INTERVAL": "3600",
            "fractfs_SYNC_MODE": "interval",  # checkpoints when the test says so (or by interval), not on change
            "fractfs_LEASE_TIMEOUT": "2",
        })
        if "://" in self.volume:
            env["fractfs_BACKEND"] = "s3"
        env.update(self.extra_env)
        env.update(extra)
        return env

    def run(self, body: str, *, check: bool = True, timeout: float = 120, **extra: str) -> Any:
        """Run ``body`` (after ``import json, os, sys, fractfs``) in the app root; returns the last JSON line
        it printed (or the CompletedProcess when ``check`` is False)."""
        code = "import json, os, sys, fractfs\n" + textwrap.dedent(body)
        proc = run_py(code, env=self.env(**extra), cwd=self.root, check=check, timeout=timeout)
        if not check:
            return proc
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("{", "["))]
        return json.loads(lines[-1]) if lines else None
