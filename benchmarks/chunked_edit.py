"""Small edits in a large file (issue 12): bytes uploaded and checkpoint time, fractfs vs fractfs v1 vs restic.

    python benchmarks/chunked_edit.py [--size 1G] [--reps 3] [--series 10] [--baseline SRC|REV|none] [--quick]
                                      [--json FILE]

A file of ``--size`` random bytes (default 1 GiB) sits in an app root on a tmpfs (mounted here as root, else a
directory in /dev/shm), and each tool keeps its store on the same tmpfs, so neither disk nor network is
measured, only what each tool reads, computes and writes. Per repetition, each tool in turn (rotating order)
gets a fresh app root and an empty store and then:

1. the first checkpoint of the file (time, store growth);
2. a 4 KiB overwrite in the middle of the file, then a checkpoint;
3. a 4 KiB insert in the middle (everything after it moves by 4 KiB), then a checkpoint;
4. a 4 KiB append, then a checkpoint.

Once per tool (on a fresh store) the series: the first checkpoint, then ``--series`` (10) times a 4 KiB
overwrite at a random place (the same places for every tool) and a checkpoint; with ``keep_snapshots = 10`` the oldest
snapshot is trimmed and ``prune`` (``restic forget --keep-last 10 --prune``) removes what only it used. The
table shows the store's size for those 10 snapshots, before and after the prune.

"Bytes" are the growth of the store directory (sum of file sizes; manifests, indexes and packs included), not
a tool's own count. Times are medians; the ratio column divides a tool's median time for an edit by its own
median time for the first checkpoint (the issue's target: <= 0.25x; bytes: <= 8 MiB per 4 KiB edit of 1 GiB,
<= 1.1x the file size for the 10 snapshots).

The tools:

- **fractfs**: this checkout, through its public API, as an app uses it: a long-lived process that ran
  ``fractfs.init()`` in the app root (``.fractfs.toml``: ``backend = "local"``, the Volume on the tmpfs,
  ``sync_interval = 0`` so that only the benchmark's ``sync_now()`` checkpoints, ``keep_snapshots = 10``); the
  clock covers ``sync_now()`` in that process (interpreter start, imports and ``init()`` are paid once per
  app start, not per checkpoint). The benchmark edits the file from its own process between checkpoints.
- **fractfs v1**: the same through other code (``--baseline``: a src directory from ``git archive <commit>
  src``, a git revision, or ``none``); default main's last merge without any of the v2 writer's commits
  (``_bench.baseline_src``), the last code that writes format v1 (large files as one ``objects/`` blob each).
- **restic** (``/usr/bin/restic``, Debian's): ``restic backup`` of the app root into a repository on the
  tmpfs, its cache there too, timed as a whole process (restic has no resident mode); deduplicates with
  content-defined chunks of 512 KiB-8 MiB (1 MiB average) and encrypts.

After the edits of the first repetition each fractfs tool restores its newest snapshot into an empty
directory and the file is compared with the app's (a tool that stored nothing would win every row).
``--quick`` is the CI smoke run: 64 MiB, one repetition, a series of 3 edits.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from _bench import (
    SRC,
    KiB,
    MiB,
    Samples,
    TmpfsDir,
    baseline_src,
    count_files,
    fmt_ratio,
    fmt_s,
    in_ci,
    load_average,
    machine,
    mem_available,
    parse_size,
    require_or_skip,
    say,
    table,
    timed_run,
)

FRACTFS = "fractfs"
V1 = "fractfs v1"
RESTIC = "restic"
EDIT = 4 * KiB
SERIES = 10  #: edits in the series (--series; --quick: 3)
KEEP = 10
FILE = "data.bin"

FIRST = "first checkpoint"
OVERWRITE = "4 KiB overwrite in the middle"
INSERT = "4 KiB insert in the middle"
APPEND = "4 KiB append"
EDIT_CASES = (OVERWRITE, INSERT, APPEND)

# The app: fractfs.init() in the app root, then checkpoints when told to (one JSON command per stdin line,
# one JSON answer per stdout line). Nothing else may print to stdout.
CHILD = r"""
import json, os, sys, time
import fractfs
from fractfs import snapshot
from fractfs.stores import PosixStore

def out(**kw):
    sys.stdout.write(json.dumps(kw, default=str) + "\n")
    sys.stdout.flush()

