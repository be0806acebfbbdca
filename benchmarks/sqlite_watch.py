"""A large SQLite database with one small transaction a second, watch mode (issue 12): bytes, daemon CPU, window.

    python benchmarks/sqlite_watch.py [--size 1G] [--seconds 60] [--idle 10] [--baseline SRC|REV|none]
                                      [--max-store 8G] [--quick] [--json FILE]

The app: a SQLite database of ``--size`` (default 1 GiB: a table of 8 KiB random blobs, WAL mode) in an app
root on a tmpfs (mounted here as root, else a directory in /dev/shm), the Volume (``backend = "local"``) and the
node's scratch on the same tmpfs. A fresh process runs ``fractfs.init()`` with ``sync_mode = "watch"`` and
otherwise default settings, creates its database (a copy of one made beforehand, so every tool gets the same
bytes, renamed into place whole; made after ``init()``, since a file present at the first start is taken
for the deploy bundle), takes
the first checkpoint (``sync_now()``, the whole database: not counted), waits until fractfs is idle (at most
15 s; 4 s in the quick run), keeps the database open without writing for ``--idle`` seconds (measured: an idle app should cost
nothing), and then for ``--seconds`` commits one transaction a second that updates 3 random rows with new
random blobs (a few dozen 4 KiB pages). fractfs checkpoints on its own, as the watcher and the daemon
decide. After the last transaction the app waits (at most 120 s) until a checkpoint that
started after it has finished.

What is measured, in the app process itself:

- **bytes uploaded**: growth of the Volume directory (sum of file sizes) from the first transaction until
  the last one is in a snapshot, and fractfs' own count (``last_uploaded_bytes`` summed over the
  checkpoints seen by a thread that polls ``status()`` every 50 ms);
- **daemon CPU**: the process's CPU time (``/proc/<pid>/stat`` utime + stime: every thread, exited ones
  included) minus that of the app's two threads (the one committing, the one polling status), over the
  ``--seconds`` of transactions and over the whole run (with the drain); as a percentage of one core;
  Python 3.11 does not give threads OS names, so the CPU of fractfs' live threads is attributed by
  ``threading.enumerate()``'s names (fractfs-sync, fractfs-watch, fractfs-lease, pools) and the rest
  (pool threads that came and went) is "threads that exited";
- the same CPU and the checkpoints counted during the idle phase;
- **data-loss window**: for each commit, the time until the end of the first checkpoint that started after
  it and stored the database (not skipped as busy or out of time); commits never covered are counted.

Targets of issue 12 for 1 GiB and 60 s: <= 1 GiB uploaded in all; daemon <= 20 % of one core.

``--baseline`` runs the same app on other fractfs code (a src directory from ``git archive <commit> src``,
a git revision, or ``none``; default: main's last merge without any of the v2 writer's commits, which
stores the whole database again at every checkpoint). That code's Volume can grow by the database's size per checkpoint,
on a tmpfs, so a run stops early (and says so) when the Volume has grown by ``--max-store`` (default 8 GiB,
less when memory is short). ``--quick`` is the CI smoke run: 64 MiB, 3 s idle, 8 s of transactions, this
checkout only (unless ``--baseline`` is given).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _bench import (
    SRC,
    KiB,
    MiB,
    TmpfsDir,
    baseline_src,
    fmt_ratio,
    in_ci,
    load_average,
    machine,
    mem_available,
    parse_size,
    say,
    table,
)

FRACTFS = "fractfs"
V1 = "fractfs v1"
DB = "app.db"
BLOB = 8 * KiB
ROWS_PER_TXN = 3

# The app. argv: seconds, rows in the table, Volume dir, max store growth in bytes, the database to start
# from, seconds of idle before the transactions, and how long at most to wait for fractfs to settle before
# that. Prints JSON lines: one when ready, one report at the end.
CHILD = r"""
import json, os, random, shutil, sqlite3, sys, threading, time
import fractfs

seconds, rows, volume, max_growth = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
master, idle, settle = sys.argv[5], float(sys.argv[6]), float(sys.argv[7])
DB, BLOB, PER_TXN, TICK = "app.db", 8192, 3, os.sysconf("SC_CLK_TCK")

def out(**kw):
    print(json.dumps(kw, default=str), flush=True)

def cpu(tid=None):
    path = f"/proc/self/stat" if tid is None else f"/proc/self/task/{tid}/stat"
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK

