"""SIGTERM torture: stop a busy app the way a platform does, wipe the node, and count what did not come back.

    python benchmarks/torture_sqlite.py --trials 10                        # all three cases
    python benchmarks/torture_sqlite.py --case sqlite --trials 200 --json sigterm.json

Issue 11, points 1 and 2. Every trial is one node life with the public API and default sync settings
(``watch`` mode, 300 s interval, ``grace`` 8 s) on a local-directory Volume, in fresh processes:

1. the app process calls ``fractfs.init()`` on an empty node, creates its data, makes sure one checkpoint
   holding it has landed (``sync_now()``), then works;
2. the parent sends SIGTERM at a random moment, and SIGKILL if the process is still there ``--kill-after``
   seconds later (Databricks: about 10 s, see docs/databricks.md);
3. the node-local root and scratch are wiped, a fresh process runs ``fractfs.init()`` (the cold start
   restores) and checks the restored files against what the app had acknowledged before the signal.

Cases:

``sqlite``
    A WAL-mode SQLite database of ``--db-mb`` (default 133-168 MB, drawn per trial: one table of random
    1 MiB blobs) that keeps committing small transactions, each bumping a counter. After each COMMIT returns
    the app writes the counter to a pipe; the parent takes the last value it read before sending SIGTERM.
    The restored database must pass ``PRAGMA integrity_check`` and hold a counter at least that high: every
    transaction committed before the signal is there. ``lost`` counts the missing ones.
``bigfile``
    A ``--big-mib`` (default 300 MiB) file of random bytes, checkpointed; then a 4 KiB edit at a random
    offset, and SIGTERM ``--edit-lead`` (0.3 s) later. The restored file must hold the edit.
``hot``
    A log appended every 3 ms and a progress file rewritten in place every 5 ms (one write() of a fixed-length
    record, so it is never empty or half written between writes), from app threads that keep writing through
    the final checkpoint. After the wipe both must exist, the log as complete consecutive
    lines, the progress file as one whole version, each at least as new as what the app saw just after the
    newest checkpoint that landed before the signal (or just after its start, when none had).

Also recorded per trial: the exit code and the seconds from SIGTERM to exit, and the final checkpoint's own
report (``status()["final_sync"]`` from the node's status file: duration, ok, files left out for lack of time).
The test suite runs a short version (``tests/test_sigterm_sqlite.py``); docs/reliability.md has the figures.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SRC = REPO / "src"

CASES = ("sqlite", "bigfile", "hot")
MiB = 1 << 20
DB = "app.sqlite"
BIG = "big.bin"
LOG = "hot.log"
PROGRESS = "progress.json"
CONFIG = '[ignore]\npatterns = ["*.tmp"]\n'


# ---------------------------------------------------------------------------------------------------------
# The app (child process). Reports on stdout as JSON lines; the sqlite case acknowledges commits on a pipe.

def _out(**kw: Any) -> None:
    print(json.dumps(kw), flush=True)


def _setup_logging(path: str) -> None:
    if path:
        import logging

        logging.basicConfig(filename=path, level=logging.INFO,
                            format="%(asctime)s %(threadName)s %(message)s")


def _build_db(path: Path, size_mb: float, autocheckpoint: int) -> None:
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("pragma journal_mode=wal")
    con.execute("pragma synchronous=normal")  # the usual WAL setting: a commit does not wait for fsync
    con.execute(f"pragma wal_autocheckpoint={autocheckpoint}")
    con.execute("create table blobs (id integer primary key, data blob)")
    con.execute("create table counter (k integer primary key, n integer)")
    con.execute("create table txlog (n integer primary key, at real, note blob)")
    con.execute("insert into counter values (1, 0)")
    left = int(size_mb * 1e6)
    con.execute("begin")
    i = 0
    while left > 0:
        n = min(MiB, left)
        con.execute("insert into blobs values (?, ?)", (i, os.urandom(n)))
        left -= n
        i += 1
    con.execute("commit")
    con.close()


def _app_sqlite(a: argparse.Namespace, fractfs: Any, root: Path) -> None:
    t = time.monotonic()
    _build_db(root / DB, a.db_mb, a.autocheckpoint)
    built = time.monotonic() - t
    fractfs.sync_now()  # the first checkpoint of the big database has landed before any SIGTERM
    ack = int(a.ack_fd)
    con = sqlite3.connect(root / DB, isolation_level=None)
    con.execute(f"pragma wal_autocheckpoint={a.autocheckpoint}")
    con.execute("pragma synchronous=normal")
    db_bytes = os.path.getsize(root / DB)
    _out(event="ready", sid=fractfs.status()["last_snapshot_id"], db_bytes=db_bytes, build_s=round(built, 2))
    n = 0
    while True:
        n += 1
        con.execute("begin immediate")
        con.execute("update counter set n = ? where k = 1", (n,))
        con.execute("insert into txlog values (?, ?, ?)", (n, time.time(), os.urandom(64)))
        con.execute("commit")
        # the COMMIT has returned: the transaction is the app's promise from here on
        os.write(ack, b"%d\n" % n)
        if a.commit_sleep:
            time.sleep(a.commit_sleep)


def _app_bigfile(a: argparse.Namespace, fractfs: Any, root: Path) -> None:
    size = a.big_mib * MiB
    with open(root / BIG, "wb") as f:
        left = size
        while left:
            n = min(8 * MiB, left)
            f.write(os.urandom(n))
            left -= n
    fractfs.sync_now()
    _out(event="ready", sid=fractfs.status()["last_snapshot_id"], bytes=size)
    if sys.stdin.readline().strip() != "edit":
        return
    off = random.Random(a.seed).randrange(size // 4096) * 4096
    patch = os.urandom(4096)
    fd = os.open(root / BIG, os.O_WRONLY)
    try:
        os.pwrite(fd, patch, off)
    finally:
        os.close(fd)
    _out(event="edited", offset=off, sha=hashlib.sha256(patch).hexdigest())
    while True:
        time.sleep(1)


class _Hot:
    """Two app threads: a log appended every 3 ms, a progress file rewritten in place every 5 ms."""

    def __init__(self, root: Path):
        self.root = root
        self.lines = 0
        self.progress = 0
        self.lock = threading.Lock()

    def log_loop(self) -> None:
        with open(self.root / LOG, "ab", buffering=0) as f:
            while True:
                with self.lock:
                    f.write(b"%d %.6f\n" % (self.lines, time.time()))
                    self.lines += 1
                time.sleep(0.003)

    def progress_loop(self) -> None:
        while True:
            with self.lock:
                self.progress += 1
                n = self.progress
            # Rewritten in place by one write() of a fixed-length record, never truncated first: every state
            # the file is ever in for longer than that write is one whole version. (With open("w") the file
            # sits empty whenever this thread waits for the GIL between the truncate and the write; under load
            # that lasted beyond the 30 ms racy window and an empty file was, correctly, checkpointed.)
            rec = json.dumps({"n": n, "at": time.time()}).encode().ljust(256) + b"\n"
            fd = os.open(self.root / PROGRESS, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.pwrite(fd, rec, 0)
            finally:
                os.close(fd)
            time.sleep(0.005)

    def now(self) -> tuple[int, int]:
        with self.lock:
            return self.lines, self.progress


def _app_hot(a: argparse.Namespace, fractfs: Any, root: Path) -> None:
    hot = _Hot(root)
    for fn in (hot.log_loop, hot.progress_loop):
        threading.Thread(target=fn, daemon=True, name=fn.__name__).start()
    time.sleep(0.2)
    fractfs.sync_now()  # stores both files from two agreeing reads (before issue 11: skipped them as busy)
    sid = fractfs.status()["last_snapshot_id"]
    lines, prog = hot.now()
    _out(event="ready", sid=sid, log_lines=lines, progress=prog)
    while True:
        # each time a checkpoint lands, note what the app has written by then: a lower bound for the restore
        time.sleep(0.02)
        now = fractfs.status()["last_snapshot_id"]
        if now != sid:
            sid = now
            lines, prog = hot.now()
            _out(event="ckpt", sid=sid, log_lines=lines, progress=prog)


def app_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", choices=CASES, required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--log", default="")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--db-mb", type=float, default=150.0)
    ap.add_argument("--autocheckpoint", type=int, default=1000)
    ap.add_argument("--commit-sleep", type=float, default=0.001)
    ap.add_argument("--ack-fd", default="")
    ap.add_argument("--big-mib", type=int, default=300)
    a = ap.parse_args(argv)
    _setup_logging(a.log)
    import fractfs

    root = Path(a.root)
    fractfs.init(root)
    {"sqlite": _app_sqlite, "bigfile": _app_bigfile, "hot": _app_hot}[a.case](a, fractfs, root)


def check_main(argv: list[str]) -> None:
    """The cold node: init() restores; report what came back."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", choices=CASES, required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--log", default="")
    ap.add_argument("--offset", type=int, default=-1)
    a = ap.parse_args(argv)
    _setup_logging(a.log)
    import fractfs

    root = Path(a.root)
    st = fractfs.init(root)
    info = st.get("restore") or {}
    out: dict[str, Any] = {"event": "checked", "snapshot_id": info.get("snapshot_id"),
                           "restore_errors": (info.get("errors") or [])[:5]}
    if a.case == "sqlite":
        p = root / DB
        out["exists"] = p.exists()
        if p.exists():
            con = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
            try:
                out["integrity"] = [r[0] for r in con.execute("pragma integrity_check")]
                out["counter"] = con.execute("select n from counter where k = 1").fetchone()[0]
                out["txlog_max"] = con.execute("select max(n) from txlog").fetchone()[0]
            except sqlite3.Error as exc:
                out["integrity"] = [f"{type(exc).__name__}: {exc}"]
            finally:
                con.close()
    elif a.case == "bigfile":
        p = root / BIG
        out["exists"] = p.exists()
        if p.exists():
            out["size"] = p.stat().st_size
            with open(p, "rb") as f:
                f.seek(a.offset)
                out["sha"] = hashlib.sha256(f.read(4096)).hexdigest()
    else:
        p, q = root / LOG, root / PROGRESS
        out["log_exists"], out["progress_exists"] = p.exists(), q.exists()
        if p.exists():
            raw = p.read_bytes()
            lines = raw.split(b"\n")[:-1]  # a partial last line (an append caught mid-write) does not count
            good = 0
            for i, ln in enumerate(lines):
                if not ln.startswith(b"%d " % i):
                    break
                good += 1
            out["log_lines"] = good
            out["log_consistent"] = good == len(lines)
        if q.exists():
            try:
                out["progress"] = int(json.loads(q.read_text())["n"])
            except (ValueError, KeyError, TypeError) as exc:
                out["progress_error"] = f"{type(exc).__name__}: {exc}"[:200]
    fractfs.shutdown(final_sync=False)
    _out(**out)


