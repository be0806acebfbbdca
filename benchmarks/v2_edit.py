"""A small edit in a large file under format v2: bytes uploaded and time, against the file's first checkpoint.

    python benchmarks/v2_edit.py [--size-mib 1024] [--reps 3] [--quick]

One file of random bytes on the local disk (read from the page cache), checkpointed into a PosixStore on
``/dev/shm`` (tmpfs: the store costs almost nothing, so what is left is reading, chunking and hashing). Per
repetition, on a fresh store: the first checkpoint of the file, then a 4 KiB overwrite in its middle, then a
1 MiB append, each checkpointed (timed from the call to its return; the file is left alone for 0.1 s first,
past the racy-timestamp guard, as it would be in a running app). Each case runs twice: large files chunked
on the pipeline checkpoints use (a worker reads and cuts, two threads hash) and on one thread
(``chunker.chunks``), to show what the pipeline buys. Uploaded bytes are what went into ``packs/`` (a
counting store), the manifest apart. Targets (issue 12): the edit uploads about one to three chunks
(0.5-2 MiB), and its checkpoint takes at most 0.25x the first one.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import random
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _bench import MiB, Samples, fmt_ratio, fmt_s, machine, say, table

PIPELINE, ONE_THREAD = "pipeline", "one thread"


def _counting_store(root: Path) -> Any:
    from fractfs.stores import PosixStore

    class Counting(PosixStore):
        def __init__(self, r: Path) -> None:
            super().__init__(r)
            self.lock = threading.Lock()
            self.sent = 0

        def put(self, key: str, data: bytes, *, exclusive: bool = False) -> None:
            super().put(key, data, exclusive=exclusive)
            if key.startswith("packs/"):
                with self.lock:
                    self.sent += len(data)

        def take(self) -> int:
            with self.lock:
                n, self.sent = self.sent, 0
            return n

    return Counting(root)


@contextlib.contextmanager
def chunking(mode: str) -> Iterator[None]:
    """Large files chunked on the pipeline (what checkpoints do) or with the one-thread chunker."""
    from fractfs.snapshot import capture, chunker

    if mode == PIPELINE:
        yield
        return
    orig = capture._chunk_fd

    def one_thread(fd: int, size: int, ctx: Any, put: Any) -> Any:
        slots, n = [], 0
        for c in chunker.chunks(fd, limit=size):
            if ctx.stop():
                return None
            slots.append(put(c.digest, c.data))
            n += c.length
        return slots, n

    capture._chunk_fd = one_thread
    try:
        yield
    finally:
        capture._chunk_fd = orig


def make_file(path: Path, size: int) -> None:
    rng = random.Random(12)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 * MiB)
            f.write(rng.randbytes(n))
            left -= n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smoke run: 64 MiB, 1 repetition")
    args = ap.parse_args(argv)
    size = (64 if args.quick else args.size_mib) * MiB
    reps = 1 if args.quick else max(1, args.reps)

    from fractfs.snapshot import checkpoint, chunker

    if not chunker.native_available():
        say("note: pyfastcdc (a fractfs dependency) is not installed: chunking runs in pure Python")
    base = Path(tempfile.mkdtemp(prefix="fractfs-bench-v2edit-"))
    shm = Path(tempfile.mkdtemp(prefix="fractfs-bench-v2edit-", dir="/dev/shm"))
    src = {"root": base / "src"}
    big = src["root"] / "big.bin"
    samples = Samples()
    sent: dict[tuple[str, str], list[int]] = {}
    try:
        make_file(big, size)
        say(f"source: {size // MiB} MiB at {big}; store on {shm}")
        for rep in range(reps):
            modes = [PIPELINE, ONE_THREAD] if rep % 2 == 0 else [ONE_THREAD, PIPELINE]
            for mode in modes:
                store = _counting_store(shm / f"store-{rep}-{mode[:3]}")
                state = base / f"state-{rep}-{mode[:3]}"
                rng = random.Random(f"{rep}-{mode}")
                at = size // 2 + rep * 8192
                with open(big, "rb") as f:
                    f.seek(at)
                    original = f.read(4096)
                with chunking(mode):
                    for case in ("first", "edit", "append"):
                        if case == "edit":
                            with open(big, "r+b") as f:
                                f.seek(at)
                                f.write(rng.randbytes(4096))
                        elif case == "append":
                            with open(big, "ab") as f:
                                f.write(rng.randbytes(MiB))
                        time.sleep(0.1)
                        t = time.perf_counter()
                        res = checkpoint(store, src, None, state_dir=state)
                        dt = time.perf_counter() - t
                        if res.stored != ["root:big.bin"]:
                            raise SystemExit(f"{case}: expected big.bin stored, got {res}")
                        samples.add(case, mode, dt)
                        sent.setdefault((case, mode), []).append(store.take())
                        say(f"  rep {rep + 1}/{reps} {mode:<10} {case:<6} {dt:.3f}s, "
                            f"{sent[(case, mode)][-1] / MiB:.2f} MiB uploaded")
                shutil.rmtree(shm / f"store-{rep}-{mode[:3]}", ignore_errors=True)
                shutil.rmtree(state, ignore_errors=True)
                # every run starts from the same file: the appended MiB goes, the edited bytes come back
                os.truncate(big, size)
                with open(big, "r+b") as f:
                    f.seek(at)
                    f.write(original)
        rows = []
        for case, what in (("first", f"first checkpoint of {size // MiB} MiB"), ("edit", "4 KiB overwrite in the middle"),
                           ("append", "1 MiB append")):
            for mode in (PIPELINE, ONE_THREAD):
                up = sorted(sent[(case, mode)])[len(sent[(case, mode)]) // 2]
                rows.append([f"{what} ({mode})", fmt_s(samples.median(case, mode)), f"{up / MiB:.2f}"])
        for mode in (PIPELINE, ONE_THREAD):
            first, edit = samples.median("first", mode), samples.median("edit", mode)
            rows.append([f"edit / first ({mode}; target <= 0.25x)", "",
                         "", fmt_ratio(edit / first if first and edit else None)])
        p1, p2 = samples.median("first", ONE_THREAD), samples.median("first", PIPELINE)
        rows.append(["first checkpoint, one thread / pipeline", "", "", fmt_ratio(p1 / p2 if p1 and p2 else None)])
        rows.append(["peak RSS MiB (the whole run)", "", f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}",
                     ""])
        for r in rows:
            if len(r) == 3:
                r.append("")
        print(f"# v2_edit: {machine()}\n# {size // MiB} MiB file on local disk, store on /dev/shm, "
              f"{reps} run(s) each, median; pyfastcdc: {chunker.native_available()}\n")
        print(table(rows, ["case", "median s", "uploaded MiB", "ratio"]))
    finally:
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(shm, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
