"""Measurement, not a test (pytest collects nothing here): cost of a no-op checkpoint vs a bare walk.

    PYTHONPATH=src python tests/test_snapshot_bench.py [--files 100000] [--dir /tmp/x] [--restore]

Prints the timings of a bare ``os.scandir`` walk, the same walk with an ``lstat`` per entry (the least any
stat-based change detector must do), a first (full) checkpoint, no-op checkpoints, and their ratios.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def _bare_walk(top: str, stat: bool) -> int:
    n = 0
    stack = [top]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                if stat:
                    e.stat(follow_symlinks=False)
                n += 1
    return n


def _make_tree(root: Path, files: int) -> None:
    per_dir = 100
    for i in range(files):
        d = root / f"d{i // (per_dir * 10):03d}" / f"s{(i // per_dir) % 10}"
        if i % per_dir == 0:
            d.mkdir(parents=True, exist_ok=True)
        with open(d / f"f{i:06d}.txt", "wb") as f:
            f.write(b"tiny %d\n" % i)


def _best(fn, runs: int = 5) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times)


def main() -> None:
    from fractfs.snapshot import checkpoint, restore
    from fractfs.stores import PosixStore

    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--restore", action="store_true", help="also time a full restore into a fresh dir")
    args = ap.parse_args()
    base = Path(args.dir or tempfile.mkdtemp(prefix="fractfs-bench-"))
    app, store_dir, state = base / "app", base / "store", base / "state"
    try:
        t = time.perf_counter()
        _make_tree(app, args.files)
        print(f"tree: {args.files} files under {app} (made in {time.perf_counter() - t:.1f}s)")
        store = PosixStore(store_dir)

        def want(_a: str, _r: str, _d: bool) -> bool:
            return True

        def ck() -> object:
            return checkpoint(store, {"root": app}, want, state_dir=state)

        t = time.perf_counter()
        first = ck()
        print(f"first checkpoint (hash + pack + upload everything): {time.perf_counter() - t:.2f}s "
              f"({first.files} files, {first.uploaded_bytes} bytes uploaded)")
        bare = _best(lambda: _bare_walk(str(app), False))
        statw = _best(lambda: _bare_walk(str(app), True))
        noop = _best(ck)
        res = ck()
        assert res.snapshot_id is None, res
        cache = state / "statcache.v1"
        print(f"bare scandir walk          min {bare[0]:.3f}s  median {bare[1]:.3f}s")
        print(f"scandir walk + lstat       min {statw[0]:.3f}s  median {statw[1]:.3f}s")
        print(f"no-op checkpoint           min {noop[0]:.3f}s  median {noop[1]:.3f}s")
        print(f"ratio no-op / bare walk        {noop[0] / bare[0]:.2f}x (min)  {noop[1] / bare[1]:.2f}x (median)")
        print(f"ratio no-op / walk + lstat     {noop[0] / statw[0]:.2f}x (min)  {noop[1] / statw[1]:.2f}x (median)")
        print(f"stat cache: {cache.stat().st_size / 1e6:.1f} MB on disk")
        # one changed file: the slow path (load the cache, diff, write a new manifest)
        (app / "d000" / "s0" / "f000000.txt").write_bytes(b"changed\n")
        time.sleep(0.05)
        t = time.perf_counter()
        one = ck()
        print(f"checkpoint with 1 changed file: {time.perf_counter() - t:.3f}s  stored={one.stored}")
        manifests = [s for _, s in store.list("snapshots/")]
        print(f"manifest size: {manifests[-1] / 1e6:.2f} MB (gzip) for {args.files} entries")
        if args.restore:
            t = time.perf_counter()
            out = restore(store, {"root": base / "restored"})
            print(f"restore into a fresh dir: {time.perf_counter() - t:.2f}s ({len(out.restored)} files)")
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