# ---------------------------------------------------------------------------------------------------------
# The driver

@dataclass
class Trial:
    case: str
    n: int
    ok: bool = False
    problems: list[str] = field(default_factory=list)
    delay: float = 0.0           #: seconds from "ready" (or the edit) to SIGTERM
    acked: int = 0               #: sqlite: last commit acknowledged before SIGTERM
    restored: Optional[int] = None  #: sqlite: counter in the restored database
    lost: int = 0                #: sqlite: acknowledged commits missing; hot: 1 per file missing or too old
    integrity_ok: Optional[bool] = None
    size: int = 0                #: bytes of the database / big file at the start
    exit_code: Optional[int] = None
    exit_s: Optional[float] = None  #: SIGTERM to exit
    killed: bool = False         #: still running at --kill-after: SIGKILLed like the platform would
    final: dict[str, Any] = field(default_factory=dict)  #: status()["final_sync"] of the stopped node
    detail: dict[str, Any] = field(default_factory=dict)

    def final_seconds(self) -> Optional[float]:
        d = self.final.get("duration")
        return float(d) if isinstance(d, (int, float)) else None


class _Lines:
    """Reads a child's JSON stdout lines on a thread, so the parent can wait for one with a timeout."""

    def __init__(self, stream: Any):
        self.cv = threading.Condition()
        self.seen: list[dict[str, Any]] = []
        self.t = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self.t.start()

    def _run(self, stream: Any) -> None:
        for line in stream:
            if line.startswith("{"):
                with self.cv:
                    self.seen.append(json.loads(line))
                    self.cv.notify_all()
        with self.cv:
            self.seen.append({"event": "eof"})
            self.cv.notify_all()

    def wait(self, event: str, timeout: float) -> Optional[dict[str, Any]]:
        end = time.monotonic() + timeout
        with self.cv:
            while True:
                for rec in self.seen:
                    if rec.get("event") in (event, "eof"):
                        return rec if rec.get("event") == event else None
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self.cv.wait(left)

    def events(self, event: str) -> list[dict[str, Any]]:
        with self.cv:
            return [r for r in self.seen if r.get("event") == event]


