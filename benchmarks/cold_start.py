"""Cold start at scale (issue 13): a whole ``python -c 'import fractfs; fractfs.init()'`` vs tar, cp, s5cmd, git.

    python benchmarks/cold_start.py [--sizes 20000,100000] [--s3-sizes 10000,100000]
                                    [--scale-sizes 10000,100000] [--million] [--max-files N]
                                    [--cases posix,s3,checkpoint,scale] [--volumes disk,tmpfs] [--node disk]
                                    [--reps 5] [--quick] [--json FILE] [--baseline SRC]

A cold start is a node with the app's code and ``.fractfs.toml`` and nothing else: ``init()`` must restore the
last snapshot before it returns, so its time is the app's downtime. Every measurement here is a fresh
process, timed from just before the fork to the moment ``init()`` returns inside the child (interpreter start
and imports included, from bytecode compiled beforehand as an installed package has it; the child then shuts
fractfs down without a final checkpoint and exits, off the clock), and every peer is timed as a whole process
too. Tools take turns in a rotating order and the table shows
medians, with the ratio fractfs / peer (below 1.0 = fractfs faster). Before each timed run dirty pages are
flushed (``sync``): fractfs' restore ends with ``syncfs`` and must not pay for what the previous run left.
fractfs' restore is durable when ``init()`` returns; tar, cp and s5cmd leave their files in the page cache.

Cases (the tree is ``make_app_tree``: files of 1-8 KiB of random bytes under six areas, 16 sub-directories
each, 40 files per leaf directory):

- ``posix``: cold ``init()`` with a local Volume (``backend = "local"``) vs ``tar -xf`` of a tar of the same
  tree and ``cp -a`` of the same tree, all three reading from the same volume and writing to it (a directory
  on the local disk; and a tmpfs, mounted here as root, else a directory in /dev/shm). ``--sizes``.
- ``s3``: cold ``init()`` from SeaweedFS (started as benchmarks/s3_transfer.py does) vs ``s5cmd cp`` of the
  same files uploaded as plain objects, into the local disk. ``--s3-sizes``; needs s5cmd (``--setup`` of
  s3_transfer.py installs it).
- ``checkpoint``: in the process that has just restored (cold, local Volume, first of ``--sizes``), the
  first ``sync_now()`` and then a no-op ``sync_now()``, vs ``git status --porcelain`` run twice in a fresh
  ``git clone`` of a repo with the same tree committed. Both are the first look at a tree that a tool has just
  written itself: git's index holds the stat data of the checkout but the files are "racily clean" (written in
  the same second as the index), so its first status re-reads them; fractfs' stat cache has to be brought up
  to date with the restored files. The second run of each is the steady state (a no-op).
- ``scale``: cold ``init()`` of empty files at ``--scale-sizes`` (``--million`` adds 1 000 000: minutes),
  time and peak RSS of the child (getrusage), with ``tar -xf`` of the same tree beside it; prints the time per
  file at each size and whether time and RSS grow linearly.

The checkpoint, s3 and scale cases work on the local disk, or with ``--node tmpfs`` on the tmpfs (node
directory and local Volume alike), which keeps a disk shared with other jobs out of the figures.
``--baseline SRC`` adds another checkout's ``src`` (e.g. ``git archive <commit> src``) as a fourth tool,
"fractfs before", in the same rotation: a before/after comparison from one run on a shared, noisy machine.
The baseline seeds and restores a Volume of its own beside each one of this code (same tree, same file
system), so each side restores the format it writes (code before format v2 cannot read a v2 manifest). ``--quick`` is the CI smoke run: a few hundred files, one repetition, every case, well under a minute.
"""
from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _bench import (
    SRC,
    MiB,
    Samples,
    count_files,
    drop_tree,
    find_tool,
    fmt_ratio,
    fmt_s,
    load_average,
    machine,
    make_app_tree,
    require_or_skip,
    run_child,
    say,
    table,
    tool_version,
)

import _services  # tests/_services.py: SeaweedFS and the tmpfs mount helpers the test suite uses

