"""Data-loss window (time from a write to its presence in a snapshot) and idle CPU, in both sync modes.

    python benchmarks/data_loss_window.py [--interval 20] [--writes 12] [--idle 60] [--files 2000]
                                          [--store plain|s3] [--modes interval,watch] [--quick]

For each mode an app runs in a fresh process with ``fractfs.init()`` on a Volume (a plain directory, or
``s3://`` on the SeaweedFS the test suite uses). It first writes a tree of ``--files`` small files (what a
checkpoint has to walk), then writes ``--writes`` new files at random moments, each gap drawn uniformly from
[0.2 s, interval] so writes land at every phase of the timer. This process polls the store's newest snapshot
every 20 ms and records, for each write, when it first appears there: that delay is how much work a SIGKILL
at that moment would lose. A write that has not reached a snapshot when the run gives up waiting (all
writes done, then interval + 120 s) is *lost*: it is counted in the table and enters the statistics as an
infinite window, so p95 and max then read "lost" instead of quietly describing only the writes that made it.

Then the app sits idle (nothing written) and the CPU time of its process (``/proc/<pid>/stat`` utime +
stime, i.e. every fractfs thread plus the idle app) is measured over ``--idle`` seconds.

In interval mode the window is bounded by the interval (plus the checkpoint's own duration), so the default
``sync_interval = 300`` means up to five minutes; ``--interval`` scales the run to a few minutes. Watch mode
does not depend on the interval (it stays on only as a safety net), only on the debounce (0.5 s) and the
checkpoint's duration.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _bench import SRC, machine, say, table

CHILD = r"""
import json, os, random, sys, time
import fractfs
files, writes, interval, gap_max = (int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]))
def out(**kw):
    print(json.dumps(kw), flush=True)
st = fractfs.init()
for i in range(files):
    d = f"tree/d{i // 100:04d}"
    if i % 100 == 0:
        os.makedirs(d, exist_ok=True)
    with open(f"{d}/f{i:06d}.txt", "w") as f:
        f.write(f"state file {i}\n")
fractfs.sync_now()  # the base tree is in; from here on only the timed writes change anything
out(ready=True, pid=os.getpid(), mode=st["sync_mode"])
rng = random.Random(7)
os.makedirs("w", exist_ok=True)
for i in range(writes):
    time.sleep(rng.uniform(0.2, gap_max))
    with open(f"w/{i}.tmp", "w") as f:
        f.write(f"write {i}\n")
    os.replace(f"w/{i}.tmp", f"w/{i}.txt")
    out(i=i, t=time.time())
