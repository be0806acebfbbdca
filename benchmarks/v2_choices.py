"""Measurements behind format v2's choices: chunker, chunk parameters, hash, pack compression.

    python benchmarks/v2_choices.py [--reps 3] [--mib 1024] [--quick]

Candidates run in turns within each repetition (the machine is shared); tables print medians and ratios.
Optional packages (pyfastcdc, fastcdc, blake3, zstandard) are measured when importable, else noted.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import io
import json
import os
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from _bench import machine, say, table

KiB = 1024
MiB = 1024 * KiB


def opt(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        say(f"note: skipping {name} (not installed)")
        return None


def rand(n: int, seed: int) -> bytes:
    """Deterministic random bytes (``Random.randbytes`` takes at most 256 MiB at a time)."""
    rng = random.Random(seed)
    return b"".join(rng.randbytes(min(64 * MiB, n - i)) for i in range(0, n, 64 * MiB))


def load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def interleaved(cands: dict[str, Callable[[], Any]], reps: int) -> dict[str, float]:
    """Median wall seconds of each candidate, run in turns."""
    times: dict[str, list[float]] = {k: [] for k in cands}
    for _ in range(reps):
        for k, fn in cands.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


# -- 1. chunkers -----------------------------------------------------------------------------------------

def bench_chunkers(data: bytes, reps: int, py_mib: int) -> str:
    from fractfs.snapshot import chunker as C

    p = C.FORMAT_PARAMS
    cands: dict[str, Callable[[], Any]] = {}
    pyf = opt("pyfastcdc.cy")
    if pyf is not None:
        fc = pyf.FastCDC(p.avg_size, min_size=p.min_size, max_size=p.max_size, normalized_chunking=1)
        cands["pyfastcdc 0.3.1 cut_buf"] = lambda: sum(1 for _ in fc.cut_buf(data))
        cands["fractfs chunks() on pyfastcdc, + SHA-256"] = lambda: sum(
            1 for _ in C.chunks(io.BytesIO(data), native=True))
    fcd = opt("fastcdc.fastcdc_cy")
    if fcd is not None:
        cands["fastcdc 1.7.0 (cy)"] = lambda: sum(
            1 for _ in fcd.fastcdc_cy(data, p.min_size, p.avg_size, p.max_size))
    cands["hashlib.sha256 alone"] = lambda: hashlib.sha256(data).digest()
    secs = interleaved(cands, reps)
    small = data[: py_mib * MiB]
    py_s = interleaved({"py": lambda: sum(1 for _ in C.cut_points(small, native=False))}, max(1, reps // 2))["py"]
    rows = [[k, f"{s:.3f}", f"{len(data) / s / 1e9:.2f}"] for k, s in secs.items()]
    rows.append([f"fractfs pure-Python fallback ({py_mib} MiB)", f"{py_s:.3f}", f"{len(small) / py_s / 1e9:.4f}"])
    return table(rows, ["chunker (median)", "s", "GB/s"])


# -- 2. chunk parameters: what an edit costs -------------------------------------------------------------

def bench_params(mib: int) -> str:
    from fractfs.snapshot import chunker as C

    rng = random.Random(7)
    base = rand(mib * MiB, 7)
    # five edit positions: one edit's cost depends on where the nearby cut points happen to fall
    spots = [len(base) * k // 10 + rng.randrange(MiB) for k in (3, 4, 5, 6, 7)]
    patch = rng.randbytes(4 * KiB)
    edits = [base[:s] + patch + base[s + len(patch):] for s in spots]
    inserts = [base[:s] + patch + base[s:] for s in spots]
    appended = base + patch
    rows = []
    for mn, avg, mx, nc in [(64 * KiB, 256 * KiB, 1 * MiB, 1), (128 * KiB, 512 * KiB, 2 * MiB, 1),
                            (256 * KiB, 1 * MiB, 4 * MiB, 1), (256 * KiB, 1 * MiB, 4 * MiB, 2),
                            (512 * KiB, 2 * MiB, 8 * MiB, 1), (1 * MiB, 4 * MiB, 16 * MiB, 1)]:
        p = C.Params(mn, avg, mx, nc)

        def cuts(b: bytes, p: Any = p) -> dict[bytes, int]:
            out = {}
            for off, ln in C.cut_points(b, params=p, native=True):
                out[hashlib.sha256(memoryview(b)[off:off + ln]).digest()] = ln
            return out

        old = cuts(base)

        def new_mib(b: bytes, old: dict[bytes, int] = old) -> float:
            return sum(ln for h, ln in cuts(b).items() if h not in old) / MiB

        e = [new_mib(b) for b in edits]
        i = [new_mib(b) for b in inserts]
        sizes = list(old.values())
        rows.append([f"{mn // KiB}K/{avg // KiB}K/{mx // KiB}K nc{nc}", str(len(old)),
                     f"{statistics.mean(sizes) / MiB:.2f}", f"{max(sizes) / MiB:.2f}",
                     f"{statistics.mean(e):.2f} / {max(e):.2f}", f"{new_mib(appended):.2f}",
                     f"{statistics.mean(i):.2f} / {max(i):.2f}"])
    return table(rows, ["min/avg/max", f"chunks in {mib} MiB", "mean MiB", "max MiB",
                        "new MiB after 4K overwrite (mean / max of 5)", "after 4K append",
                        "after 4K insert (mean / max of 5)"])


# -- 3. hashes -------------------------------------------------------------------------------------------

def bench_hashes(data: bytes, reps: int, shm_dir: str) -> str:
    b3 = opt("blake3")
    cands: dict[str, Callable[[], Any]] = {"sha256 (hashlib)": lambda: hashlib.sha256(data).digest()}
    if b3 is not None:
        cands["blake3 1 thread"] = lambda: b3.blake3(data).digest()
        cands["blake3 max_threads"] = lambda: b3.blake3(data, max_threads=b3.blake3.AUTO).digest()
    mem = interleaved(cands, reps)
    path = os.path.join(shm_dir, "v2-hash.bin")
    with open(path, "wb") as f:
        f.write(data)
    try:
        def stream(make: Callable[[], Any]) -> Callable[[], Any]:
            def run() -> Any:
                h = make()
                buf = bytearray(8 * MiB)
                view = memoryview(buf)
                with open(path, "rb", buffering=0) as f:
                    while n := f.readinto(buf):
                        h.update(view[:n])
                return h.digest()
            return run
        scands: dict[str, Callable[[], Any]] = {"sha256 (hashlib)": stream(hashlib.sha256)}
        if b3 is not None:
            scands["blake3 1 thread"] = stream(b3.blake3)
            scands["blake3 max_threads"] = stream(lambda: b3.blake3(max_threads=b3.blake3.AUTO))
        st = interleaved(scands, reps)
    finally:
        os.unlink(path)
    base_m, base_s = mem["sha256 (hashlib)"], st["sha256 (hashlib)"]
    rows = [[k, f"{len(data) / mem[k] / 1e9:.2f}", f"{base_m / mem[k]:.2f}x",
             f"{len(data) / st[k] / 1e9:.2f}", f"{base_s / st[k]:.2f}x"] for k in mem]
    return table(rows, ["hash (median)", "in memory GB/s", "speed vs sha256", "8 MiB reads from tmpfs GB/s",
                        "speed vs sha256"])


# -- 4. pack compression ---------------------------------------------------------------------------------

def sample_sqlite(tmp: str, mib: int) -> bytes:
    path = os.path.join(tmp, "app.db")
    rng = random.Random(3)
    con = sqlite3.connect(path)
    con.execute("create table events(id integer primary key, ts real, user text, kind text, payload text)")
    con.execute("create index ix on events(user, ts)")
    kinds = ["click", "view", "purchase", "login", "logout"]
    rows = []
    while True:
        for _ in range(5000):
            rows.append((rng.random() * 1e9, f"user{rng.randrange(5000)}", rng.choice(kinds),
                         json.dumps({"item": rng.randrange(10 ** 6), "price": round(rng.random() * 100, 2),
                                     "tags": rng.sample(kinds, 2)})))
        con.executemany("insert into events(ts,user,kind,payload) values (?,?,?,?)", rows)
        rows.clear()
        con.commit()
        if os.path.getsize(path) >= mib * MiB:
            break
    con.close()
    with open(path, "rb") as f:
        return f.read()


def sample_json(mib: int) -> bytes:
    rng = random.Random(4)
    out = io.StringIO()
    while out.tell() < mib * MiB:
        out.write(json.dumps({"id": rng.randrange(10 ** 9), "name": f"item-{rng.randrange(10 ** 5)}",
                              "values": [round(rng.gauss(0, 1), 4) for _ in range(8)],
                              "ok": rng.random() < 0.5}) + "\n")
    return out.getvalue().encode()


def bench_zstd(reps: int, mib: int) -> str:
    zstd = opt("zstandard")
    if zstd is None:
        return "(zstandard not installed)"
    with tempfile.TemporaryDirectory() as tmp:
        samples = {"SQLite db": sample_sqlite(tmp, mib), "JSON lines": sample_json(mib),
                   "random (parquet/png-like)": random.Random(5).randbytes(mib * MiB)}
    rows = []
    for name, data in samples.items():
        for level in (1, 3):
            c = zstd.ZstdCompressor(level=level)
            d = zstd.ZstdDecompressor()
            packed = c.compress(data)
            secs = interleaved({"c": lambda c=c, data=data: c.compress(data),
                               "d": lambda d=d, packed=packed: d.decompress(packed)}, reps)
            rows.append([name, f"zstd -{level}", f"{len(data) / len(packed):.2f}",
                         f"{len(data) / secs['c'] / 1e6:.0f}", f"{len(data) / secs['d'] / 1e6:.0f}"])
    return table(rows, ["sample", "level", "ratio (orig/packed)", "compress MB/s", "decompress MB/s"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--mib", type=int, default=1024, help="in-memory buffer for chunker/hash speed")
    ap.add_argument("--edit-mib", type=int, default=256, help="file size for the edit/append/insert table")
    ap.add_argument("--quick", action="store_true", help="smoke run: 64 MiB, 1 repetition")
    args = ap.parse_args(argv)
    if args.quick:
        args.reps, args.mib, args.edit_mib = 1, 64, 64
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    print(f"Machine: {machine()}; load average at start {load()}; medians of {args.reps}\n")
    data = rand(args.mib * MiB, 1)
    say("chunkers ...")
    print(bench_chunkers(data, args.reps, 4 if args.quick else 16), "\n")
    say("hashes ...")
    print(bench_hashes(data, args.reps, shm), "\n")
    del data
    say("chunk parameters ...")
    print(bench_params(args.edit_mib), "\n")
    say("zstd ...")
    print(bench_zstd(args.reps, 8 if args.quick else 64), "\n")
    print(f"load average at end {load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