FRACTFS = "fractfs init()"
BEFORE = "fractfs before"
#: --baseline: the src directory of the code to compare with (None: no such column)
BASELINE: Path | None = None
TAR = "tar -xf"
CP = "cp -a"
S5CMD = "s5cmd cp"
GIT = "git status"
CONFIG = ".fractfs.toml"

#: targets of issue 13 (fractfs / peer), by case kind
TARGETS = {"tar": "<= 2.0x", "cp": "-", "s5cmd": "<= 1.0x", "git-first": "<= 1.5x", "git-noop": "-"}
#: the figures issue 13 quoted for the code before it (for the table's last column)
ISSUE_TODAY = {"tar": "4.9x (20 000, tmpfs)", "s5cmd": "0.29x (10 000)", "git-first": "~10x",
               "git-noop": "1.65x"}

# The measured child: what an app does at start-up. The clock stops when init() returns (the child prints
# its monotonic time, which on Linux is the parent's clock too); shutting down and exiting are off the clock.
# The final checkpoint at exit is switched off: it is the "first checkpoint" case, measured on its own.
CHILD = r"""
import sys, time
import fractfs
t0 = time.monotonic()
st = fractfs.init()
ready = time.monotonic()
out = {"ready": ready, "init_s": ready - t0, "restore": st.get("restore"), "writer": st.get("writer"),
       "module": fractfs.__file__}
if "--checkpoints" in sys.argv:
    t = time.monotonic()
    first = fractfs.sync_now()
    t2 = time.monotonic()
    again = fractfs.sync_now()
    t3 = time.monotonic()
    out.update(first_s=t2 - t, first_new=len(first), noop_s=t3 - t2, noop_new=len(again),
               syncs=fractfs.status()["syncs"])
import json, os
print(json.dumps(out), flush=True)
fractfs.shutdown(final_sync=False)
os._exit(0)
"""

# Seeds a Volume the way an app would: init() on an empty node, the app writes its state, a checkpoint.
SEED = r"""
import json, subprocess, sys
import fractfs
fractfs.init()
subprocess.run(["cp", "-a", sys.argv[1] + "/.", sys.argv[2]], check=True)
new = fractfs.sync_now()
print(json.dumps({"new": len(new), "files": fractfs.status()["files"]}), flush=True)
fractfs.shutdown(final_sync=False)
"""