st = fractfs.init()
out(ready=True, module=fractfs.__file__, mode=st.get("sync_mode"), writer=st.get("writer"))
for line in sys.stdin:
    cmd = json.loads(line)
    op = cmd["op"]
    try:
        if op == "sync":
            t = time.perf_counter()
            new = fractfs.sync_now()
            dt = time.perf_counter() - t
            st = fractfs.status()
            out(seconds=dt, new=len(new), uploaded=st.get("last_uploaded_bytes"), snapshot=st.get("last_snapshot_id"),
                skipped=st.get("last_skipped_busy"), missed=st.get("last_missed_deadline"), error=st.get("last_error"))
        elif op == "prune":
            res = snapshot.prune(PosixStore(cmd["store"]), cmd["keep"])
            out(ok=True, kept=len(res.kept), **{k: len(v) for k, v in vars(res).items()
                                                 if isinstance(v, list) and k != "kept"})
        elif op == "restore":
            res = snapshot.restore(PosixStore(cmd["store"]), {"root": __import__("pathlib").Path(cmd["dest"])})
            out(ok=True, restored=len(res.restored), errors=[str(e) for e in res.errors][:5])
        elif op == "quit":
            break
    except Exception as exc:
        out(error=f"{type(exc).__name__}: {exc}")
fractfs.shutdown(final_sync=False)
"""


def tree_bytes(path: Path) -> int:
    return count_files(path)[1] if path.exists() else 0


def manifest_version(store: Path) -> Any:
    """The format version of the newest manifest in a fractfs store (what that code writes)."""
    names = sorted((store / "snapshots").glob("*.json.gz"))
    if not names:
        return None
    try:
        return json.loads(gzip.decompress(names[-1].read_bytes())).get("version")
    except (OSError, ValueError, AttributeError):
        return "?"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 * MiB):
            h.update(block)
    return h.hexdigest()


# -- edits (made by the benchmark's process, as the app would make them) --------------------------------------

def overwrite(path: Path, offset: int, rng: random.Random) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(rng.randbytes(EDIT))


def insert(path: Path, offset: int, rng: random.Random) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        tail = f.read()
        f.seek(offset)
        f.write(rng.randbytes(EDIT))
        f.write(tail)


def append(path: Path, rng: random.Random) -> None:
    with open(path, "ab") as f:
        f.write(rng.randbytes(EDIT))


def make_file(path: Path, size: int) -> None:
    rng = random.Random(12)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, 16 * MiB)
            f.write(rng.randbytes(n))
            left -= n


# -- the tools -----------------------------------------------------------------------------------------------

class Tool:
    """One tool on one fresh app root and store."""

    name = ""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.root = work / "app"
        self.root.mkdir(parents=True)

    @property
    def file(self) -> Path:
        return self.root / FILE

    def store_dir(self) -> Path:
        raise NotImplementedError

    def checkpoint(self) -> dict[str, Any]:
        """Checkpoint the app root: {"seconds": ..., "bytes": store growth, ...}."""
        raise NotImplementedError

    def prune(self) -> None:
        raise NotImplementedError

    def check(self) -> bool:
        """Restore the newest snapshot elsewhere and compare the file; False: not checked (restic)."""
        return False

    def close(self) -> None:
        pass


class FractfsApp(Tool):
    def __init__(self, work: Path, name: str, src: Path) -> None:
        super().__init__(work)
        self.name, self.src = name, src
        self.volume = work / "volume"
        self.volume.mkdir()
        (self.root / ".fractfs.toml").write_text(
            f'backend = "local"\nvolume_root = "{self.volume}"\nsync_interval = 0\nkeep_snapshots = {KEEP}\n')
        env = {k: v for k, v in os.environ.items() if not k.lower().startswith("fractfs_")}
        env.update(PYTHONPATH=os.fspath(src), fractfs_ROOT=os.fspath(self.root),
                   fractfs_SCRATCH=os.fspath(work / "scratch"))
        self.log = open(work / "app.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD], env=env, cwd=self.root, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log)
        hello = self._read()
        if not str(hello.get("module", "")).startswith(os.fspath(src)):
            raise SystemExit(f"{name}: the app imported {hello.get('module')}, not the code in {src}")
        if not hello.get("writer"):
            raise SystemExit(f"{name}: the app is not the checkpoint writer: {hello}")

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.log.flush()
            tail = (self.work / "app.log").read_text()[-3000:]
            raise SystemExit(f"{self.name}: the app process ended ({self.proc.poll()}):\n{tail}")
        doc: dict[str, Any] = json.loads(line)
        return doc

    def ask(self, **cmd: Any) -> dict[str, Any]:
        stdin: IO[str] | None = self.proc.stdin
        assert stdin is not None
        stdin.write(json.dumps(cmd) + "\n")
        stdin.flush()
        doc = self._read()
        if doc.get("error") and cmd["op"] != "sync":
            raise SystemExit(f"{self.name}: {cmd['op']} failed: {doc['error']}")
        return doc

    def store_dir(self) -> Path:
        return self.volume / "_checkpoint"

    def checkpoint(self) -> dict[str, Any]:
        before = tree_bytes(self.volume)
        doc = self.ask(op="sync")
        if doc.get("new", 0) < 1 or doc.get("skipped") or doc.get("missed"):
            raise SystemExit(f"{self.name}: the checkpoint did not store the edited file: {doc}")
        doc["bytes"] = tree_bytes(self.volume) - before
        doc["format"] = manifest_version(self.store_dir())
        return doc

    def prune(self) -> None:
        self.ask(op="prune", store=os.fspath(self.store_dir()), keep=KEEP)

    def check(self) -> bool:
        dest = self.work / "restored"
        dest.mkdir()
        doc = self.ask(op="restore", store=os.fspath(self.store_dir()), dest=os.fspath(dest))
        if doc.get("errors") or sha256_file(dest / FILE) != sha256_file(self.file):
            raise SystemExit(f"{self.name}: the restored {FILE} differs from the app's: {doc}")
        shutil.rmtree(dest)
        say(f"  {self.name}: restored the newest snapshot, {FILE} identical")
        return True

    def close(self) -> None:
        try:
            self.ask(op="quit")
        except SystemExit:
            pass
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class Restic(Tool):
    name = RESTIC

    def __init__(self, work: Path, exe: str) -> None:
        super().__init__(work)
        self.exe, self.repo = exe, work / "repo"
        self.env = dict(os.environ, RESTIC_PASSWORD="bench", RESTIC_CACHE_DIR=os.fspath(work / "cache"))
        self.env.pop("RESTIC_REPOSITORY", None)
        timed_run([exe, "-r", os.fspath(self.repo), "init"], env=self.env)

    def store_dir(self) -> Path:
        return self.repo

    def checkpoint(self) -> dict[str, Any]:
        before = tree_bytes(self.repo)
        dt = timed_run([self.exe, "-r", os.fspath(self.repo), "backup", "-q", "--host", "bench",
                        os.fspath(self.root)], env=self.env)
        return {"seconds": dt, "bytes": tree_bytes(self.repo) - before}

    def prune(self) -> None:
        timed_run([self.exe, "-r", os.fspath(self.repo), "forget", "-q", "--keep-last", str(KEEP), "--prune"],
                  env=self.env)


class Bench:
    def __init__(self, tmp: Path, size: int, srcs: dict[str, Path], restic: str | None, series: int) -> None:
        self.tmp, self.size, self.srcs, self.restic = tmp, size, srcs, restic
        self.n_series = series
        self.samples = Samples()  # seconds
        self.bytes = Samples()    # store growth
        self.series: dict[str, dict[str, Any]] = {}
        self.formats: dict[str, Any] = {}
        self.notes: dict[str, list[str]] = {}
        self.uploaded: dict[tuple[str, str], list[int]] = {}
        self.master = tmp / "master.bin"

    def tools(self) -> list[str]:
        return [*self.srcs, *([RESTIC] if self.restic else [])]

    def start(self, tool: str, work: Path) -> Tool:
        t: Tool
        if tool == RESTIC:
            assert self.restic is not None
            t = Restic(work, self.restic)
        else:
            t = FractfsApp(work, tool, self.srcs[tool])
        shutil.copyfile(self.master, t.file)
        return t

    def record(self, tool: str, case: str, res: dict[str, Any]) -> None:
        self.samples.add(case, tool, res["seconds"])
        self.bytes.add(case, tool, res["bytes"])
        if res.get("uploaded") is not None:
            self.uploaded.setdefault((case, tool), []).append(int(res["uploaded"]))
        if res.get("format") is not None:
            self.formats[tool] = res["format"]
        say(f"  {tool:<11} {case:<32} {res['seconds']:8.3f}s  store +{res['bytes'] / MiB:10.2f} MiB")

    def run_edits(self, rep: int, tool: str) -> None:
        work = self.tmp / f"{tool.replace(' ', '-')}-{rep}"
        t = self.start(tool, work)
        rng = random.Random(100 + rep)
        try:
            self.record(tool, FIRST, t.checkpoint())
            overwrite(t.file, self.size // 2, rng)
            self.record(tool, OVERWRITE, t.checkpoint())
            insert(t.file, self.size // 2 + 64 * KiB, rng)
            self.record(tool, INSERT, t.checkpoint())
            append(t.file, rng)
            self.record(tool, APPEND, t.checkpoint())
            if rep == 0:
                try:
                    if t.check():
                        self.notes.setdefault(tool, []).append("its newest snapshot restored identical")
                except SystemExit as exc:  # keep the figures, say it loudly
                    say(f"  {tool}: RESTORE CHECK FAILED: {exc}")
                    self.notes.setdefault(tool, []).append(f"RESTORE CHECK FAILED: {exc}")
        finally:
            t.close()
            shutil.rmtree(work, ignore_errors=True)

    def run_series(self, tool: str) -> None:
        need = (self.n_series + 3) * self.size
        whole = (self.bytes.median(OVERWRITE, tool) or 0) > self.size / 2
        if whole and mem_available() < need + 4 * 1024 * MiB:
            # a tool that stores every version whole (v1) needs 11 copies of the file on a tmpfs (RAM) shared
            # with other jobs
            say(f"note: skipping the {tool} series: it needs ~{need / MiB / 1024:.1f} GiB of tmpfs, "
                f"{mem_available() / MiB / 1024:.1f} GiB available")
            return
        work = self.tmp / f"{tool.replace(' ', '-')}-series"
        t = self.start(tool, work)
        places = random.Random(21)
        rng = random.Random(22)
        try:
            self.record(tool, FIRST, t.checkpoint())
            seconds = []
            for _ in range(self.n_series):
                overwrite(t.file, places.randrange(0, self.size - EDIT), rng)
                res = t.checkpoint()
                seconds.append(res["seconds"])
            before = tree_bytes(t.store_dir())
            after: int | None = None
            try:
                t.prune()
                after = tree_bytes(t.store_dir())
            except SystemExit as exc:
                say(f"  {tool}: PRUNE FAILED: {exc}")
                self.notes.setdefault(tool, []).append(f"PRUNE FAILED: {exc}")
            self.series[tool] = {"before_prune": before, "after_prune": after, "seconds": seconds}
            say(f"  {tool:<11} series of {self.n_series} edits: store {before / MiB:.1f} MiB, after prune "
                f"{mib(after)} MiB; checkpoints {min(seconds):.3f}-{max(seconds):.3f}s")
        finally:
            t.close()
            shutil.rmtree(work, ignore_errors=True)


# -- report ------------------------------------------------------------------------------------------------

def mib(x: float | None) -> str:
    return "-" if x is None else f"{x / MiB:.2f}"


def small_ratio(x: float) -> str:
    """A ratio that stays readable far below 1 (0.72 MiB against 1 GiB is 0.0007x, not 0.00x)."""
    return fmt_ratio(x) if x >= 0.1 else f"{x:.2g}x"


def report(b: Bench, labels: dict[str, str]) -> str:
    tools = b.tools()
    target_bytes = {OVERWRITE: "<= 8 MiB", INSERT: "-", APPEND: "-"}
    header = ["case"] + [f"{t} MiB" for t in tools] + [f"{t} s" for t in tools] \
        + [f"{t} / first" for t in tools] + [f"fractfs / {t} bytes" for t in tools if t != FRACTFS] \
        + ["target (fractfs)"]
    rows = []
    for case in (FIRST, *EDIT_CASES):
        byt = {t: b.bytes.median(case, t) for t in tools}
        sec = {t: b.samples.median(case, t) for t in tools}
        first = {t: b.samples.median(FIRST, t) for t in tools}
        ratio = [fmt_ratio(sec[t] / first[t]) if case != FIRST and sec[t] and first[t] else "-" for t in tools]
        vs = [small_ratio(byt[FRACTFS] / byt[t]) if byt.get(FRACTFS) is not None and byt[t] else "-"
              for t in tools if t != FRACTFS]
        target = "-" if case == FIRST else f"{target_bytes[case]}; <= 0.25x first"
        rows.append([case] + [mib(byt[t]) for t in tools] + [fmt_s(sec[t]) for t in tools] + ratio + vs
                    + [target])
    n = b.n_series
    made = f"{n + 1} made, {min(n + 1, KEEP)} kept"
    for label, key in ((f"{min(n + 1, KEEP)} snapshots, one 4 KiB edit each: store after prune", "after_prune"),
                       (f"  same, before prune ({made})", "before_prune")):
        s = {t: b.series.get(t, {}).get(key) for t in tools}
        vs = [small_ratio(s[FRACTFS] / s[t]) if s.get(FRACTFS) and s[t] else "-" for t in tools if t != FRACTFS]
        target = f"<= {1.1 * b.size / MiB:.0f} MiB" if key == "after_prune" else "-"
        rows.append([label] + [mib(s[t]) for t in tools] + ["-"] * (2 * len(tools)) + vs + [target])
    lines = [table(rows, header), ""]
    lines += [f"- {t}: {labels[t]}" + (f"; writes format v{b.formats[t]}" if t in b.formats else "")
              + "".join(f"; {n}" for n in b.notes.get(t, [])) for t in tools]
    up = [f"{case}: {mib(sorted(v)[len(v) // 2])} MiB" for (case, t), v in b.uploaded.items() if t == FRACTFS]
    if up:
        lines.append(f"- fractfs' own count of uploaded bytes (status last_uploaded_bytes, median): {'; '.join(up)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--size", default="1G", help="size of the file (default 1G)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of the edit cases per tool (default 3)")
    ap.add_argument("--baseline", help="fractfs v1: a src directory, a git revision, or 'none' (default: the "
                                       "last main merge without the v2 writer's commits)")
    ap.add_argument("--series", type=int, default=SERIES,
                    help=f"edits in the series (default {SERIES}; 0 leaves it out; --quick: 3)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 64 MiB, 1 repetition")
    ap.add_argument("--json", type=Path, help="also write every sample here")
    args = ap.parse_args(argv)
    size = 64 * MiB if args.quick else parse_size(args.size)
    reps = 1 if args.quick else max(1, args.reps)
    series = 3 if args.quick else max(0, args.series)
    if size < 1 * MiB:
        raise SystemExit(f"--size {args.size}: at least 1 MiB")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean-up (unmount) on a kill too

    restic = shutil.which("restic")
    if not require_or_skip("restic", restic is not None, hint="apt-get install restic"):
        restic = None
    load_start = load_average()
    # a size cap, not an allocation: the master file, one app copy, and the v1 series' 11 versions
    cap = f"{max((series + 6) * size, 1024 * MiB) // MiB}m"
    with TmpfsDir("edit", cap) as tmp:
        say(f"work on {tmp}")
        srcs = {FRACTFS: SRC}
        labels = {FRACTFS: f"this checkout ({SRC})"}
        base, why = baseline_src(args.baseline, tmp)
        if base is not None:
            srcs[V1] = base
            labels[V1] = why
        elif args.baseline is None or args.baseline.lower() != "none":
            if in_ci():
                raise SystemExit(f"CI=true but fractfs v1 is missing: {why}")
            say(f"note: skipping fractfs v1: {why}")
        if restic is not None:
            v = subprocess.run([restic, "version"], capture_output=True, text=True, check=False).stdout.strip()
            labels[RESTIC] = f"{v} ({restic}), repository on the tmpfs"
        b = Bench(tmp, size, srcs, restic, series)
        t = time.perf_counter()
        make_file(b.master, size)
        say(f"{size / MiB:.0f} MiB of random bytes written in {time.perf_counter() - t:.1f}s; tools: {b.tools()}")
        tools = b.tools()
        for rep in range(reps):
            for tool in tools[rep % len(tools):] + tools[:rep % len(tools)]:
                b.run_edits(rep, tool)
        if series:
            for tool in tools:
                b.run_series(tool)
    print(f"# chunked_edit: {machine()}\n# file {size / MiB:.0f} MiB of random bytes on a tmpfs, stores on it too; "
          f"medians of {reps} run(s) per edit case ({reps + (1 if series else 0)} for the first "
          f"checkpoint), tools rotating; load average {load_start} at start, {load_average()} at end\n")
    print(report(b, labels))
    if args.json:
        args.json.write_text(json.dumps({
            "machine": machine(), "size": size, "labels": labels, "formats": b.formats,
            "seconds": {f"{c}|{t}": v for (c, t), v in b.samples.data.items()},
            "bytes": {f"{c}|{t}": v for (c, t), v in b.bytes.data.items()},
            "uploaded": {f"{c}|{t}": v for (c, t), v in b.uploaded.items()}, "series": b.series,
            "notes": b.notes}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