class _Acks:
    """The last commit number the app wrote to the ack pipe."""

    def __init__(self, fd: int):
        self.last = 0
        self.f = os.fdopen(fd, "rb", buffering=0)
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        buf = b""
        while True:
            b = self.f.read(65536)
            if not b:
                return
            buf += b
            *done, buf = buf.split(b"\n")
            if done:
                self.last = int(done[-1])


class SigtermTorture:
    def __init__(self, work: Path, *, seed: int = 1, grace: Optional[float] = None, kill_after: float = 10.0,
                 db_mb: tuple[float, float] = (133.0, 168.0), big_mib: int = 300, edit_lead: float = 0.3,
                 max_delay: float = 12.0, autocheckpoint: int = 1000, commit_sleep: float = 0.001,
                 log: Any = None):
        self.work = work
        self.rng = random.Random(seed)
        self.seed = seed
        self.kill_after = kill_after
        self.db_mb = db_mb
        self.big_mib = big_mib
        self.edit_lead = edit_lead
        self.max_delay = max_delay
        self.autocheckpoint = autocheckpoint
        self.commit_sleep = commit_sleep
        self.say = log or (lambda msg: None)
        self.env = {k: v for k, v in os.environ.items() if not k.lower().startswith("fractfs_")}
        self.env["PYTHONPATH"] = str(SRC) + (os.pathsep + os.environ["PYTHONPATH"]
                                             if os.environ.get("PYTHONPATH") else "")
        if grace is not None:
            self.env["fractfs_GRACE"] = f"{grace:g}"

    # -- paths of one trial ----------------------------------------------------------------------------
    def _dirs(self, case: str, n: int) -> tuple[Path, Path, Path, Path]:
        base = self.work / f"{case}-{n}"
        return base, base / "volume", base / "node" / "app", base / "node" / "scratch"

    def _wipe_node(self, root: Path, scratch: Path) -> None:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
        root.mkdir(parents=True)
        (root / ".fractfs.toml").write_text(CONFIG)  # the deploy bundle comes back with the node

    def _env(self, volume: Path, scratch: Path) -> dict[str, str]:
        env = dict(self.env)
        env.update({"fractfs_VOLUME_ROOT": str(volume), "fractfs_SCRATCH": str(scratch),
                    "fractfs_BACKEND": "volumes"})
        return env

    def _final_report(self, scratch: Path) -> dict[str, Any]:
        for p in scratch.rglob("status.json"):
            with contextlib.suppress(OSError, ValueError):
                fs = json.loads(p.read_text()).get("final_sync")
                if isinstance(fs, dict):
                    return {k: fs.get(k) for k in ("ok", "complete", "duration", "path", "stored", "missed",
                                                   "missed_deadline", "skipped_busy", "not_stored", "unsettled",
                                                   "error", "skipped", "held_back") if k in fs}
        return {}

    # -- one trial -------------------------------------------------------------------------------------
    def trial(self, case: str, n: int) -> Trial:
        tr = Trial(case, n)
        base, volume, root, scratch = self._dirs(case, n)
        shutil.rmtree(base, ignore_errors=True)
        volume.mkdir(parents=True)
        self._wipe_node(root, scratch)
        env = self._env(volume, scratch)
        seed = self.rng.randrange(1 << 30)
        cmd = [sys.executable, os.fspath(Path(__file__).resolve()), "app", "--case", case, "--root", str(root),
               "--log", str(base / "app.log"), "--seed", str(seed)]
        ack_r = ack_w = -1
        pass_fds: tuple[int, ...] = ()
        if case == "sqlite":
            tr.size = int(self.rng.uniform(*self.db_mb) * 1e6)
            ack_r, ack_w = os.pipe()
            pass_fds = (ack_w,)
            cmd += ["--db-mb", f"{tr.size / 1e6:.3f}", "--ack-fd", str(ack_w), "--autocheckpoint",
                    str(self.autocheckpoint), "--commit-sleep", str(self.commit_sleep)]
        elif case == "bigfile":
            tr.size = self.big_mib * MiB
            cmd += ["--big-mib", str(self.big_mib)]
        err = open(base / "app.stderr", "w")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=err, text=True, pass_fds=pass_fds)
        if ack_w >= 0:
            os.close(ack_w)
        acks = _Acks(ack_r) if ack_r >= 0 else None
        assert proc.stdout is not None and proc.stdin is not None
        lines = _Lines(proc.stdout)
        offset = -1
        try:
            ready = lines.wait("ready", 600)
            if ready is None:
                tr.problems.append("the app never got ready: " + (base / "app.stderr").read_text()[-1500:])
                return tr
            tr.detail["ready"] = ready
            if case == "bigfile":
                time.sleep(self.rng.uniform(0.0, 2.0))
                proc.stdin.write("edit\n")
                proc.stdin.flush()
                edited = lines.wait("edited", 30)
                if edited is None:
                    tr.problems.append("the app never made its edit")
                    return tr
                offset = int(edited["offset"])
                tr.detail["edit_sha"] = edited["sha"]
                tr.delay = self.edit_lead
                time.sleep(self.edit_lead)
            else:
                tr.delay = self.rng.uniform(0.5, self.max_delay)
                time.sleep(tr.delay)
            if acks is not None:
                tr.acked = acks.last
            floor = (lines.events("ckpt") or [ready])[-1] if case == "hot" else {}
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.kill_after)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                tr.killed = True
            tr.exit_s = round(time.monotonic() - t0, 3)
            tr.exit_code = proc.returncode
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            with contextlib.suppress(Exception):
                proc.stdin.close()
            err.close()
        tr.final = self._final_report(scratch)
        if tr.killed:
            tr.problems.append(f"still running {self.kill_after:g}s after SIGTERM: SIGKILLed")
        elif tr.exit_code != -signal.SIGTERM:
            tr.problems.append(f"exit code {tr.exit_code} (expected death by SIGTERM)")
        # the node goes away; a new one starts cold
        self._wipe_node(root, scratch)
        chk = subprocess.run([sys.executable, os.fspath(Path(__file__).resolve()), "check", "--case", case,
                              "--root", str(root), "--log", str(base / "check.log"), "--offset", str(offset)],
                             cwd=root, env=env, capture_output=True, text=True, timeout=600,
                             stdin=subprocess.DEVNULL, check=False)
        got = [json.loads(ln) for ln in chk.stdout.splitlines() if ln.startswith("{")]
        if chk.returncode != 0 or not got:
            tr.problems.append(f"the cold node failed (exit {chk.returncode}): {chk.stderr[-1500:]}")
            return tr
        res = got[-1]
        tr.detail["check"] = res
        if res.get("restore_errors"):
            tr.problems.append(f"restore errors: {res['restore_errors']}")
        if case == "sqlite":
            self._judge_sqlite(tr, res)
        elif case == "bigfile":
            self._judge_bigfile(tr, res)
        else:
            self._judge_hot(tr, res, floor)
        tr.ok = not tr.problems
        if tr.ok:
            shutil.rmtree(base, ignore_errors=True)  # keep the failures' logs and volumes for a look
        else:
            shutil.rmtree(volume, ignore_errors=True)  # big; the logs say enough
        return tr

    @staticmethod
    def _judge_sqlite(tr: Trial, res: dict[str, Any]) -> None:
        if not res.get("exists"):
            tr.integrity_ok = False
            tr.lost = tr.acked
            tr.problems.append("the database is missing after the restore")
            return
        tr.integrity_ok = res.get("integrity") == ["ok"]
        if not tr.integrity_ok:
            tr.problems.append(f"integrity_check: {res.get('integrity')}"[:300])
        tr.restored = res.get("counter")
        if isinstance(tr.restored, int):
            tr.lost = max(0, tr.acked - tr.restored)
            if tr.lost:
                tr.problems.append(f"lost {tr.lost} committed transactions (acknowledged {tr.acked}, restored "
                                   f"{tr.restored})")
        else:
            tr.lost = tr.acked
            tr.problems.append("no counter in the restored database")

    @staticmethod
    def _judge_bigfile(tr: Trial, res: dict[str, Any]) -> None:
        if not res.get("exists"):
            tr.lost = 1
            tr.problems.append(f"{BIG} is missing after the restore")
            return
        if res.get("size") != tr.size:
            tr.problems.append(f"{BIG}: {res.get('size')} bytes, not {tr.size}")
        if res.get("sha") != tr.detail.get("edit_sha"):
            tr.lost = 1
            tr.problems.append(f"the 4 KiB edit made {tr.delay:g}s before SIGTERM is not in the restored file")

    @staticmethod
    def _judge_hot(tr: Trial, res: dict[str, Any], floor: dict[str, Any]) -> None:
        tr.detail["floor"] = floor
        if not res.get("log_exists"):
            tr.lost += 1
            tr.problems.append(f"{LOG} (appended every 3 ms) is missing after the restore")
        else:
            if not res.get("log_consistent"):
                tr.problems.append(f"{LOG}: lines out of order or torn inside the file")
            if int(res.get("log_lines") or 0) < int(floor.get("log_lines") or 0):
                tr.lost += 1
                tr.problems.append(f"{LOG}: {res.get('log_lines')} lines restored, older than the "
                                   f"{floor.get('log_lines')} written by the last checkpoint before SIGTERM")
        if not res.get("progress_exists"):
            tr.lost += 1
            tr.problems.append(f"{PROGRESS} (rewritten every 5 ms) is missing after the restore")
        elif "progress_error" in res:
            tr.problems.append(f"{PROGRESS}: not one whole version: {res['progress_error']}")
        elif int(res.get("progress") or 0) < int(floor.get("progress") or 0):
            tr.lost += 1
            tr.problems.append(f"{PROGRESS}: version {res.get('progress')} restored, older than "
                               f"{floor.get('progress')} seen after the last checkpoint before SIGTERM")

    def run(self, cases: list[str], trials: int) -> list[Trial]:
        out = []
        for case in cases:
            for i in range(1, trials + 1):
                tr = self.trial(case, i)
                out.append(tr)
                self.say(line(tr))
        return out