class App:
    """Cold nodes of one app: a fresh root holding only .fractfs.toml and a fresh scratch per run."""

    def __init__(self, work: Path, volume_root: str, backend: str, extra_env: dict[str, str] | None = None,
                 src: Path = SRC):
        self.work = work
        self.volume_root = volume_root
        self.backend = backend
        self.src = src
        # PYTHONDONTWRITEBYTECODE (set in some CI images) would make every child compile fractfs from source:
        # an installed package has its bytecode (pip compiles it), so the children import that (see main())
        env = {k: v for k, v in os.environ.items()
               if not k.lower().startswith("fractfs_") and k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPATH"] = os.pathsep.join([os.fspath(src), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env.update(extra_env or {})
        self.env = env

    def node(self, name: str) -> tuple[Path, Path, dict[str, str]]:
        root, scratch = self.work / f"{name}-root", self.work / f"{name}-scratch"
        root.mkdir(parents=True)
        (root / CONFIG).write_text(f'backend = "{self.backend}"\nvolume_root = "{self.volume_root}"\n')
        env = dict(self.env, fractfs_ROOT=os.fspath(root), fractfs_SCRATCH=os.fspath(scratch))
        return root, scratch, env

    def seed(self, src: Path, files: int) -> None:
        root, scratch, env = self.node(f"seed-{uuid.uuid4().hex[:6]}")
        env["fractfs_SYNC_INTERVAL"] = "0"  # only the sync_now() below: no watcher racing the copy
        try:
            run = run_child([sys.executable, "-c", SEED, os.fspath(src), os.fspath(root)], env=env, cwd=root)
            out = json.loads(run.stdout.strip().splitlines()[-1])
            if out["files"] != files:
                raise SystemExit(f"seeding {self.volume_root}: the snapshot holds {out['files']} files, "
                                 f"expected {files}")
            say(f"  seeded {self.volume_root} with {files} files in {run.seconds:.1f}s")
        finally:
            drop_tree(root)
            drop_tree(scratch)

    def cold_init(self, files: int, *, checkpoints: bool = False,
                  check_against: Path | None = None) -> tuple[float, dict[str, Any], float]:
        """(seconds to init() returning, the child's report, peak RSS MiB) of one cold start."""
        root, scratch, env = self.node(f"cold-{uuid.uuid4().hex[:6]}")
        try:
            os.sync()
            cmd = [sys.executable, "-c", CHILD] + (["--checkpoints"] if checkpoints else [])
            run = run_child(cmd, env=env, cwd=root)
            out: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
            if not str(out["module"]).startswith(os.fspath(self.src)):
                raise SystemExit(f"the child imported {out['module']}, not {self.src}")
            restored = (out.get("restore") or {}).get("restored")
            if restored != files or count_files(root)[0] != files + 1:
                raise SystemExit(f"cold init() restored {restored} files into {root}, expected {files}: {out}")
            if checkpoints and (not out["writer"] or out["syncs"] < 2):
                raise SystemExit(f"the checkpoints did not run (not the lease holder?): {out}")
            if check_against is not None:
                check_same(check_against, root, FRACTFS)
            return out["ready"] - run.started, out, run.maxrss_mib
        finally:
            drop_tree(root)
            drop_tree(scratch)


def check_same(src: Path, dest: Path, tool: str) -> None:
    """Every file of ``src`` in ``dest`` with the same bytes, and nothing else but .fractfs.toml: a tool
    that restored nothing would win every race."""
    def listing(top: Path) -> dict[str, Path]:
        out = {}
        for d, _, names in os.walk(top):
            for n in names:
                p = Path(d) / n
                out[os.fspath(p.relative_to(top))] = p
        out.pop(CONFIG, None)
        return out

    a, b = listing(src), listing(dest)
    if a.keys() != b.keys():
        raise SystemExit(f"{tool}: {dest} holds {len(b)} files, {len(a.keys() - b.keys())} missing, "
                         f"{len(b.keys() - a.keys())} unexpected")
    bad = [k for k in a if a[k].read_bytes() != b[k].read_bytes()]
    if bad:
        raise SystemExit(f"{tool}: {len(bad)} files differ, e.g. {bad[:3]}")


def before(app: App, src: Path, files: int) -> App | None:
    """The same app run by the --baseline code on a Volume of its own, seeded by that code, or None.

    The Volume is its own because the baseline may not read what this code writes (code before format v2
    cannot read a v2 manifest), and each side should restore the format it writes itself."""
    if BASELINE is None:
        return None
    volume_root = app.volume_root.rstrip("/") + "-before"
    if app.backend == "local":
        Path(volume_root).mkdir(parents=True, exist_ok=True)
    old = App(app.work, volume_root, app.backend, src=BASELINE,
              extra_env={k: v for k, v in app.env.items() if k.startswith(("AWS_", "fractfs_"))})
    old.seed(src, files)
    return old


def with_before(tools: list[str]) -> list[str]:
    return tools + ([BEFORE] if BASELINE is not None else [])


def rotate(tools: list[str], rep: int) -> list[str]:
    k = rep % len(tools)
    return tools[k:] + tools[:k]


def whole(cmd: list[str], **kw: Any) -> float:
    os.sync()
    return run_child(cmd, **kw).seconds


class Results:
    def __init__(self) -> None:
        self.samples = Samples()
        self.rows: list[tuple[str, str, str, str]] = []  # (case, fractfs key, peer, target kind)
        self.scale: list[dict[str, Any]] = []
        self.info: dict[str, Any] = {}

    def add(self, case: str, tool: str, seconds: float) -> None:
        self.samples.add(case, tool, seconds)
        say(f"  {case:<36} {tool:<22} {seconds:8.3f}s")


# -- the cases -------------------------------------------------------------------------------------------

def posix_case(res: Results, vol_kind: str, base: Path, n: int, reps: int) -> None:
    """Cold init() from a local Volume vs tar -xf and cp -a, all on ``base``'s file system."""
    work = base / f"posix-{n}"
    src, vol, tarball = work / "tree", work / "volume", work / "tree.tar"
    t = time.perf_counter()
    nbytes = make_app_tree(src, n)
    vol.mkdir(parents=True)
    subprocess.run(["tar", "-cf", os.fspath(tarball), "-C", os.fspath(src), "."], check=True)
    say(f"posix {vol_kind}: {n} files, {nbytes / MiB:.0f} MiB, tree + tar made in {time.perf_counter() - t:.1f}s")
    app = App(work, os.fspath(vol), "local")
    app.seed(src, n)
    old = before(app, src, n)
    case = f"cold init {n} ({vol_kind})"
    res.info[case] = {"bytes": nbytes, "volume": os.fspath(vol)}
    try:
        for rep in range(reps):
            for tool in rotate(with_before([FRACTFS, TAR, CP]), rep):
                dest = work / f"dest-{rep}"
                if tool in (FRACTFS, BEFORE):
                    runner = app if tool == FRACTFS else old
                    assert runner is not None
                    dt, _, _ = runner.cold_init(n, check_against=src if rep == 0 else None)
                elif tool == TAR:
                    dest.mkdir()
                    dt = whole(["tar", "-xf", os.fspath(tarball), "-C", os.fspath(dest)])
                else:
                    dt = whole(["cp", "-a", os.fspath(src), os.fspath(dest)])
                if tool not in (FRACTFS, BEFORE):
                    if rep == 0:
                        check_same(src, dest, tool)
                    elif count_files(dest)[0] != n:
                        raise SystemExit(f"{tool}: {dest} does not hold {n} files")
                res.add(case, tool, dt)
                drop_tree(dest)
    finally:
        drop_tree(work)
    res.rows += [(case, FRACTFS, TAR, "tar"), (case, FRACTFS, CP, "cp")]
    if old is not None:
        res.rows += [(case, BEFORE, TAR, "tar")]


def checkpoint_case(res: Results, base: Path, n: int, reps: int) -> None:
    """The first and a no-op sync_now() right after a cold init() vs git status (twice) after a git clone."""
    work = base / f"ckpt-{n}"
    src, vol, repo = work / "tree", work / "volume", work / "repo"
    make_app_tree(src, n)
    vol.mkdir(parents=True)
    git_env = dict(os.environ, GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@b", GIT_COMMITTER_NAME="b",
                   GIT_COMMITTER_EMAIL="b@b", GIT_CONFIG_NOSYSTEM="1", HOME=os.fspath(work))
    t = time.perf_counter()
    shutil.copytree(src, repo, symlinks=True)
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "tree"]):
        subprocess.run(["git", *cmd], cwd=repo, env=git_env, check=True, capture_output=True)
    say(f"checkpoint: {n} files committed to a git repo in {time.perf_counter() - t:.1f}s")
    app = App(work, os.fspath(vol), "local")
    app.seed(src, n)
    old = before(app, src, n)
    first, noop = f"first checkpoint after cold init {n}", f"no-op checkpoint after it {n}"
    try:
        for rep in range(reps):
            for tool in rotate(with_before([FRACTFS, GIT]), rep):
                if tool == BEFORE:
                    assert old is not None
                    _, out, _ = old.cold_init(n, checkpoints=True)
                    res.add(first, BEFORE, out["first_s"])
                    res.add(noop, BEFORE, out["noop_s"])
                elif tool == FRACTFS:
                    _, out, _ = app.cold_init(n, checkpoints=True)
                    res.add(first, FRACTFS, out["first_s"])
                    res.add(noop, FRACTFS, out["noop_s"])
                    res.info.setdefault(first, []).append({"new_files": out["first_new"],
                                                           "noop_new": out["noop_new"]})
                else:
                    clone = work / f"clone-{rep}"
                    subprocess.run(["git", "clone", "-q", "--no-hardlinks", os.fspath(repo), os.fspath(clone)],
                                   env=git_env, check=True, capture_output=True)
                    for case in (first, noop):
                        os.sync()
                        run = run_child(["git", "status", "--porcelain"], env=git_env, cwd=clone)
                        if run.stdout.strip():
                            raise SystemExit(f"git status of a fresh clone is not clean: {run.stdout[:500]}")
                        res.add(case, GIT, run.seconds)
                    drop_tree(clone)
    finally:
        drop_tree(work)
    res.rows += [(first, FRACTFS, GIT, "git-first"), (noop, FRACTFS, GIT, "git-noop")]
    if old is not None:
        res.rows += [(first, BEFORE, GIT, "git-first"), (noop, BEFORE, GIT, "git-noop")]