def volume_bytes():
    total = 0
    for d, _, names in os.walk(volume):
        for n in names:
            try:
                total += os.lstat(os.path.join(d, n)).st_size
            except FileNotFoundError:
                pass
    return total

st = fractfs.init()
# the app makes its database after init(): a file already there when init() first runs on a node would be
# taken for the deploy bundle and never checkpointed (auto_ignore_bundle). It appears whole (copied next to
# the app root, then renamed in), as SQLite would have built it: a watch-mode checkpoint that read a half-copied
# file would find it malformed and store it as plain bytes, and fractfs would then treat it as a plain file
# (its -wal recorded raw, never a backup) until its main file changes
staging = os.path.join(os.path.dirname(os.getcwd()), "staging.db")
shutil.copyfile(master, staging)
os.replace(staging, DB)
con = sqlite3.connect(DB, isolation_level=None)
con.execute("PRAGMA journal_mode=WAL")
t = time.monotonic()
fractfs.sync_now()
first_s = time.monotonic() - t
# the watcher saw the database and its -wal appear: give fractfs up to `settle` seconds to become idle (2 s
# without a checkpoint running), then go on whatever it does
t = time.monotonic()
quiet_since = t
while time.monotonic() - quiet_since < 2.0 and time.monotonic() - t < settle:
    time.sleep(0.1)
    if fractfs.status()["sync_running"]:
        quiet_since = time.monotonic()

events = []
stop = threading.Event()
def poll():
    seen = fractfs.status()["syncs"]
    while not stop.is_set():
        s = fractfs.status()
        if s["syncs"] != seen:
            seen = s["syncs"]
            out_of = [p for key in ("last_skipped_busy", "last_missed_deadline", "last_unsettled")
                      for p in (s.get(key) or []) if str(p).endswith(DB)]
            out_of += [d["path"] for d in (s.get("not_stored") or []) if str(d.get("path", "")).endswith(DB)]
            events.append({"start": s["last_sync_start"], "end": s["last_sync_time"], "syncs": seen,
                           "uploaded": s.get("last_uploaded_bytes") or 0, "snapshot": s.get("last_snapshot_id"),
                           "db_left_out": out_of})
        stop.wait(0.05)
poller = threading.Thread(target=poll, name="bench-poll", daemon=True)
poller.start()
time.sleep(0.2)
main_tid, poll_tid = threading.get_native_id(), poller.native_id
st = fractfs.status()
out(ready=True, pid=os.getpid(), module=fractfs.__file__, mode=st.get("sync_mode"), writer=st.get("writer"),
    first_s=first_s, db_bytes=os.path.getsize(DB))

def mark():
    return {"t": time.monotonic(), "cpu": cpu(), "main": cpu(main_tid), "poll": cpu(poll_tid),
            "volume": volume_bytes(), "events": len(events)}

# idle: the app holds its connection open and writes nothing; fractfs should have nothing to do
idle0 = mark()
time.sleep(idle)
rng = random.Random(5)
commits = []
m0 = mark()
stopped_early = None
for i in range(seconds):
    wait = m0["t"] + i - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    ids = [rng.randrange(1, rows + 1) for _ in range(PER_TXN)]
    con.execute("BEGIN")
    for r in ids:
        con.execute("UPDATE blobs SET data = randomblob(?) WHERE id = ?", (BLOB, r))
    con.execute("COMMIT")
    commits.append(time.time())
    if i % 5 == 4 and volume_bytes() - m0["volume"] > max_growth:
        stopped_early = i + 1
        break
wait = m0["t"] + len(commits) - time.monotonic()
if wait > 0:
    time.sleep(wait)
m1 = mark()

def covered_at(c):
    for e in events:
        if e["start"] is not None and e["start"] > c and not e["db_left_out"]:
            return e["end"]
    return None

deadline = time.monotonic() + 120
while covered_at(commits[-1]) is None and time.monotonic() < deadline:
    time.sleep(0.1)
time.sleep(0.1)
m2 = mark()
stop.set()
poller.join()
names = {t.native_id: t.name for t in threading.enumerate()}
threads = {}
for tid in os.listdir("/proc/self/task"):
    name = names.get(int(tid), f"thread {tid} (not started by Python)")
    try:
        threads[name] = threads.get(name, 0.0) + cpu(int(tid))
    except OSError:
        pass
