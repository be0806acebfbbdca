"""No-op checkpoint of a large tree vs a bare ``os.scandir`` walk of it (and vs the walk plus one lstat per
entry, the least any stat-based change detector must do).

    python benchmarks/noop_checkpoint.py [--files 100000] [--reps 5] [--quick] [--dir DIR]

Builds a tree of small files (100 per directory, two levels), takes a first checkpoint into a PosixStore,
then times, in turns, a bare walk, the walk with ``DirEntry.stat()``, and a checkpoint that finds nothing
changed (it must walk and stat everything, compare with its stat cache and write nothing). The target of the
checkpoint-engine issue is no-op <= 1.5x the bare walk. Everything runs in this process, warm (dentry and
inode caches hot), as a periodic checkpoint of a live app would.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _bench import Samples, fmt_ratio, fmt_s, machine, say, table

BARE = "bare os.scandir walk"
LSTAT = "walk + lstat per entry"
NOOP = "fractfs no-op checkpoint"


def bare_walk(top: str) -> int:
    n = 0
    stack = [top]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                n += 1
    return n


def stat_walk(top: str) -> int:
    n = 0
    stack = [top]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                e.stat(follow_symlinks=False)
                n += 1
    return n


def make_tree(root: Path, files: int) -> None:
    per_dir = 100
    for i in range(files):
        d = root / f"d{i // (per_dir * 10):04d}" / f"s{(i // per_dir) % 10}"
        if i % per_dir == 0:
            d.mkdir(parents=True, exist_ok=True)
        with open(d / f"f{i:06d}.txt", "wb") as f:
            f.write(b"small state file %d\n" % i)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=7, help="timed runs of each (default 7)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2000 files, 1 repetition")
    ap.add_argument("--dir", type=Path, help="work here (kept) instead of a temporary directory")
    args = ap.parse_args(argv)
    files = 2000 if args.quick else args.files
    reps = 1 if args.quick else max(1, args.reps)

    from fractfs.snapshot import checkpoint
    from fractfs.stores import PosixStore

    base = args.dir or Path(tempfile.mkdtemp(prefix="fractfs-bench-noop-"))
    app, store_dir, state = base / "app", base / "store", base / "state"
    try:
        t = time.perf_counter()
        make_tree(app, files)
        say(f"tree: {files} files under {app} ({time.perf_counter() - t:.1f}s to make)")
        store = PosixStore(store_dir)

        def noop() -> None:
            res = checkpoint(store, {"root": app}, None, state_dir=state)
            if res.snapshot_id is not None:
                raise SystemExit(f"expected a no-op, got a new snapshot: {res}")

        t = time.perf_counter()
        first = checkpoint(store, {"root": app}, None, state_dir=state)
        first_s = time.perf_counter() - t
        say(f"first checkpoint: {first_s:.2f}s ({first.files} files)")
        top = os.fspath(app)
        if bare_walk(top) < files:
            raise SystemExit("the walk did not see every file")
        cases: list[tuple[str, Callable[[], object]]] = [
            (BARE, lambda: bare_walk(top)), (LSTAT, lambda: stat_walk(top)), (NOOP, noop)]
        noop()  # warm-up: the first no-op after a real checkpoint is the same work, but page in the code once
        samples = Samples()
        for rep in range(reps):
            k = rep % len(cases)
            for name, fn in cases[k:] + cases[:k]:
                t = time.perf_counter()
                fn()
                samples.add("x", name, time.perf_counter() - t)

        def mins(name: str) -> float:
            return min(samples.runs("x", name))

        rows = []
        for name, _ in cases:
            rows.append([name, fmt_s(mins(name)), fmt_s(samples.median("x", name))])
        med = {name: samples.median("x", name) or 0.0 for name, _ in cases}
        ratios = [
            ["no-op / bare walk (target <= 1.5x)", fmt_ratio(mins(NOOP) / mins(BARE)),
             fmt_ratio(med[NOOP] / med[BARE])],
            ["no-op / walk + lstat", fmt_ratio(mins(NOOP) / mins(LSTAT)), fmt_ratio(med[NOOP] / med[LSTAT])],
            ["walk + lstat / bare walk", fmt_ratio(mins(LSTAT) / mins(BARE)), fmt_ratio(med[LSTAT] / med[BARE])],
        ]
        print(f"# noop_checkpoint: {machine()}\n# {files} files, {reps} run(s) each, alternating; "
              f"first (full) checkpoint took {first_s:.2f}s\n")
        print(table(rows + ratios, ["case", "min s", "median s"]))
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