# ---------------------------------------------------------------------------------------------------------
# Reporting

def line(tr: Trial) -> str:
    fs = tr.final
    fin = (f"final {fs.get('duration')}s ok={fs.get('ok')} missed={len(fs.get('missed_deadline') or [])}"
           if fs else "final: no report")
    what = {"sqlite": f"size {tr.size / 1e6:.0f} MB acked {tr.acked} restored {tr.restored} lost {tr.lost} "
                      f"integrity {'ok' if tr.integrity_ok else tr.integrity_ok}",
            "bigfile": f"{tr.size // MiB} MiB, edit {'kept' if not tr.lost else 'LOST'}",
            "hot": f"lost files {tr.lost}"}[tr.case]
    exit_ = "SIGKILL" if tr.killed else f"exit {tr.exit_code}"
    return (f"[{tr.case} {tr.n}] {'ok  ' if tr.ok else 'FAIL'} SIGTERM at +{tr.delay:.2f}s, {what}; "
            f"{exit_} after {tr.exit_s}s; {fin}" + ("" if tr.ok else f" -- {'; '.join(tr.problems)[:400]}"))


def _pct(xs: list[float], q: float) -> Optional[float]:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))]


def summary(trials: list[Trial]) -> list[dict[str, Any]]:
    rows = []
    for case in CASES:
        ts = [t for t in trials if t.case == case]
        if not ts:
            continue
        fin = [x for x in (t.final_seconds() for t in ts) if x is not None]
        ex = [t.exit_s for t in ts if t.exit_s is not None]
        rows.append({
            "case": case, "trials": len(ts), "failed": sum(not t.ok for t in ts),
            "trials_losing_data": sum(t.lost > 0 for t in ts),
            "lost": [t.lost for t in ts],
            "lost_commits_total": sum(t.lost for t in ts) if case == "sqlite" else None,
            "integrity_failures": sum(t.integrity_ok is False for t in ts) if case == "sqlite" else None,
            "killed": sum(t.killed for t in ts),
            "exit_s_median": statistics.median(ex) if ex else None, "exit_s_max": max(ex) if ex else None,
            "final_s_median": statistics.median(fin) if fin else None, "final_s_p95": _pct(fin, 0.95),
            "final_ok": sum(bool(t.final.get("ok")) for t in ts),
        })
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    sys.path.insert(0, str(HERE))
    from _bench import table as md

    def f(x: Any) -> str:
        return "-" if x is None else (f"{x:.2f}" if isinstance(x, float) else str(x))

    body = [[r["case"], f(r["trials"]), f(r["failed"]), f(r["trials_losing_data"]),
             f(r["lost_commits_total"]), f(r["integrity_failures"]), f(r["killed"]),
             f"{f(r['exit_s_median'])} / {f(r['exit_s_max'])}",
             f"{f(r['final_s_median'])} / {f(r['final_s_p95'])}", f(r["final_ok"])] for r in rows]
    return md(body, ["case", "trials", "failed", "trials losing data", "lost commits", "integrity failures",
                     "SIGKILLed", "exit s (median / max)", "final checkpoint s (median / p95)", "final ok"])


