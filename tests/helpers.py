"""Small helpers tests import directly: ``run_py`` (app code in a fresh interpreter), ``Node`` (an app on a
node whose local disk can be wiped), and ``App``/``Child``/``read_back`` (an app whose code runs in real
processes, for signals, exit hooks and the lease)."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from fractfs.stores import open_store

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
            # every cold start of these apps restores through the helper process (snapshot/helper.py), which
            # production uses from 4096 small files on: the whole-app suites (hostile manifests, crashes,
            # lifecycle) then cover it, while the in-process snapshot tests cover the single-process path
            "fractfs_RESTORE_HELPER_MIN_FILES": "1",
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


# -- apps that run as real processes (signals, exit hooks, the lease) --------------------------------------

APP_CONFIG = '[ignore]\npatterns = ["*.tmp"]\n'

PRELUDE = """\
import json, os, signal, sys, time, logging
logging.basicConfig(level=logging.INFO, format="%(relativeCreated)d %(threadName)s %(message)s")
import fractfs
def out(**kw):
    print(json.dumps(kw), flush=True)
def put(path, text):
    # atomic, so a checkpoint never sees a half-written value (*.tmp is ignored)
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
"""


class App(Node):
    """One node (``base/name``) pointed at a shared Volume (path or s3:// URL), running the PRELUDE'd app code
    that reports through JSON lines; ``spawn`` keeps it running for signals."""

    def __init__(self, base: Path, volume: str, name: str = "node", config: str = APP_CONFIG):
        if "://" not in volume:
            Path(volume).mkdir(parents=True, exist_ok=True)  # the mounted Volume exists before the app starts
        super().__init__(base / name, volume, config, env={} if "://" in volume else {"fractfs_BACKEND": "volumes"})

    def run(self, body: str, *, check: bool = True, timeout: float = 120, **extra: str) -> Any:
        return super().run(PRELUDE + textwrap.dedent(body), check=check, timeout=timeout, **extra)

    def spawn(self, body: str, **extra: str) -> Child:
        env = self.env(**extra)
        env["PYTHONPATH"] = str(SRC) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return Child(PRELUDE + textwrap.dedent(body), env, self.root, self.base / "stderr.log")

    def store(self) -> Any:
        return open_store(self.volume.rstrip("/") + "/_checkpoint")


class Child:
    """A running app process whose JSON stdout lines can be awaited."""

    def __init__(self, code: str, env: dict[str, str], cwd: Path, stderr_path: Path):
        self.stderr_path = stderr_path
        self._err = open(stderr_path, "w")  # noqa: SIM115 - closed in finish()
        self.proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=str(cwd), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=self._err, text=True)
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.lines.put(json.loads(line))

    def expect(self, key: str, value: Any = None, timeout: float = 20) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {key}={value!r} from the child; stderr:\n{self.stderr()}")
            try:
                msg = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    raise AssertionError(f"child exited {self.proc.returncode} before {key}={value!r}; "
                                         f"stderr:\n{self.stderr()}") from None
                continue
            self.seen.append(msg)
            if key in msg and (value is None or msg[key] == value):
                return msg

    def signal(self, sig: int) -> float:
        t = time.time()
        self.proc.send_signal(sig)
        return t

    def stop_like_the_platform(self, grace: float) -> tuple[int, float]:
        """SIGTERM, then SIGKILL after ``grace`` seconds if the process is still there, as Databricks Apps,
        Kubernetes and systemd do. Returns the exit code (``-SIGKILL`` if the platform had to kill it) and
        how long the process took to go, for the report: a test asserts on the exit code, which holds on a
        loaded machine as long as fractfs keeps to its own budget (grace minus 10 %, at most 1 s)."""
        sent = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        took = time.monotonic() - sent
        return self.finish(), took

    def finish(self, timeout: float = 30) -> int:
        try:
            rc = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._err.close()
        self._reader.join(2)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return rc

    def stderr(self) -> str:
        if not self._err.closed:
            self._err.flush()
        return self.stderr_path.read_text()


def read_back(app: App, *names: str) -> dict[str, Optional[str]]:
    """Cold-start ``app`` (wiped) and read ``names`` after init() has restored."""
    app.wipe()
    found: dict[str, Optional[str]] = app.run(f"""
        fractfs.init(start_daemon=False)
        out(**{{n: (open(n).read() if os.path.exists(n) else None) for n in {list(names)!r}}})
        fractfs.shutdown(final_sync=False)
    """)
    return found


def files_under(p: Path) -> list[str]:
    """Every file below ``p``, relative to it, sorted."""
    return sorted(os.path.relpath(os.path.join(d, f), p) for d, _dirs, fs in os.walk(p) for f in fs)
