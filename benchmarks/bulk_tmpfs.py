"""1 GiB of new data checkpointed into a PosixStore on a tmpfs volume vs ``cp -r`` of the same tree there.

    python benchmarks/bulk_tmpfs.py [--reps 3] [--quick]      (root: it mounts a tmpfs)

The tree is a few big files (chunked while read) and many medium ones (read whole, chunked), written once to
the local disk and read from the page cache by both sides. Each run gets a fresh destination on a
``mount -t tmpfs -o size=3g`` volume (removed after the run), the two take turns, and the ratio is fractfs'
throughput over cp's (target of the checkpoint-engine issue: >= 0.8). fractfs does more than cp: it cuts
every byte into chunks and hashes it (SHA-256), fsyncs every pack (free on tmpfs) and writes a manifest and
its stat cache. The tmpfs is unmounted at the end.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench import MiB, Samples, fmt_ratio, fmt_s, machine, say, table, timed_run

import _services  # tests/_services.py: the tmpfs mount helpers the test suite uses

FRACTFS = "fractfs checkpoint"
CP = "cp -r"


def make_bulk_tree(root: Path, big: int, big_size: int, medium: int, medium_size: int) -> int:
    """``big`` files of ``big_size`` and ``medium`` files of ``medium_size`` (32 per directory), all random."""
    rng = random.Random(7)
    block = rng.randbytes(4 * MiB)
    total = 0
    (root / "big").mkdir(parents=True, exist_ok=True)
    for i in range(big):
        with open(root / "big" / f"blob{i:02d}.bin", "wb") as f:
            left = big_size
            while left > 0:
                # distinct content per file (a shared block would be deduplicated, which cp cannot do)
                chunk = rng.randbytes(16) + block[: min(left, len(block)) - 16]
                f.write(chunk)
                left -= len(chunk)
        total += big_size
    for i in range(medium):
        d = root / "medium" / f"m{i // 32:03d}"
        if i % 32 == 0:
            d.mkdir(parents=True, exist_ok=True)
        with open(d / f"part{i:05d}.bin", "wb") as f:
            f.write(rng.randbytes(medium_size))
        total += medium_size
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smoke run: 32 MiB, 1 repetition")
    ap.add_argument("--transfers", type=int, default=16)
    args = ap.parse_args(argv)
    reps = 1 if args.quick else max(1, args.reps)

    from fractfs.snapshot import checkpoint
    from fractfs.stores import PosixStore

    base = Path(tempfile.mkdtemp(prefix="fractfs-bench-bulk-"))
    src, vol = base / "src", base / "tmpfs"
    mounted = False
    try:
        if args.quick:
            total = make_bulk_tree(src, 2, 8 * MiB, 64, 256 * 1024)
        else:  # 4 x 128 MiB + 2048 x 256 KiB = 1 GiB
            total = make_bulk_tree(src, 4, 128 * MiB, 2048, 256 * 1024)
        os.sync()
        _services.mount_tmpfs(vol, "3g")
        mounted = True
        say(f"source: {total / MiB:.0f} MiB under {src}; tmpfs volume at {vol}")
        samples = Samples()
        for rep in range(reps):
            order = [FRACTFS, CP] if rep % 2 == 0 else [CP, FRACTFS]
            for tool in order:
                dest = vol / f"{'ff' if tool == FRACTFS else 'cp'}-{rep}"
                state = base / f"state-{rep}"
                os.sync()
                if tool == FRACTFS:
                    t = time.perf_counter()
                    res = checkpoint(PosixStore(dest), {"root": src}, None, state_dir=state,
                                     transfers=args.transfers)
                    dt = time.perf_counter() - t
                    if res.bytes != total or res.snapshot_id is None:
                        raise SystemExit(f"fractfs stored {res.bytes} of {total} bytes: {res}")
                else:
                    dt = timed_run(["cp", "-r", os.fspath(src), os.fspath(dest)])
                samples.add("bulk", tool, dt)
                say(f"  {tool:<20} rep {rep + 1}/{reps}: {dt:.3f}s ({total / MiB / dt:.0f} MiB/s)")
                shutil.rmtree(dest, ignore_errors=True)
                shutil.rmtree(state, ignore_errors=True)
        f, c = samples.median("bulk", FRACTFS), samples.median("bulk", CP)
        assert f is not None and c is not None
        rows = [[tool, fmt_s(samples.median("bulk", tool)), f"{total / MiB / (samples.median('bulk', tool) or 1):.0f}"]
                for tool in (FRACTFS, CP)]
        rows.append(["throughput fractfs / cp (target >= 0.8x)", "", fmt_ratio(c / f)])
        cpv = subprocess.run(["cp", "--version"], capture_output=True, text=True, check=False).stdout.split("\n")[0]
        print(f"# bulk_tmpfs: {machine()}\n# {total / MiB:.0f} MiB new data, {reps} run(s) each, alternating; "
              f"{cpv}\n")
        print(table(rows, ["case", "median s", "MiB/s"]))
    except _services.MissingPiece as exc:
        if _services.in_ci():
            raise SystemExit(f"CI=true but {exc}") from exc
        say(f"note: skipped: {exc}")
        return 0
    finally:
        if mounted:
            _services.unmount(vol)
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
