"""Bounded background cost (issue 12): CPU of fractfs' threads and the data-loss window under a constant write
load, with several ``cpu_budget`` settings, in both sync modes.

    python benchmarks/background_cost.py [--files 1000] [--size 4096] [--seconds 60] [--interval 1]
                                         [--budgets off,0.2,0.05] [--modes interval,watch] [--quick]

For each mode and budget an app runs in a fresh process with ``fractfs.init()`` on a plain-directory Volume.
One app thread rewrites ``--files`` files of ``--size`` random bytes over and over (a pause of 50 ms between
rounds), for ``--seconds``; every checkpoint then has all of them to read, hash and upload. fractfs' CPU is
measured independently of fractfs' own meter: the process's CPU time (``time.process_time()``) less that of
the app's two threads (the writer and the main thread, each measured with ``time.thread_time()``), so it
includes everything fractfs runs (the checkpoints with their reader and upload pools, the watcher, the lease
heartbeat). The table also shows what ``status()["budget"]`` reports (its own meter, checkpoints only) and
``status()["data_loss_window"]``: the longest and the median time from a change to the commit that saved it,
over the last minute.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _bench import SRC, machine, say, table

CHILD = r"""
import json, os, sys, threading, time
import fractfs
files, size, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
st = fractfs.init()
os.makedirs("hot", exist_ok=True)
rounds = [0]
def rewrite_all():
    for k in range(files):
        with open(f"hot/f{k:05d}.bin", "wb") as f:
            f.write(os.urandom(size))
    rounds[0] += 1
rewrite_all()
fractfs.sync_now()
stop = threading.Event()
writer_cpu = []
def writer():
    t0 = time.thread_time()
    while not stop.is_set():
        rewrite_all()
        time.sleep(0.05)
    writer_cpu.append(time.thread_time() - t0)
syncs0, rounds0 = fractfs.status()["syncs"], rounds[0]
p0, m0, w0 = time.process_time(), time.thread_time(), time.monotonic()
t = threading.Thread(target=writer, name="app-writer")
t.start()
time.sleep(seconds)
stop.set()
t.join()
st = fractfs.status()
wall = time.monotonic() - w0
cpu = (time.process_time() - p0) - writer_cpu[0] - (time.thread_time() - m0)
print(json.dumps({"cpu": cpu, "wall": wall, "syncs": st["syncs"] - syncs0, "rounds": rounds[0] - rounds0,
                  "mode": st["sync_mode"], "budget": st["budget"], "window": st["data_loss_window"]}), flush=True)
fractfs.shutdown(final_sync=False)
"""


def run_one(mode: str, budget: str, args: argparse.Namespace) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="fractfs-cost-"))
    try:
        root, vol = base / "app", base / "vol"
        root.mkdir()
        vol.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.lower().startswith("fractfs_")}
        env.update({"fractfs_VOLUME_ROOT": str(vol), "fractfs_BACKEND": "volumes",
                    "fractfs_SCRATCH": str(base / "scratch"), "fractfs_SYNC_MODE": mode,
                    "fractfs_SYNC_INTERVAL": str(args.interval), "fractfs_CPU_BUDGET": budget,
                    "PYTHONPATH": str(SRC)})
        r = subprocess.run([sys.executable, "-c", CHILD, str(args.files), str(args.size), str(args.seconds)],
                           cwd=root, env=env, capture_output=True, text=True, timeout=args.seconds + 300,
                           stdin=subprocess.DEVNULL, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"app failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        result: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
        return result
    finally:
        shutil.rmtree(base, ignore_errors=True)


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def secs(x: Any) -> str:
    return "-" if x is None else f"{x:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--interval", type=float, default=1.0, help="sync_interval (seconds)")
    ap.add_argument("--budgets", default="off,0.2,0.05")
    ap.add_argument("--modes", default="interval,watch")
    ap.add_argument("--json", help="write the raw results here")
    ap.add_argument("--quick", action="store_true", help="300 files, 4 s per run")
    args = ap.parse_args()
    if args.quick:
        args.files, args.seconds = 300, 4.0
    rows, raw = [], []
    for mode in args.modes.split(","):
        for budget in args.budgets.split(","):
            say(f"{mode}, cpu_budget {budget}: {args.files} x {args.size} B rewritten for {args.seconds:g}s ...")
            res = run_one(mode, budget, args)
            raw.append({"mode_asked": mode, "cpu_budget": budget, **res})
            b, w = res["budget"], res["window"] or {}
            written = res["rounds"] * args.files * args.size / res["wall"] / (1 << 20)
            rows.append([res["mode"], budget, f"{written:.1f}", str(res["syncs"]),
                         f"{res['syncs'] / res['wall']:.2f}", pct(res["cpu"] / res["wall"]), pct(b["cpu_used"]),
                         secs(w.get("typical")), secs(w.get("seconds")), w.get("stretched_by") or "-"])
    print(f"\nBackground cost under a constant write load ({args.files} files x {args.size} B rewritten in a "
          f"loop, {args.seconds:g} s per run, sync_interval {args.interval:g} s, plain-directory Volume); "
          f"{machine()}, load average {os.getloadavg()[0]:.1f}\n")
    print(table(rows, ["mode", "cpu budget", "written MiB/s", "checkpoints", "per s", "cpu % of a core",
                       "status cpu %", "window median s", "window max s", "stretched by"]))
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