threads["threads that exited (pools)"] = round(max(0.0, cpu() - sum(threads.values())), 2)
windows = [covered_at(c) - c if covered_at(c) is not None else None for c in commits]
final = fractfs.status()
budget = {k: v for k, v in final.items() if "cpu" in k.lower() or "budget" in k.lower() or "window" in k.lower()}
out(report=True, idle0=idle0, m0=m0, m1=m1, m2=m2, commits=len(commits), stopped_early=stopped_early, windows=windows,
    events=[e for e in events if e["end"] >= commits[0]], threads=threads, budget=budget,
    syncs=final.get("syncs"), last_error=final.get("last_error"), sync_mode=final.get("sync_mode"),
    main_tid=main_tid, poll_tid=poll_tid, pid=os.getpid())
con.close()
fractfs.shutdown(final_sync=False)
"""


def make_db(path: Path, size: int) -> int:
    """A WAL-mode database of ``size // BLOB`` rows of BLOB random bytes; returns the row count."""
    rows = max(1, size // BLOB)
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB NOT NULL)")
    done = 0
    while done < rows:
        n = min(10_000, rows - done)
        con.execute("BEGIN")
        con.execute("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) "
                    "INSERT INTO blobs (data) SELECT randomblob(?) FROM c", (n, BLOB))
        con.execute("COMMIT")
        done += n
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return rows


def run_tool(tool: str, src: Path, tmp: Path, master: Path, rows: int, seconds: int, max_growth: int,
             idle: float) -> dict[str, Any]:
    work = tmp / tool.replace(" ", "-")
    root, volume = work / "app", work / "volume"
    root.mkdir(parents=True)
    volume.mkdir()
    (root / ".fractfs.toml").write_text(f'backend = "local"\nvolume_root = "{volume}"\nsync_mode = "watch"\n')
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith("fractfs_")}
    env.update(PYTHONPATH=os.fspath(src), fractfs_ROOT=os.fspath(root), fractfs_SCRATCH=os.fspath(work / "scratch"))
    log = work / "app.log"
    try:
        with open(log, "w") as err:
            settle = 4.0 if seconds < 10 else 15.0
            proc = subprocess.Popen([sys.executable, "-c", CHILD, str(seconds), str(rows), os.fspath(volume),
                                     str(max_growth), os.fspath(master), str(idle), str(settle)], env=env,
                                    cwd=root, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True)
            assert proc.stdout is not None
            docs: list[dict[str, Any]] = []
            for line in proc.stdout:
                if not line.startswith("{"):
                    continue
                doc = json.loads(line)
                docs.append(doc)
                if doc.get("ready"):
                    if not str(doc.get("module", "")).startswith(os.fspath(src)):
                        raise SystemExit(f"{tool}: the app imported {doc.get('module')}, not the code in {src}")
                    if doc.get("mode") != "watch" or not doc.get("writer"):
                        raise SystemExit(f"{tool}: the app is in mode {doc.get('mode')!r}, writer "
                                         f"{doc.get('writer')}: not the watch-mode writer this measures")
                    say(f"  {tool}: database {doc['db_bytes'] / MiB:.0f} MiB, first checkpoint "
                        f"{doc['first_s']:.1f}s; {idle:g} s idle, then {seconds} s of transactions ...")
            rc = proc.wait()
        reports = [d for d in docs if d.get("report")]
        if rc != 0 or not reports:
            raise SystemExit(f"{tool}: the app failed ({rc}):\n{log.read_text()[-3000:]}")
        rep = reports[0]
        rep["first_s"] = next(d["first_s"] for d in docs if d.get("ready"))
        rep["db_bytes"] = next(d["db_bytes"] for d in docs if d.get("ready"))
        return rep
    finally:
        shutil.rmtree(work, ignore_errors=True)


