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
    # an SQLite-like transaction: the header page (change counter) and four scattered 4 KiB pages
    pages = len(base) // (4 * KiB)
    txns = []
    for _ in range(5):
        b = bytearray(base)
        for pg in [0] + [rng.randrange(pages) for _ in range(4)]:
            b[pg * 4 * KiB:(pg + 1) * 4 * KiB] = rng.randbytes(4 * KiB)
        txns.append(bytes(b))
    rows = []
    for mn, avg, mx, nc in [(64 * KiB, 256 * KiB, 1 * MiB, 1), (128 * KiB, 512 * KiB, 2 * MiB, 1),
                            (128 * KiB, 512 * KiB, 2 * MiB, 2),
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
        t = [new_mib(b) for b in txns]
        sizes = list(old.values())
        rows.append([f"{mn // KiB}K/{avg // KiB}K/{mx // KiB}K nc{nc}", str(len(old)),
                     f"{statistics.mean(sizes) / MiB:.2f}", f"{max(sizes) / MiB:.2f}",
                     f"{statistics.mean(e):.2f} / {max(e):.2f}", f"{new_mib(appended):.2f}",
                     f"{statistics.mean(i):.2f} / {max(i):.2f}", f"{statistics.mean(t):.2f} / {max(t):.2f}"])
    return table(rows, ["min/avg/max", f"chunks in {mib} MiB", "mean MiB", "max MiB",
                        "new MiB after 4K overwrite (mean / max of 5)", "after 4K append",
                        "after 4K insert (mean / max of 5)", "after a 5-page transaction (mean / max of 5)"])


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


# -- 5. manifest decode: v1 (one object per entry) vs v2 (columns) --------------------------------------------

_DECODE_CHILD = r"""
import hashlib, json, sys, time
from fractfs.snapshot import format as v1, manifest2 as M
def hwm():  # peak RSS of this process image in KiB (ru_maxrss would carry the forking parent's peak over)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
version, path, reps = sys.argv[1], sys.argv[2], int(sys.argv[3])
blob = open(path, "rb").read()
base = hwm()
cpu = []
for _ in range(reps):
    t = time.process_time()
    if version == "1":
        name = v1.SnapName(1, hashlib.sha256(blob).hexdigest())
        m = v1.decode_manifest(name, blob)
        n = len(m.entries)
    else:
        m = M.decode(blob, expect_seq=1)
        n = len(m) - len(m.refused)
    cpu.append(time.process_time() - t)
    del m
print(json.dumps({"cpu": sorted(cpu)[len(cpu) // 2], "n": n, "rss_kib": hwm(),
                  "base_kib": base}))
"""


def manifest_entries(n: int) -> tuple[list[Any], list[Any]]:
    """n small files, 50 per directory, three levels, each in a pack (as a checkpoint of a tree writes)."""
    from fractfs.snapshot import format as v1
    from fractfs.snapshot import manifest2 as M

    e1, e2 = [], []
    for i in range(n):
        path = f"app/d{i // 2500:04d}/s{(i // 50) % 50:02d}/file-{i:07d}.dat"
        size = 1024 + (i * 37) % 7000
        digest = hashlib.sha256(i.to_bytes(8, "little")).hexdigest()
        pack = hashlib.sha256(str(i // 4000).encode()).hexdigest()
        off = (i % 4000) * 8192
        mt = 1764107000123456789 + i
        e1.append(v1.Entry("root", path, "file", 0o644, size, mt, digest, pack, off))
        e2.append(M.Entry2("root", path, "f", 0o644, size, mt, None, False, (M.ChunkRef(pack, off, size, digest),)))
    return e1, e2


def bench_manifest(sizes: list[int], reps: int) -> str:
    import subprocess
    import sys

    from fractfs.snapshot import format as v1
    from fractfs.snapshot import manifest2 as M

    rows = []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            e1, e2 = manifest_entries(n)
            _, blob1 = v1.encode_manifest(v1.Manifest(seq=1, created_ns=0, node="n", parent=None, entries=e1))
            blob2 = M.encode(M.Header(1, 0, "n", None), e2)
            del e1, e2
            res = {}
            for ver, blob in (("1", blob1), ("2", blob2)):
                path = os.path.join(tmp, f"m{ver}-{n}")
                with open(path, "wb") as f:
                    f.write(blob)
            for ver, blob in (("1", blob1), ("2", blob2)):
                out = subprocess.run([sys.executable, "-c", _DECODE_CHILD, ver, os.path.join(tmp, f"m{ver}-{n}"),
                                      str(reps)], env=env, capture_output=True, text=True, check=False)
                if out.returncode != 0:
                    raise RuntimeError(f"decode of v{ver} at {n} entries failed ({out.returncode}): {out.stderr[-2000:]}")
                res[ver] = json.loads(out.stdout.strip().splitlines()[-1])
                assert res[ver]["n"] == n, res[ver]
                rows.append([f"{n:,}", f"v{ver}", f"{len(blob) / 1e6:.1f}", f"{res[ver]['cpu']:.2f}",
                             f"{res[ver]['cpu'] / n * 1e6:.2f}",
                             f"{(res[ver]['rss_kib'] - res[ver]['base_kib']) / 1024:.0f}",
                             f"{res[ver]['rss_kib'] / 1024:.0f}"])
            rows.append([f"{n:,}", "v2 / v1", f"{len(blob2) / len(blob1):.2f}x",
                         f"{res['2']['cpu'] / res['1']['cpu']:.2f}x", "", "", ""])
    return table(rows, ["entries", "format", "manifest MB", "decode CPU s (median)", "us/entry",
                        "peak RSS growth MiB", "peak RSS MiB"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--mib", type=int, default=1024, help="in-memory buffer for chunker/hash speed")
    ap.add_argument("--edit-mib", type=int, default=256, help="file size for the edit/append/insert table")
    ap.add_argument("--quick", action="store_true", help="smoke run: 64 MiB, 1 repetition")
    ap.add_argument("--only", choices=["chunkers", "hashes", "params", "zstd", "manifest"], action="append",
                    help="run only these sections (repeatable)")
    args = ap.parse_args(argv)
    if args.quick:
        args.reps, args.mib, args.edit_mib = 1, 64, 64
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    print(f"Machine: {machine()}; load average at start {load()}; medians of {args.reps}\n")
    want = set(args.only or ["chunkers", "hashes", "params", "zstd", "manifest"])
    if want & {"chunkers", "hashes"}:
        data = rand(args.mib * MiB, 1)
        if "chunkers" in want:
            say("chunkers ...")
            print(bench_chunkers(data, args.reps, 4 if args.quick else 16), "\n")
        if "hashes" in want:
            say("hashes ...")
            print(bench_hashes(data, args.reps, shm), "\n")
        del data
    if "params" in want:
        say("chunk parameters ...")
        print(bench_params(args.edit_mib), "\n")
    if "zstd" in want:
        say("zstd ...")
        print(bench_zstd(args.reps, 8 if args.quick else 64), "\n")
    if "manifest" in want:
        say("manifests ...")
        print(bench_manifest([10_000] if args.quick else [100_000, 1_000_000], 1 if args.quick else 3), "\n")
    print(f"load average at end {load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