def s3_case(res: Results, base: Path, sizes: list[int], reps: int) -> None:
    """Cold init() from SeaweedFS vs s5cmd cp of the same files as plain objects, into the local disk."""
    s5 = find_tool("s5cmd")
    if not require_or_skip("s5cmd", s5 is not None, hint="python benchmarks/s3_transfer.py --setup"):
        return
    assert s5 is not None
    shm = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else None
    server_dir = Path(tempfile.mkdtemp(prefix="fractfs-bench-weed-", dir=shm))
    server = _services.SeaweedServer(server_dir)
    try:
        try:
            server.start()
        except _services.MissingPiece as exc:
            if _services.in_ci():
                raise SystemExit(f"CI=true but {exc}") from exc
            say(f"note: skipping S3: {exc}")
            return
        env = {k: v for k, v in os.environ.items()
               if k not in ("AWS_CA_BUNDLE", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
                            "AWS_SESSION_TOKEN")}
        env.update(server.env, AWS_EC2_METADATA_DISABLED="true")
        res.info["seaweedfs"] = tool_version(shutil.which("weed") or "weed")
        res.info["s5cmd"] = f"{tool_version(s5)} ({s5})"
        for n in sizes:
            work = base / f"s3-{n}"
            src = work / "tree"
            make_app_tree(src, n)
            bucket = server.make_bucket(f"cold-{n}-{uuid.uuid4().hex[:8]}")
            try:
                run_child([s5, "--endpoint-url", server.endpoint, "cp", f"{src}/*", f"s3://{bucket}/plain/"],
                          env=env)
                app = App(work, f"s3://{bucket}/ff", "s3", dict(server.env, AWS_EC2_METADATA_DISABLED="true"))
                app.seed(src, n)
                old = before(app, src, n)
                case = f"cold init {n} (S3)"
                for rep in range(reps):
                    for tool in rotate(with_before([FRACTFS, S5CMD]), rep):
                        if tool in (FRACTFS, BEFORE):
                            runner = app if tool == FRACTFS else old
                            assert runner is not None
                            dt, _, _ = runner.cold_init(n, check_against=src if rep == 0 else None)
                        else:
                            dest = work / f"dest-{rep}"
                            dest.mkdir()
                            dt = whole([s5, "--endpoint-url", server.endpoint, "cp", f"s3://{bucket}/plain/*",
                                        f"{dest}/"], env=env)
                            if rep == 0:
                                check_same(src, dest, tool)
                            elif count_files(dest)[0] != n:
                                raise SystemExit(f"{tool}: {dest} does not hold {n} files")
                            drop_tree(dest)
                        res.add(case, tool, dt)
                res.rows.append((case, FRACTFS, S5CMD, "s5cmd"))
                if old is not None:
                    res.rows.append((case, BEFORE, S5CMD, "s5cmd"))
            finally:
                drop_tree(work)
                server.delete_bucket(bucket)
    finally:
        server.stop()
        shutil.rmtree(server_dir, ignore_errors=True)