out(done=True)
time.sleep(3600)
"""


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def run_mode(mode: str, args: argparse.Namespace, volume: str, base: Path, env_extra: dict[str, str]) -> dict[str, Any]:
    from fractfs import snapshot
    from fractfs.stores import open_store

    app = base / mode / "app"
    app.mkdir(parents=True)
    (app / ".fractfs.toml").write_text('[ignore]\npatterns = ["*.tmp"]\n')
    url = volume.rstrip("/") + f"/{mode}"
    if "://" not in url:
        Path(url).mkdir(parents=True, exist_ok=True)  # a mounted Volume exists before the app starts
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith("fractfs_")}
    env.update(env_extra)
    env.update({"fractfs_VOLUME_ROOT": url, "fractfs_SCRATCH": str(base / mode / "scratch"),
                "fractfs_BACKEND": "s3" if "://" in url else "volumes", "fractfs_SYNC_MODE": mode,
                "fractfs_SYNC_INTERVAL": str(args.interval),
                "PYTHONPATH": str(SRC) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")})
    gap_max = args.interval if mode == "interval" else min(args.interval, 3.0)
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(args.files), str(args.writes), str(args.interval),
                             str(gap_max)], env=env, cwd=app, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=open(base / f"{mode}.log", "w"), text=True)  # noqa: SIM115
    lines: queue.Queue[dict[str, Any]] = queue.Queue()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("{"):
                lines.put(json.loads(line))

    threading.Thread(target=reader, daemon=True).start()
    store = open_store(url + "/_checkpoint")
    try:
        first = None
        while first is None:
            try:
                first = lines.get(timeout=1)
            except queue.Empty:
                if proc.poll() is not None:
                    raise SystemExit(f"{mode}: the app exited ({proc.returncode}) before it was ready; see "
                                     f"{base / f'{mode}.log'} (run with --dir to keep it)") from None
        if first.get("mode") != mode:
            raise SystemExit(f"{mode}: the app runs in {first.get('mode')!r} mode (see {base / f'{mode}.log'})")
        pid = int(first["pid"])
        say(f"{mode}: app ready (pid {pid}); {args.writes} writes at random moments ...")
        written: dict[int, float] = {}
        seen: dict[int, float] = {}
        done = False
        deadline = time.time() + args.writes * (gap_max + args.interval) + 120
        while (not done or len(seen) < len(written)) and time.time() < deadline:
            while not lines.empty():
                msg = lines.get()
                if "i" in msg:
                    written[msg["i"]] = msg["t"]
                done = done or bool(msg.get("done"))
            paths = {p for a, p in snapshot.latest_paths(store) if a == "root" and p.startswith("w/")}
            now = time.time()
            for i in written:
                if i not in seen and f"w/{i}.txt" in paths:
                    seen[i] = now
            time.sleep(0.02)
        windows = [seen[i] - written[i] for i in sorted(seen)]
        lost = len(written) - len(seen)
        if lost or len(written) < args.writes:
            say(f"{mode}: {len(seen)} of {len(written)} writes made ({args.writes} planned) reached a snapshot "
                f"in time; {lost} lost")
        snaps_before = len(snapshot.list_snapshots(store))
        time.sleep(2.0)  # let the last checkpoint settle before measuring idle
        say(f"{mode}: idle for {args.idle:g}s ...")
        c0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(args.idle)
        c1, t1 = cpu_seconds(pid), time.monotonic()
        idle_pct = 100.0 * (c1 - c0) / (t1 - t0)
        new_snaps = len(snapshot.list_snapshots(store)) - snaps_before
        return {"mode": mode, "windows": windows, "written": len(written), "lost": lost,
                "idle_cpu_pct": idle_pct, "idle_cpu_s": c1 - c0,
                "idle_s": t1 - t0, "idle_new_snapshots": new_snaps}
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--interval", type=float, default=20.0, help="sync_interval in seconds (default 20)")
    ap.add_argument("--writes", type=int, default=12, help="timed writes per mode (default 12)")
    ap.add_argument("--idle", type=float, default=60.0, help="seconds of idle CPU measurement (default 60)")
    ap.add_argument("--files", type=int, default=2000, help="files in the app tree (default 2000)")
    ap.add_argument("--store", choices=("plain", "s3"), default="plain")
    ap.add_argument("--modes", default="interval,watch")
    ap.add_argument("--quick", action="store_true", help="smoke run: interval 3 s, 4 writes, 5 s idle")
    ap.add_argument("--dir", type=Path, help="work here (kept) instead of a temporary directory")
    args = ap.parse_args(argv)
    if args.quick:
        args.interval, args.writes, args.idle, args.files = 3.0, 4, 5.0, 200
    if not sys.platform.startswith("linux"):
        raise SystemExit("this benchmark reads /proc and needs Linux")
    # a plain SIGTERM would skip the clean-up below and orphan the app process
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))
    base = args.dir or Path(tempfile.mkdtemp(prefix="fractfs-bench-window-"))
    server: Any = None
    env_extra: dict[str, str] = {}
    try:
        if args.store == "s3":
            import _services  # tests/_services.py: the SeaweedFS the test suite uses

            server = _services.SeaweedServer(base / "seaweed").start()
            bucket = server.make_bucket()
            volume = f"s3://{bucket}/app"
            env_extra = dict(server.env)
            os.environ.update(server.env)
            os.environ.pop("AWS_CA_BUNDLE", None)
        else:
            (base / "volume").mkdir(parents=True, exist_ok=True)
            volume = str(base / "volume")
        results = [run_mode(m.strip(), args, volume, base, env_extra) for m in args.modes.split(",") if m.strip()]
    finally:
        if server is not None:
            server.stop()
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)

    rows = []
    for r in results:
        # a lost write is an infinite window: it makes the mean, and the quantiles it reaches, read "lost"
        w = r["windows"] + [math.inf] * r["lost"]

        def show(x: float) -> str:
            return "lost" if math.isinf(x) else f"{x:.2f}"

        rows.append([r["mode"], f"{args.interval:g}", str(r["written"]), str(r["lost"]),
                     show(statistics.mean(w)) if w else "-", show(pct(w, 0.5)) if w else "-",
                     show(pct(w, 0.95)) if w else "-", show(max(w)) if w else "-",
                     f"{r['idle_cpu_pct']:.3f}% ({r['idle_cpu_s']:.2f}s / {r['idle_s']:.0f}s)",
                     str(r["idle_new_snapshots"])])
    print(f"# data_loss_window: {machine()}\n# store {args.store}, {args.files} files in the tree, "
          f"sync_interval {args.interval:g}s, {args.writes} writes per mode\n")
    print(table(rows, ["mode", "interval s", "writes", "lost", "window mean s", "p50 s", "p95 s", "max s",
                       "idle CPU", "snapshots while idle"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
