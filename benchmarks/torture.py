"""Crash torture: SIGKILL a real app at random points of its checkpoints; a cold node must then restore
exactly one committed generation.

    python benchmarks/torture.py --trials 200 --volume plain
    python benchmarks/torture.py --trials 50 --volume s3,fuse,inplace --json torture.json

Each trial is one *node life*, in a fresh Python process running the whole public stack:

1. the node is cold (app root and scratch wiped, only the deploy bundle ``.fractfs.toml`` is there);
   ``fractfs.init()`` provisions and restores. The parent checks the restored tree against the oracle
   (below) before letting the app go on;
2. the app loops: mutate the tree (files, deletions, symlinks, empty directories, chmod, a SQLite
   database, a large file stored as an object, a pinned ``[local]`` file inside a ``[dirs]`` directory,
   ignored junk), then ``fractfs.sync_now()``; every third generation it also runs
   ``fractfs.snapshot.prune``;
3. it is killed with SIGKILL: either by the parent after a random delay, or by itself at a chosen store call
   (before, during or after a pack upload, a large-object upload, the manifest write, the trim of old
   manifests, a prune deletion, a listing). "During" writes a torn prefix under the final key first, as a
   FUSE mount without rename would leave it.

The oracle is exact. Before ``sync_now()`` the app appends the generation's intended tree to a side file,
after it returns the snapshot id. A kill can land between the two, so after the kill the newest snapshot
must be either the last generation whose id was recorded (then it must be that very snapshot) or the
generation that was in flight (a snapshot newer than the last recorded one): in both cases the restored
tree must equal that generation's tree exactly (content, mode and mtime of every file, symlink targets,
directories; SQLite databases compared by their logical dump). Anything else, a temporary file left in the
tree, or a refused/damaged entry in the restore is a failure. At the end every valid snapshot on the store
must be one of the recorded generations and ``verify(store, "all")`` must find no damaged file.

The test suite runs a short version (``tests/test_reliability_torture.py``); docs/reliability.md has the
figures of the long runs.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SRC = REPO / "src"
TESTS = REPO / "tests"

KINDS = ("plain", "inplace", "tmpfs", "fuse", "s3")

CONFIG_DIRS = """\
[dirs]
paths = ["data/blobs"]
[local]
patterns = ["manifest.json", "*.sqlite"]
[ignore]
patterns = ["*.tmp", "cache/"]
"""
# An S3 store has no POSIX path for [dirs]; everything else is the same.
CONFIG_NODIRS = """\
[local]
patterns = ["*.sqlite"]
[ignore]
patterns = ["*.tmp", "cache/"]
"""

#: name -> what the app's store wrapper does: on the nth matching call after "go", kill itself.
#: when: before (nothing written), torn (a prefix written under the final key), after (the call completed).
KILL_PLANS: dict[str, dict[str, str]] = {
    "pack-before": {"op": "put", "prefix": "packs/", "when": "before"},
    "pack-torn": {"op": "put", "prefix": "packs/", "when": "torn"},
    "pack-after": {"op": "put", "prefix": "packs/", "when": "after"},
    "object-torn": {"op": "put_file", "prefix": "objects/", "when": "torn"},
    "object-after": {"op": "put_file", "prefix": "objects/", "when": "after"},
    "manifest-before": {"op": "put", "prefix": "snapshots/", "when": "before"},
    "manifest-torn": {"op": "put", "prefix": "snapshots/", "when": "torn"},
    "manifest-after": {"op": "put", "prefix": "snapshots/", "when": "after"},
    "trim": {"op": "delete", "prefix": "snapshots/", "when": "after", "phase": "checkpoint"},
    "prune-manifest": {"op": "delete", "prefix": "snapshots/", "when": "after", "phase": "prune"},
    "prune-blob": {"op": "delete", "prefix": "packs/", "when": "after", "phase": "prune"},
    "list": {"op": "list", "prefix": "snapshots/", "when": "after"},
}

PRUNE_EVERY = 3
PRUNE_KEEP = 3
BIG = 9 * 1024 * 1024  # above the engine's 8 MiB threshold: stored as an object, streamed


# ---------------------------------------------------------------------------------------------------------
# The tree as the oracle sees it (used by the app for its intent and by the parent on the cold node)

def _skip_root(rel: str, name: str) -> bool:
    return (rel == ".fractfs.toml" or name.endswith(".tmp") or rel == "cache" or rel.startswith("cache/")
            or rel == "data/blobs" or rel == "data" or name.endswith(("-journal", "-wal", "-shm")))


def _sqlite_dump(path: str) -> str:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return hashlib.sha256("\n".join(con.iterdump()).encode()).hexdigest()
    finally:
        con.close()


def tree(root: Path, scratch: Path) -> dict[str, str]:
    """What must survive: every checkpointed entry of the app root, and the pinned files in scratch."""
    out: dict[str, str] = {}
    for area, top in (("root", root), ("scratch", scratch)):
        if not top.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(top):
            base = os.path.relpath(dirpath, top)
            base = "" if base == "." else base
            keep_dirs = []
            for name in sorted(dirnames):
                rel = f"{base}/{name}" if base else name
                full = os.path.join(dirpath, name)
                if area == "scratch" and rel == ".fractfs-state":
                    continue
                if area == "root" and _skip_root(rel, name):
                    continue
                if os.path.islink(full):
                    out[f"{area}:{rel}"] = "link:" + os.readlink(full)
                    continue
                if area == "root":
                    out[f"{area}:{rel}/"] = "dir"
                keep_dirs.append(name)
            dirnames[:] = keep_dirs
            for name in sorted(filenames):
                rel = f"{base}/{name}" if base else name
                full = os.path.join(dirpath, name)
                if area == "root" and _skip_root(rel, name):
                    continue
                if name.startswith(".fractfs-tmp-"):
                    out[f"{area}:{rel}"] = "LEFTOVER restore temp file"
                    continue
                st = os.lstat(full)
                if os.path.islink(full):
                    out[f"{area}:{rel}"] = "link:" + os.readlink(full)
                elif name.endswith(".sqlite"):
                    out[f"{area}:{rel}"] = "sqlite:" + _sqlite_dump(full)
                else:
                    h = hashlib.sha256()
                    with open(full, "rb") as f:
                        for chunk in iter(lambda: f.read(1 << 20), b""):
                            h.update(chunk)
                    out[f"{area}:{rel}"] = f"file:{st.st_mode & 0o777:o}:{st.st_mtime_ns}:{h.hexdigest()}"
    return out


def leftovers(*tops: Path) -> list[str]:
    """Restore temp files anywhere under ``tops`` (a finished restore leaves none)."""
    found = []
    for top in tops:
        for dirpath, _dirs, files in os.walk(top):
            found += [os.path.join(dirpath, f) for f in files if f.startswith(".fractfs-tmp-")]
    return found


# ---------------------------------------------------------------------------------------------------------
# The app (child process)

def _mutate(root: Path, gen: int, seed: int, big_every: int, pins: bool) -> None:
    rng = random.Random(f"{seed}-{gen}")
    (root / "GENERATION").write_text(str(gen))
    for _ in range(rng.randint(3, 25)):
        p = root / f"d{rng.randint(0, 7)}" / f"f{rng.randint(0, 40):03d}"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"" if rng.random() < 0.05 else rng.randbytes(rng.randint(1, 20000)))
    files = sorted(p for p in root.glob("d*/f*") if p.is_file())
    for p in files:
        r = rng.random()
        if r < 0.04:
            p.unlink()
        elif r < 0.06:
            p.chmod(rng.choice([0o600, 0o640, 0o755]))
    if rng.random() < 0.08:
        shutil.rmtree(root / f"d{rng.randint(0, 7)}", ignore_errors=True)
    if rng.random() < 0.3:
        links = root / "links"
        links.mkdir(exist_ok=True)
        link = links / f"l{rng.randint(0, 5)}"
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        os.symlink(f"../d{rng.randint(0, 7)}/f{rng.randint(0, 40):03d}", link)
    if rng.random() < 0.2:
        (root / "empty" / f"e{rng.randint(0, 5)}").mkdir(parents=True, exist_ok=True)
    # a SQLite database (copied with the backup API, compared by its logical dump)
    con = sqlite3.connect(root / "state.sqlite")
    with con:
        con.execute("create table if not exists gens (gen integer primary key, note text)")
        con.execute("insert or replace into gens values (?, ?)", (gen, rng.randbytes(50).hex()))
    con.close()
    # large files: an object each; sometimes back to an earlier content (its object already exists)
    if big_every and gen % big_every == 0:
        variant = rng.randint(0, 3)
        data = random.Random(f"big-{seed}-{variant}").randbytes(BIG)
        (root / "big").mkdir(exist_ok=True)
        (root / "big" / f"b{rng.randint(0, 1)}.bin").write_bytes(data)
    # never checkpointed
    (root / "junk.tmp").write_bytes(rng.randbytes(100))
    (root / "cache").mkdir(exist_ok=True)
    (root / "cache" / "c").write_bytes(rng.randbytes(100))
    if pins:
        # on the Volume through the [dirs] link, and one pinned [local] file that lives in scratch
        (root / "data" / "blobs" / f"blob{gen % 5}.bin").write_bytes(rng.randbytes(3000))
        (root / "data" / "blobs" / "manifest.json").write_text(json.dumps({"gen": gen}))


class _KillSwitch:
    """Wraps the store the runtime opens: SIGKILLs this process at the nth matching call once armed."""

    def __init__(self, inner: Any, plan: Optional[dict[str, Any]], side: "Side"):
        self.inner = inner
        self.url = inner.url
        self.plan = plan
        self.side = side
        self.armed = False
        self.phase = "checkpoint"
        self.seen = 0

    def _hit(self, op: str, key: str) -> Optional[str]:
        p = self.plan
        if not self.armed or p is None or p["op"] != op or not key.startswith(p["prefix"]):
            return None
        if p.get("phase", self.phase) != self.phase:
            return None
        self.seen += 1
        if self.seen < int(p["nth"]):
            return None
        return str(p["when"])

    def _die(self, what: str) -> None:
        self.side.write({"killed": what})
        os.kill(os.getpid(), signal.SIGKILL)

    def put(self, key: str, data: bytes, *, exclusive: bool = False) -> None:
        when = self._hit("put", key)
        if when == "before":
            self._die(f"before put {key}")
        if when == "torn" and data and not (exclusive and self.inner.size(key) is not None):
            self.inner.put(key, data[: len(data) // 2])
            self._die(f"torn put {key}")
        self.inner.put(key, data, exclusive=exclusive)
        if when is not None:
            self._die(f"after put {key}")

    def put_file(self, key: str, path: Path) -> None:
        when = self._hit("put_file", key)
        if when == "before":
            self._die(f"before put_file {key}")
        if when == "torn":
            with open(path, "rb") as f:
                self.inner.put(key, f.read(os.path.getsize(path) // 2))
            self._die(f"torn put_file {key}")
        self.inner.put_file(key, path)
        if when is not None:
            self._die(f"after put_file {key}")

    def delete(self, key: str) -> None:
        when = self._hit("delete", key)
        if when == "before":
            self._die(f"before delete {key}")
        self.inner.delete(key)
        if when is not None:
            self._die(f"after delete {key}")

    def list(self, prefix: str = "") -> Any:
        when = self._hit("list", prefix)
        out = list(self.inner.list(prefix))
        if when is not None:
            self._die(f"after list {prefix}")
        return iter(out)

    def put_many(self, items: Any, *, workers: int = 32) -> None:
        # the batch path must pass through the switch too, or pack uploads could never be hit
        from fractfs.stores.transfer import parallel_map

        parallel_map(lambda kv: self.put(kv[0], kv[1]), items, workers)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class Side:
    """The app's side file: one JSON object per line, appended with single write() calls (a SIGKILL cannot
    tear a line that write() already returned from; the page cache outlives the process)."""

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, obj: dict[str, Any]) -> None:
        os.write(self.fd, (json.dumps(obj, sort_keys=True) + "\n").encode())


def child_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--side", required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--start-gen", type=int, required=True)
    ap.add_argument("--kill", default="")
    ap.add_argument("--in-place", action="store_true")
    ap.add_argument("--big-every", type=int, default=4)
    ap.add_argument("--max-gens", type=int, default=400)
    a = ap.parse_args(argv)
    root = Path(a.root)
    side = Side(Path(a.side))
    plan = json.loads(a.kill) if a.kill else None

    if os.environ.get("TORTURE_LOG"):
        import logging

        level = getattr(logging, os.environ.get("TORTURE_LOG_LEVEL", "INFO"))
        logging.basicConfig(filename=os.environ["TORTURE_LOG"], level=level,
                            format=f"%(asctime)s {os.getpid()} %(threadName)s %(message)s")
    import fractfs
    import fractfs.stores as stores
    from fractfs.snapshot import prune

    real_open = stores.open_store
    switches: list[_KillSwitch] = []

    def open_store(location: str, **options: Any) -> Any:
        inner = real_open(location, **options)
        if a.in_place:
            # a FUSE mount without rename or hard links: everything is written under its final name
            inner._rename_ok = False  # type: ignore[attr-defined]
            inner._link_ok = False  # type: ignore[attr-defined]
        sw = _KillSwitch(inner, plan, side)
        switches.append(sw)
        return sw

    stores.open_store = open_store  # type: ignore[assignment]
    st = fractfs.init(root)
    print(json.dumps({"event": "ready", "restore": st["restore"], "warnings": st["warnings"],
                      "pins": bool(st.get("provision") and st["provision"]["capabilities"]
                                   and st["provision"]["capabilities"]["symlinks"]),
                      "last_snapshot_id": st["last_snapshot_id"]}), flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    # One writer per store: the killed predecessor's lease must expire first (fractfs_LEASE_TIMEOUT is short
    # here). Until then sync_now() would store nothing.
    waited = time.monotonic()
    writer_at_start = bool(st["writer"])
    while not fractfs.status()["writer"]:
        if time.monotonic() - waited > 60:
            print(json.dumps({"event": "no-lease", "lease": fractfs.status()["lease"]}), flush=True)
            sys.exit(3)
        time.sleep(0.05)
    if not writer_at_start:
        # Taking the lease over makes the daemon checkpoint right away, on its own. The oracle must know every
        # commit point, so let that one finish (it finds the restored tree unchanged) before mutating anything.
        while fractfs.status()["syncs"] < 1 and time.monotonic() - waited < 60:
            time.sleep(0.02)
    print(json.dumps({"event": "writer", "waited": round(time.monotonic() - waited, 2),
                      "sid": fractfs.status()["last_snapshot_id"]}), flush=True)
    scratch = Path(st["scratch"])
    pins = bool(st.get("dirs"))
    prune_store = open_store(st["checkpoint_location"], backend=st["backend"])
    for sw in switches:
        sw.armed = True
    for gen in range(a.start_gen, a.start_gen + a.max_gens):
        _mutate(root, gen, a.seed, a.big_every, pins)
        side.write({"intent": gen, "tree": tree(root, scratch)})
        before = fractfs.status()["last_snapshot_id"]
        try:
            fractfs.sync_now()
        except fractfs.FractfsError as exc:
            # refused, e.g. the lease lapsed while a slow store was renewing it: nothing was committed, which
            # is fine for the oracle (the previous generation stays the checkpoint) but worth counting
            side.write({"refused": gen, "error": f"{type(exc).__name__}: {exc}"[:300]})
            continue
        sid = fractfs.status()["last_snapshot_id"]
        side.write({"commit": gen, "sid": sid} if sid != before else {"nocommit": gen})
        if gen % PRUNE_EVERY == 0:
            for sw in switches:
                sw.phase = "prune"
            prune(prune_store, PRUNE_KEEP, newest_known=fractfs.status()["last_snapshot_id"])
            for sw in switches:
                sw.phase = "checkpoint"
            side.write({"pruned": gen})
    fractfs.shutdown(final_sync=False)


# ---------------------------------------------------------------------------------------------------------
# The driver

@dataclass
class Report:
    kind: str
    trials: int = 0
    failures: list[str] = field(default_factory=list)
    kills: Counter[str] = field(default_factory=Counter)
    generations_committed: int = 0
    in_flight_committed: int = 0      #: kills after the manifest landed but before sync_now returned
    restores_checked: int = 0
    restored_files: int = 0
    fell_back: int = 0                #: restores that skipped a damaged (torn) newer manifest
    snapshots_verified: int = 0
    refused_syncs: int = 0            #: sync_now() calls that raised (nothing committed), e.g. the lease lapsed
    refusals: Counter[str] = field(default_factory=Counter)
    recommitted: int = 0              #: restored trees committed again as a new snapshot (same content)
    torn_side_records: int = 0        #: oracle records the kill cut short (harness bookkeeping, not fractfs)
    lease_wait: float = 0.0           #: seconds cold nodes waited for the killed node's lease to expire
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "trials": self.trials, "failures": len(self.failures),
                "failure_details": self.failures[:20], "kills": dict(sorted(self.kills.items())),
                "generations_committed": self.generations_committed,
                "in_flight_committed": self.in_flight_committed, "restores_checked": self.restores_checked,
                "restored_files": self.restored_files, "fell_back_from_torn_manifest": self.fell_back,
                "snapshots_verified": self.snapshots_verified, "lease_wait_seconds": round(self.lease_wait, 1),
                "restored_tree_recommitted": self.recommitted,
                "refused_syncs": self.refused_syncs, "refusals": dict(self.refusals),
                "torn_side_records": self.torn_side_records,
                "seconds": round(self.seconds, 1)}


def _seq(sid: Optional[str]) -> int:
    return int(sid.split("-", 1)[0]) if sid else 0


def _diff(want: dict[str, str], got: dict[str, str]) -> str:
    keys = sorted(set(want) | set(got))
    bad = [k for k in keys if want.get(k) != got.get(k)]
    return "; ".join(f"{k}: want {want.get(k)!r:.60} got {got.get(k)!r:.60}" for k in bad[:6])


class Torture:
    """One volume kind: a node (root + scratch) and a store location, ``run(trials)`` times."""

    def __init__(self, kind: str, work: Path, volume_root: str, *, seed: int = 1, env: Optional[dict[str, str]]
                 = None, max_delay: float = 1.5, targeted: float = 0.6, big_every: int = 4,
                 lease_timeout: float = 1.0, plans: Optional[list[str]] = None, log: Any = None):
        self.kind = kind
        self.work = work
        self.root = work / "app"
        self.scratch = work / "scratch"
        self.side_path = work / "side.jsonl"
        self.volume_root = volume_root
        self.seed = seed
        self.rng = random.Random(seed)
        self.max_delay = max_delay
        self.targeted = targeted
        self.big_every = big_every
        self.plans = sorted(plans or KILL_PLANS)
        self.log = log or (lambda msg: None)
        self.config = CONFIG_NODIRS if "://" in volume_root else CONFIG_DIRS
        self.env = {k: v for k, v in os.environ.items() if not k.lower().startswith("fractfs_")}
        self.env.update(env or {})
        self.env.update({
            "fractfs_VOLUME_ROOT": volume_root,
            "fractfs_SCRATCH": str(self.scratch),
            # checkpoints only when the app asks (the daemon still runs, for the lease heartbeat): the oracle
            # must know every commit point, and watch mode would checkpoint mid-generation on its own
            "fractfs_SYNC_MODE": "interval",
            "fractfs_SYNC_INTERVAL": "3600",
            # one more than prune keeps, so checkpoints also trim old manifests (another place to be killed)
            "fractfs_KEEP_SNAPSHOTS": str(PRUNE_KEEP + 1),
            # a killed writer's lease expires quickly, so the next node can write
            "fractfs_LEASE_TIMEOUT": str(lease_timeout),
            "PYTHONPATH": str(SRC) + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH")
                                      else ""),
        })
        if "://" in volume_root:
            self.env["fractfs_BACKEND"] = "s3"
        self.report = Report(kind)
        # the oracle's state
        self.trees: dict[int, dict[str, str]] = {}
        self.current_gen: Optional[int] = None   # the generation the store's newest snapshot holds
        self.current_sid: Optional[str] = None
        self.next_gen = 1
        self.side_seen = 0

    # -- one node life ---------------------------------------------------------------------------------
    def _wipe(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.root.mkdir(parents=True)
        (self.root / ".fractfs.toml").write_text(self.config)

    def _side_lines(self) -> list[dict[str, Any]]:
        if not self.side_path.exists():
            return []
        raw = self.side_path.read_bytes()
        complete = raw.rfind(b"\n") + 1
        if complete < len(raw):
            # The kill landed inside a write (the kernel stops a large write at a fatal signal): that record
            # was never made. Cut it off so the next node's first record starts on a line of its own.
            with open(self.side_path, "r+b") as f:
                f.truncate(complete)
            self.report.torn_side_records += 1
        lines = raw[:complete].decode().splitlines()
        new, self.side_seen = lines[self.side_seen:], len(lines)
        return [json.loads(ln) for ln in new if ln.strip()]

    def _start(self, plan: Optional[dict[str, Any]]) -> subprocess.Popen[str]:
        cmd = [sys.executable, os.fspath(Path(__file__).resolve()), "child", "--root", str(self.root),
               "--side", str(self.side_path), "--seed", str(self.seed), "--start-gen", str(self.next_gen),
               "--big-every", str(self.big_every)]
        if plan:
            cmd += ["--kill", json.dumps(plan)]
        if self.kind == "inplace":
            cmd.append("--in-place")
        return subprocess.Popen(cmd, cwd=self.root, env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def _fail(self, msg: str) -> None:
        self.report.failures.append(f"trial {self.report.trials}: {msg}")
        self.log(f"FAIL trial {self.report.trials}: {msg}")

    def _check_cold(self, ready: dict[str, Any], pending: Optional[int]) -> None:
        """The cold node just restored: is it exactly the newest committed generation?"""
        rep = self.report
        rep.restores_checked += 1
        info = ready["restore"] or {}
        sid = info.get("snapshot_id")
        if info.get("errors") or info.get("refused"):
            self._fail(f"restore reported errors {info.get('errors')} / refused {info.get('refused')}")
        if info.get("fell_back_from"):
            rep.fell_back += 1
        rep.restored_files += int(info.get("restored") or 0)
        got = tree(self.root, self.scratch)
        left = leftovers(self.root, self.scratch)
        if left:
            self._fail(f"restore left temp files: {left[:3]}")
        if sid == self.current_sid:
            gen: Optional[int] = self.current_gen
        elif sid is not None and pending is not None and _seq(sid) > _seq(self.current_sid):
            gen = pending  # its manifest landed, the kill came before sync_now returned
            rep.in_flight_committed += 1
            rep.generations_committed += 1
        else:
            self._fail(f"restored snapshot {sid} is neither the last committed one ({self.current_sid}, "
                       f"generation {self.current_gen}) nor newer than it with generation {pending} in flight")
            return
        want = self.trees[gen] if gen is not None else {}
        if got != want:
            self._fail(f"restored tree of snapshot {sid} differs from generation {gen}: {_diff(want, got)}")
        self.current_gen, self.current_sid = gen, sid

    def trial(self) -> None:
        rep = self.report
        self._wipe()
        targeted = self.rng.random() < self.targeted
        name = self.rng.choice(self.plans) if targeted else None
        plan = dict(KILL_PLANS[name], nth=self.rng.randint(1, 3)) if name else None
        proc = self._start(plan)
        try:
            assert proc.stdout is not None and proc.stdin is not None
            line = proc.stdout.readline()
            if not line:
                proc.wait(30)
                err = proc.stderr.read()[-2000:] if proc.stderr else ""
                self._fail(f"the app did not start (exit {proc.returncode}): {err}")
                return
            ready = json.loads(line)
            self._check_cold(ready, self._pending)
            self._pending = None
            proc.stdin.write("go\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
            if not line or json.loads(line).get("event") != "writer":
                proc.wait(30)
                self._fail(f"the app never became the writer: {line.strip()} "
                           f"{proc.stderr.read()[-2000:] if proc.stderr else ''}")
                return
            writer = json.loads(line)
            self.report.lease_wait += float(writer["waited"])
            if writer["sid"] != self.current_sid:
                # the lease-taking sync_now() committed the restored tree again (same generation, new id)
                self.report.recommitted += 1
                self.current_sid = writer["sid"]
            if plan is None:
                time.sleep(self.rng.uniform(0.0, self.max_delay))
                proc.send_signal(signal.SIGKILL)
                how = "timer"
            else:
                try:
                    proc.wait(self.max_delay * 4 + 5)
                    how = name or "?"
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGKILL)
                    how = f"timer ({name} never came)"
            proc.wait(30)
            if proc.returncode != -signal.SIGKILL:
                err = proc.stderr.read()[-3000:] if proc.stderr else ""
                self._fail(f"the app exited {proc.returncode} instead of being killed: {err}")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for f in (proc.stdin, proc.stdout, proc.stderr):
                if f is not None:
                    with contextlib.suppress(Exception):
                        f.close()
        rep.kills[how.split(" (")[0] if how.startswith("timer") else how] += 1
        last_intent: Optional[int] = None
        for rec in self._side_lines():
            if "intent" in rec:
                self.trees[rec["intent"]] = rec["tree"]
                last_intent = rec["intent"]
                self.next_gen = rec["intent"] + 1
            elif "refused" in rec:
                rep.refused_syncs += 1
                rep.refusals[rec["error"].split(":")[0]] += 1
                # not counted as committed; if the error came after the manifest landed, the next cold node
                # finds it, and that generation is still the one in flight (last_intent stays)
            elif "nocommit" in rec:
                self._fail(f"sync_now() of generation {rec['nocommit']} stored no snapshot")
                last_intent = None
            elif "commit" in rec:
                self.current_gen, self.current_sid = rec["commit"], rec["sid"]
                rep.generations_committed += 1
                last_intent = None
        self._pending = last_intent

    _pending: Optional[int] = None

    def finish(self) -> None:
        """One last cold node, then: every valid snapshot is a recorded generation, and verify finds nothing."""
        from fractfs.snapshot import list_snapshots, restore, verify
        from fractfs.stores import open_store

        self._wipe()
        proc = self._start(None)
        assert proc.stdout is not None and proc.stdin is not None
        try:
            line = proc.stdout.readline()
            if line:
                self._check_cold(json.loads(line), self._pending)
            else:
                err = proc.stderr.read()[-2000:] if proc.stderr else ""
                self._fail(f"the final cold node did not start: {err}")
        finally:
            proc.stdin.close()
            proc.wait(60)
            for f in (proc.stdout, proc.stderr):
                if f is not None:
                    f.close()
        store = open_store(self.volume_root.rstrip("/") + "/_checkpoint")
        known = {json.dumps(t, sort_keys=True) for t in self.trees.values()} | {json.dumps({})}
        for info in list_snapshots(store):
            if not info.valid:
                continue
            with tempfile.TemporaryDirectory(dir=self.work) as td:
                dst = {"root": Path(td) / "root", "scratch": Path(td) / "scratch"}
                out = restore(store, dst, snapshot_id=info.id)
                self.report.snapshots_verified += 1
                if out.errors or out.refused:
                    self._fail(f"snapshot {info.id}: {out.errors[:3]} {out.refused[:3]}")
                (dst["root"]).mkdir(exist_ok=True)
                got = tree(dst["root"], dst["scratch"])
                if json.dumps(got, sort_keys=True) not in known:
                    self._fail(f"snapshot {info.id} matches no recorded generation")
        v = verify(store, "all")
        if v.damaged_files or v.bad_blobs:
            self._fail(f"verify: damaged {v.damaged_files[:3]} bad blobs {v.bad_blobs[:3]}")

    def run(self, trials: int) -> Report:
        t0 = time.monotonic()
        for i in range(trials):
            self.report.trials = i + 1
            self.trial()
            if (i + 1) % 10 == 0 or i + 1 == trials:
                self.log(f"[{self.kind}] {i + 1}/{trials} trials, {len(self.report.failures)} failures, "
                         f"{self.report.generations_committed} generations committed")
        self.finish()
        self.report.seconds = time.monotonic() - t0
        return self.report


# ---------------------------------------------------------------------------------------------------------
# Volumes for the command line (the tests bring their own through fixtures)

@contextlib.contextmanager
def volume(kind: str, work: Path) -> Any:
    """Yield (volume_root, extra env) for ``kind``, starting SeaweedFS / rclone / tmpfs as needed."""
    sys.path.insert(0, str(TESTS))
    import _services

    if kind in ("plain", "inplace"):
        p = work / "volume"
        p.mkdir()
        yield str(p), {}
        return
    if kind == "tmpfs":
        p = work / "volume"
        with _services.mounted_tmpfs(p, "1g"):
            yield str(p), {}
        return
    server = _services.SeaweedServer(work / "seaweed")
    server.start()
    try:
        bucket = server.make_bucket()
        env = dict(server.env)
        if kind == "s3":
            os.environ.update(env)
            os.environ.pop("AWS_CA_BUNDLE", None)
            yield f"s3://{bucket}/app", env
            return
        mnt = work / "fuse"
        _services.rclone_mount(server.endpoint, bucket, mnt, work / "rclone")
        try:
            yield str(mnt), env
        finally:
            _services.unmount(mnt, fuse=True)
    finally:
        server.stop()


def main(argv: list[str]) -> int:
    if argv and argv[0] == "child":
        child_main(argv[1:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--volume", default="plain", help=f"comma-separated: {', '.join(KINDS)}")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-delay", type=float, default=1.5, help="timer kills land within this many seconds")
    ap.add_argument("--targeted", type=float, default=0.6, help="share of trials killed at a chosen store call")
    ap.add_argument("--lease-timeout", type=float, default=None,
                    help="seconds before a killed node's lease is taken over (default 1, 2 on s3/fuse)")
    ap.add_argument("--big-every", type=int, default=None,
                    help="a 9 MiB file every N generations (default 4; 0 on fuse)")
    ap.add_argument("--plans", help=f"comma-separated kill plans to draw from (default all: {', '.join(KILL_PLANS)})")
    ap.add_argument("--json", help="write the report here")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(SRC))
    reports = []
    for kind in a.volume.split(","):
        if kind not in KINDS:
            ap.error(f"unknown volume kind {kind!r}")
        with tempfile.TemporaryDirectory(prefix=f"fractfs-torture-{kind}-") as td:
            with volume(kind, Path(td)) as (vroot, env):
                remote = kind in ("s3", "fuse")
                lease = a.lease_timeout if a.lease_timeout is not None else (2.0 if remote else 1.0)
                big = a.big_every if a.big_every is not None else (0 if kind == "fuse" else 4)
                t = Torture(kind, Path(td) / "node", vroot, seed=a.seed, env=env, max_delay=a.max_delay,
                            targeted=a.targeted, lease_timeout=lease, big_every=big,
                            plans=a.plans.split(",") if a.plans else None,
                            log=lambda m: print(m, file=sys.stderr, flush=True))
                (Path(td) / "node").mkdir()
                rep = t.run(a.trials)
        reports.append(rep.as_dict())
        print(json.dumps(rep.as_dict(), indent=1), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(reports, indent=1))
    return 1 if any(r["failures"] for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