def scale_case(res: Results, base: Path, sizes: list[int], reps: int) -> None:
    """Cold init() of empty files at growing sizes: time, peak RSS, and tar -xf beside it."""
    for n in sizes:
        work = base / f"scale-{n}"
        src, vol, tarball = work / "tree", work / "volume", work / "tree.tar"
        t = time.perf_counter()
        make_app_tree(src, n, min_size=0, max_size=0)
        vol.mkdir(parents=True)
        subprocess.run(["tar", "-cf", os.fspath(tarball), "-C", os.fspath(src), "."], check=True)
        say(f"scale: {n} empty files made in {time.perf_counter() - t:.1f}s")
        app = App(work, os.fspath(vol), "local")
        old: App | None = None
        case = f"scale {n}"
        rss: list[float] = []
        rss_before: list[float] = []
        init_in_process: list[float] = []
        try:
            app.seed(src, n)
            old = before(app, src, n)
            for rep in range(reps if n < 1_000_000 else 1):
                for tool in rotate(with_before([FRACTFS, TAR]), rep):
                    if tool == BEFORE:
                        assert old is not None
                        dt, out, peak = old.cold_init(n)
                        rss_before.append(peak)
                    elif tool == FRACTFS:
                        dt, out, peak = app.cold_init(n)
                        rss.append(peak)
                        init_in_process.append(out["init_s"])
                    else:
                        dest = work / f"dest-{rep}"
                        dest.mkdir()
                        dt = whole(["tar", "-xf", os.fspath(tarball), "-C", os.fspath(dest)])
                        drop_tree(dest)
                    res.add(case, tool, dt)
        finally:
            drop_tree(work)
        res.scale.append({"files": n, "fractfs_s": res.samples.median(case, FRACTFS),
                          "init_in_process_s": sorted(init_in_process)[len(init_in_process) // 2],
                          "tar_s": res.samples.median(case, TAR), "peak_rss_mib": max(rss),
                          "before_s": res.samples.median(case, BEFORE) if rss_before else None,
                          "before_rss_mib": max(rss_before) if rss_before else None})


# -- report ------------------------------------------------------------------------------------------------

def main_table(res: Results) -> str:
    rows = []
    for case, ff, peer, kind in res.rows:
        f, p = res.samples.median(case, ff), res.samples.median(case, peer)
        peer_name = GIT + (" (first, after clone)" if kind == "git-first" else " (again)") if peer == GIT else peer
        ff_name = ("sync_now()" if peer == GIT else FRACTFS) + (" (before)" if ff == BEFORE else "")
        rows.append([case, ff_name, fmt_s(f), peer_name, fmt_s(p), fmt_ratio(f / p if f and p else None),
                     TARGETS[kind], ISSUE_TODAY.get(kind, "-")])
    return table(rows, ["case", "fractfs", "median s", "peer", "median s", "fractfs / peer", "target",
                        "issue 13's 'today'"])


def scale_table(res: Results) -> str:
    """Time and peak RSS at each size. Time per file over the whole process carries the fixed start-up cost
    (interpreter, imports, lease), which flatters the smaller sizes' neighbours; the marginal cost per file
    between one size and the next has none of it, so growth is judged on both."""
    if not res.scale:
        return ""
    rows = []
    marginals: list[float] = []
    prev: dict[str, Any] | None = None
    for s in res.scale:
        n = s["files"]
        per = s["fractfs_s"] / n * 1e6
        marginal = rss_per = None
        if prev is not None and n > prev["files"]:
            marginal = (s["fractfs_s"] - prev["fractfs_s"]) / (n - prev["files"]) * 1e6
            marginals.append(marginal)
            rss_per = (s["peak_rss_mib"] - prev["peak_rss_mib"]) / (n - prev["files"]) * MiB
        row = [f"{n}", fmt_s(s["fractfs_s"]), fmt_s(s["init_in_process_s"]), f"{per:.0f}",
               "-" if marginal is None else f"{marginal:.0f}", f"{s['peak_rss_mib']:.0f}",
               "-" if rss_per is None else f"{rss_per:.0f}", fmt_s(s["tar_s"]),
               fmt_ratio(s["fractfs_s"] / s["tar_s"] if s["tar_s"] else None)]
        if BASELINE is not None:
            row += [fmt_s(s.get("before_s")), "-" if s.get("before_rss_mib") is None else f"{s['before_rss_mib']:.0f}"]
        rows.append(row)
        prev = s
    first, last = res.scale[0], res.scale[-1]
    verdict = []
    if len(res.scale) > 1:
        growth = (last["fractfs_s"] / last["files"]) / (first["fractfs_s"] / first["files"])
        verdict.append(f"time per file (whole process) at {last['files']} is {growth:.2f}x that at {first['files']}: "
                       f"{'linear or better' if growth <= 1.25 else 'worse than linear'} (within 1.25x counts "
                       "as linear)")
        if len(marginals) > 1:
            m = marginals[-1] / marginals[0]
            verdict.append(f"marginal time per file, last step vs first step: {m:.2f}x: "
                           f"{'linear or better' if m <= 1.25 else 'worse than linear'}")
        verdict.append(f"peak RSS grows {last['peak_rss_mib'] - first['peak_rss_mib']:.0f} MiB for "
                       f"{last['files'] - first['files']} more files")
    if last["files"] >= 1_000_000:
        ok = last["peak_rss_mib"] < 1024
        verdict.append(f"1M files: peak RSS {last['peak_rss_mib']:.0f} MiB ({'under' if ok else 'OVER'} 1 GiB)")
    header = ["files (empty)", "fractfs s (median)", "init() in-process s", "us / file",
              "marginal us / file", "peak RSS MiB", "RSS bytes / extra file", "tar -xf s", "fractfs / tar"]
    if BASELINE is not None:
        header += ["before s", "before peak RSS MiB"]
    return table(rows, header) + "\n\n" + "\n".join(f"- {v}" for v in verdict)


def cap(sizes: list[int], max_files: int | None) -> list[int]:
    return sizes if max_files is None else [n for n in sizes if n <= max_files]


def parse_sizes(text: str) -> list[int]:
    return [int(x.replace("_", "")) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--sizes", default="20000,100000", help="file counts of the POSIX cases (default 20000,100000)")
    ap.add_argument("--s3-sizes", default="10000,100000", help="file counts of the S3 case (default 10000,100000)")
    ap.add_argument("--scale-sizes", default="10000,100000", help="file counts of the scale curve")
    ap.add_argument("--million", action="store_true", help="add 1 000 000 empty files to the scale curve (minutes)")
    ap.add_argument("--max-files", type=int, help="leave out every size above this")
    ap.add_argument("--cases", default="posix,s3,checkpoint,scale", help="which cases (default: all)")
    ap.add_argument("--volumes", default="disk,tmpfs", help="POSIX volumes: disk, tmpfs (default both)")
    ap.add_argument("--node", choices=["disk", "tmpfs"], default="disk",
                    help="where the checkpoint, s3 and scale cases put the node's files and local volume "
                         "(default disk; tmpfs takes a busy shared disk out of the figures)")
    ap.add_argument("--reps", type=int, default=5, help="repetitions per tool and case (default 5; 3 at 100 000+)")
    ap.add_argument("--quick", action="store_true", help="smoke run: a few hundred files, 1 repetition")
    ap.add_argument("--json", type=Path, help="also write every sample and the scale curve to this file")
    ap.add_argument("--baseline", type=Path, help="src directory of other fractfs code to run beside this one")
    args = ap.parse_args(argv)
    global BASELINE
    if args.baseline is not None:
        BASELINE = args.baseline.resolve()
        if not (BASELINE / "fractfs" / "__init__.py").is_file():
            raise SystemExit(f"--baseline {args.baseline}: not a src directory holding fractfs/")

    for src in (SRC, BASELINE):
        if src is not None:  # bytecode, as an installed package has (see App)
            compileall.compile_dir(os.fspath(src / "fractfs"), quiet=1)
    cases = {c.strip() for c in args.cases.split(",") if c.strip()}
    volumes = [v.strip() for v in args.volumes.split(",") if v.strip()]
    if args.quick:
        sizes, s3_sizes, scale_sizes, reps = [300], [200], [200, 600], 1
    else:
        sizes = cap(parse_sizes(args.sizes), args.max_files)
        s3_sizes = cap(parse_sizes(args.s3_sizes), args.max_files)
        scale_sizes = cap(parse_sizes(args.scale_sizes) + ([1_000_000] if args.million else []), args.max_files)
        reps = max(1, args.reps)

    def reps_for(n: int) -> int:
        return reps if n < 100_000 else min(reps, 3)

    load_start = load_average()
    res = Results()
    base = Path(tempfile.mkdtemp(prefix="fractfs-bench-cold-"))
    mounted: Path | None = None
    shm_dir: Path | None = None
    # a kill (timeout, Ctrl-C from a wrapper) must still unmount the tmpfs and remove the trees
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    def tmpfs_base() -> Path | None:
        """The tmpfs to work on: mounted here once (root), else a directory in /dev/shm, else None."""
        nonlocal mounted, shm_dir
        if mounted is not None or shm_dir is not None:
            return mounted or shm_dir
        path = base / "tmpfs"
        biggest = max([*sizes, *s3_sizes, 1000])
        try:
            # a size limit, not an allocation: room for the tree, its tar, the volume and one copy, with slack
            _services.mount_tmpfs(path, f"{max(biggest * 9 * 1024 * 6, 512 * MiB) // MiB}m")
            mounted = path
        except _services.MissingPiece as exc:
            if not os.access("/dev/shm", os.W_OK):
                say(f"note: skipping the tmpfs volume: {exc}; /dev/shm not writable")
                return None
            shm_dir = Path(tempfile.mkdtemp(prefix="fractfs-bench-cold-", dir="/dev/shm"))
            say(f"tmpfs: {exc}; using {shm_dir} instead")
        return mounted or shm_dir

    try:
        node = base / "disk"
        if args.node == "tmpfs":
            node = tmpfs_base() or node
        if "posix" in cases:
            for kind in volumes:
                vbase = base / "disk" if kind == "disk" else tmpfs_base()
                if vbase is None:
                    continue
                for n in sizes:
                    posix_case(res, kind, vbase, n, reps_for(n))
        if "checkpoint" in cases and sizes:
            checkpoint_case(res, node, sizes[0], reps_for(sizes[0]))
        if "s3" in cases and s3_sizes:
            s3_case(res, node, s3_sizes, reps_for(min(s3_sizes)))
        if "scale" in cases and scale_sizes:
            scale_case(res, node, scale_sizes, reps)
    finally:
        if mounted is not None:
            _services.unmount(mounted)
        if shm_dir is not None:
            shutil.rmtree(shm_dir, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)

    tarv = subprocess.run(["tar", "--version"], capture_output=True, text=True, check=False).stdout.split("\n")[0]
    gitv = subprocess.run(["git", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    head = (f"# cold_start: {machine()}\n# load average at start {load_start}, at end {load_average()} "
            f"(1/5/15 min); medians of {reps} run(s) ({min(reps, 3)} in the posix and S3 cases at 100 000 files "
            f"and more, 1 at 1 000 000 in the scale curve), tools "
            f"alternating; whole processes, fractfs until init() returns; checkpoint/S3/scale cases on "
            f"{args.node}\n# {tarv}; {gitv}"
            + (f"; SeaweedFS {res.info['seaweedfs']}; s5cmd {res.info['s5cmd']}" if "s5cmd" in res.info else ""))
    print(head + "\n")
    if res.rows:
        print(main_table(res) + "\n")
    if res.scale:
        print(f"Scale curve: cold init() of empty files, local Volume and node on {args.node}\n")
        print(scale_table(res))
    if args.json:
        args.json.write_text(json.dumps({
            "machine": machine(), "load_average": [load_start, load_average()],
            "samples": {f"{c}|{t}": v for (c, t), v in res.samples.data.items()},
            "scale": res.scale, "info": res.info}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