def main(argv: list[str]) -> int:
    if argv and argv[0] == "app":
        app_main(argv[1:])
        return 0
    if argv and argv[0] == "check":
        check_main(argv[1:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=3, help="trials per case")
    ap.add_argument("--case", default=",".join(CASES), help=f"comma-separated: {', '.join(CASES)}")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--db-mb", default="133-168", help="database size in MB, or a range drawn per trial")
    ap.add_argument("--big-mib", type=int, default=300)
    ap.add_argument("--edit-lead", type=float, default=0.3, help="seconds between the 4 KiB edit and SIGTERM")
    ap.add_argument("--max-delay", type=float, default=12.0,
                    help="sqlite/hot: SIGTERM lands 0.5 s to this many seconds after the app is ready")
    ap.add_argument("--grace", type=float, default=None, help="fractfs_GRACE for the app (default: fractfs' 8 s)")
    ap.add_argument("--kill-after", type=float, default=10.0,
                    help="SIGKILL this long after SIGTERM, as the platform does (Databricks: about 10 s)")
    ap.add_argument("--autocheckpoint", type=int, default=1000, help="the app's PRAGMA wal_autocheckpoint")
    ap.add_argument("--commit-sleep", type=float, default=0.001, help="seconds the app sleeps between commits")
    ap.add_argument("--work", help="directory for the trials (default: a temporary one)")
    ap.add_argument("--json", help="write every trial and the summary here")
    ap.add_argument("--quick", action="store_true",
                    help="one trial per case, small sizes (below the size the old rate guess lost), short delays")
    a = ap.parse_args(argv)
    if a.quick:
        a.trials, a.db_mb, a.big_mib, a.max_delay = 1, "30-40", 48, 3.0
    cases = a.case.split(",")
    for c in cases:
        if c not in CASES:
            ap.error(f"unknown case {c!r}")
    lo, _, hi = a.db_mb.partition("-")
    db_mb = (float(lo), float(hi or lo))
    with contextlib.ExitStack() as stack:
        work = Path(a.work) if a.work else Path(stack.enter_context(tempfile.TemporaryDirectory(
            prefix="fractfs-sigterm-")))
        work.mkdir(parents=True, exist_ok=True)
        t = SigtermTorture(work, seed=a.seed, grace=a.grace, kill_after=a.kill_after, db_mb=db_mb,
                           big_mib=a.big_mib, edit_lead=a.edit_lead, max_delay=a.max_delay,
                           autocheckpoint=a.autocheckpoint, commit_sleep=a.commit_sleep,
                           log=lambda m: print(m, file=sys.stderr, flush=True))
        t0 = time.monotonic()
        trials = t.run(cases, a.trials)
        rows = summary(trials)
        print(table(rows), flush=True)
        if a.json:
            Path(a.json).write_text(json.dumps({"seconds": round(time.monotonic() - t0, 1), "summary": rows,
                                                "trials": [asdict(x) for x in trials]}, indent=1))
    return 1 if any(not x.ok for x in trials) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