def summarize(tool: str, rep: dict[str, Any]) -> dict[str, Any]:
    m0, m1, m2 = rep["m0"], rep["m1"], rep["m2"]

    def daemon(a: dict[str, Any], b: dict[str, Any]) -> float:
        return float((b["cpu"] - a["cpu"]) - (b["main"] - a["main"]) - (b["poll"] - a["poll"]))

    wins = [w for w in rep["windows"] if w is not None]
    growth = m2["volume"] - m0["volume"]
    uploaded = sum(e["uploaded"] for e in rep["events"])  # the checkpoints that ended after the first commit
    s = {
        "tool": tool, "seconds": m1["t"] - m0["t"], "drain_s": m2["t"] - m1["t"], "commits": rep["commits"],
        "stopped_early": rep["stopped_early"], "checkpoints": m2["events"] - m0["events"],
        "growth": growth, "growth_at_end_of_txns": m1["volume"] - m0["volume"], "uploaded_status": uploaded,
        "daemon_cpu_s": daemon(m0, m1), "daemon_cpu_all_s": daemon(m0, m2),
        "app_cpu_s": (m1["main"] - m0["main"]) + (m1["poll"] - m0["poll"]),
        "not_covered": sum(1 for w in rep["windows"] if w is None),
        "win_mean": statistics.mean(wins) if wins else None, "win_median": statistics.median(wins) if wins else None,
        "win_p95": sorted(wins)[min(len(wins) - 1, round(0.95 * (len(wins) - 1)))] if wins else None,
        "win_max": max(wins) if wins else None, "threads": rep["threads"], "budget": rep["budget"],
        "first_s": rep["first_s"], "db_bytes": rep["db_bytes"], "last_error": rep.get("last_error"),
    }
    i0 = rep["idle0"]
    s["idle_s"] = m0["t"] - i0["t"]
    s["idle_checkpoints"] = m0["events"] - i0["events"]
    s["idle_pct"] = 100 * daemon(i0, m0) / s["idle_s"] if s["idle_s"] > 0 else None
    s["idle_growth"] = m0["volume"] - i0["volume"]
    s["daemon_pct"] = 100 * s["daemon_cpu_s"] / s["seconds"]
    s["daemon_pct_all"] = 100 * s["daemon_cpu_all_s"] / (s["seconds"] + s["drain_s"])
    s["per_minute"] = growth * 60 / s["seconds"]
    return s


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def report(results: list[dict[str, Any]], size: int, seconds: int) -> str:
    """One row per measure, one column per tool (and fractfs / the other when there are two)."""
    def mb(x: float) -> str:
        return fmt(x / MiB, ".1f")

    measures: list[tuple[str, Any, str]] = [
        # (label, value of a summary -> (text, number for the ratio)), target
        ("idle (database open, nothing written): checkpoints", lambda s: (f"{s['idle_checkpoints']} in "
                                                                           f"{s['idle_s']:.0f} s", None), "0"),
        ("idle: daemon CPU % of a core", lambda s: (fmt(s["idle_pct"], ".1f"), s["idle_pct"]), "~0"),
        ("idle: Volume growth MiB", lambda s: (mb(s["idle_growth"]), None), "0"),
        ("transactions (one a second)", lambda s: (f"{s['commits']}" + (
            f" (stopped at {s['seconds']:.0f} s: Volume +{s['growth_at_end_of_txns'] / MiB:.0f} MiB)"
            if s["stopped_early"] else ""), None), f"{seconds}"),
        ("checkpoints (until the last transaction is stored)", lambda s: (f"{s['checkpoints']}", None), "-"),
        ("uploaded MiB (Volume growth, until the last transaction is stored)",
         lambda s: (mb(s["growth"]), s["growth"]), f"<= {size / MiB:.0f} in all"),
        ("uploaded MiB per 60 s of transactions", lambda s: (mb(s["per_minute"]), s["per_minute"]), "-"),
        ("uploaded MiB (fractfs' count, last_uploaded_bytes summed)",
         lambda s: (mb(s["uploaded_status"]), s["uploaded_status"]), "-"),
        ("daemon CPU s during the transactions", lambda s: (fmt(s["daemon_cpu_s"]), s["daemon_cpu_s"]), "-"),
        ("daemon CPU % of a core during the transactions", lambda s: (fmt(s["daemon_pct"], ".1f"), s["daemon_pct"]),
         "<= 20.0"),
        ("same, with the drain", lambda s: (fmt(s["daemon_pct_all"], ".1f"), s["daemon_pct_all"]), "-"),
        ("app threads CPU s (committing, polling status)", lambda s: (fmt(s["app_cpu_s"]), None), "-"),
        ("data-loss window mean s", lambda s: (fmt(s["win_mean"]), s["win_mean"]), "-"),
        ("data-loss window median s", lambda s: (fmt(s["win_median"]), s["win_median"]), "-"),
        ("data-loss window p95 s", lambda s: (fmt(s["win_p95"]), s["win_p95"]), "-"),
        ("data-loss window max s", lambda s: (fmt(s["win_max"]), s["win_max"]), "-"),
        ("transactions never in a snapshot", lambda s: (f"{s['not_covered']}", None), "0"),
    ]
    two = len(results) == 2
    header = ["measure"] + [s["tool"] for s in results] \
        + ([f"{results[0]['tool']} / {results[1]['tool']}"] if two else []) + ["target (issue 12)"]
    rows = []
    for label, get, target in measures:
        vals = [get(s) for s in results]
        row = [label] + [v[0] for v in vals]
        if two:
            x, y = vals[0][1], vals[1][1]
            # a ratio of nothing to nothing (idle CPU of a few ticks, or -0.0 from tick rounding) says nothing
            row.append(fmt_ratio(x / y) if x is not None and y is not None and y > 0.05 and x >= 0 else "-")
        rows.append(row + [target])
    lines = [table(rows, header), ""]
    for s in results:
        threads = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(s["threads"].items(), key=lambda kv: -kv[1]))
        lines.append(f"- {s['tool']}: database {s['db_bytes'] / MiB:.0f} MiB, first checkpoint {s['first_s']:.1f} s "
                     f"(not counted); drain after the last transaction {s['drain_s']:.1f} s; CPU of the live "
                     f"threads since they started: {threads}"
                     + (f"; status: {json.dumps(s['budget'], default=str)}" if s["budget"] else "")
                     + (f"; last_error: {s['last_error']}" if s["last_error"] else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--size", default="1G", help="database size (default 1G)")
    ap.add_argument("--seconds", type=int, default=60, help="seconds of transactions, one a second (default 60)")
    ap.add_argument("--idle", type=float, default=10.0,
                    help="seconds with the database open and nothing written, before the transactions (default 10)")
    ap.add_argument("--baseline", help="fractfs v1: a src directory, a git revision, or 'none' (default: the "
                                       "last main merge without the v2 writer's commits; --quick: none)")
    ap.add_argument("--max-store", default="8G", help="stop a run when its Volume has grown this much (default 8G)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 64 MiB, 8 s, this checkout only")
    ap.add_argument("--json", type=Path, help="also write the measurements here")
    args = ap.parse_args(argv)
    size = 64 * MiB if args.quick else parse_size(args.size)
    seconds = 8 if args.quick else max(2, args.seconds)
    idle = 3.0 if args.quick else max(0.0, args.idle)
    baseline = args.baseline if args.baseline is not None else ("none" if args.quick else None)
    if not sys.platform.startswith("linux"):
        raise SystemExit("this benchmark reads /proc and needs Linux")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    load_start = load_average()
    cap = f"{max(4 * size + parse_size(args.max_store) + 1024 * MiB, 1024 * MiB) // MiB}m"
    results = []
    with TmpfsDir("sqlite", cap) as tmp:
        say(f"work on {tmp}")
        tools = {FRACTFS: SRC}
        labels = {FRACTFS: f"this checkout ({SRC})"}
        base, why = baseline_src(baseline, tmp)
        if base is not None:
            tools[V1] = base
            labels[V1] = why
        elif (baseline or "").lower() != "none":
            if in_ci():
                raise SystemExit(f"CI=true but fractfs v1 is missing: {why}")
            say(f"note: skipping fractfs v1: {why}")
        master = tmp / "master.db"
        t = time.perf_counter()
        rows = make_db(master, size)
        say(f"database: {rows} rows of {BLOB // KiB} KiB, {master.stat().st_size / MiB:.0f} MiB, made in "
            f"{time.perf_counter() - t:.1f}s")
        for tool, src in tools.items():
            # the tmpfs is RAM: leave 4 GiB to the rest of the machine, and room for the app's database copies
            max_growth = min(parse_size(args.max_store), max(mem_available() - 4 * 1024 * MiB - 3 * size, size))
            rep = run_tool(tool, src, tmp, master, rows, seconds, max_growth, idle)
            s = summarize(tool, rep)
            results.append(s)
            say(f"  {tool}: {s['commits']} transactions, {s['checkpoints']} checkpoints, Volume "
                f"+{s['growth'] / MiB:.1f} MiB, daemon CPU {s['daemon_pct']:.1f} % of a core, window mean "
                f"{fmt(s['win_mean'])} s")
    print(f"# sqlite_watch: {machine()}\n# {size / MiB:.0f} MiB WAL database of {BLOB // KiB} KiB blobs on a tmpfs, "
          f"{ROWS_PER_TXN} rows updated per transaction, one a second for {seconds} s, watch mode, default "
          f"settings; one run per tool; load average {load_start} at start, {load_average()} at end\n")
    print(report(results, size, seconds))
    for tool, label in labels.items():
        print(f"- {tool}: {label}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "size": size, "seconds": seconds, "labels": labels,
                                         "results": results}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
