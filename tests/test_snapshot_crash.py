"""Crash consistency: SIGKILL a process in the middle of checkpoints; a restore is always one whole generation."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_snapshot_support import temp_leftovers, tree, write

from fractfs.snapshot import list_snapshots, restore, verify
from fractfs.stores import PosixStore

SRC = Path(__file__).resolve().parent.parent / "src"

CHILD = textwrap.dedent("""
    import os, sys, threading, time
    from pathlib import Path
    from fractfs.stores import PosixStore
    from fractfs.snapshot import checkpoint

    store_dir, app, state, in_place = sys.argv[1:5]

    class KillPoint(PosixStore):
        \"\"\"Stops the process at the manifest write or at the n-th blob write of a checkpoint (the test then
        SIGKILLs it): 'before' the write, 'after' it, or 'half': half of the bytes written under the final key,
        which is what a kill leaves on a store that writes in place.\"\"\"
        plan = ("none", 0, "none")
        writes = 0
        lock = threading.Lock()

        def _hit(self, key, data, write):
            kind, n, mode = self.plan
            if kind == "manifest":
                hit = key.startswith("snapshots/")
            elif kind == "blob" and key.startswith(("packs/", "objects/")):
                with self.lock:
                    KillPoint.writes += 1
                    hit = KillPoint.writes == n
            else:
                hit = False
            if not hit:
                return write()
            if mode == "after":
                write()
            elif mode == "half":
                path = Path(store_dir) / key
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data()[: max(1, len(data()) // 2)])
            print("hold", key, flush=True)
            time.sleep(3600)

        def put(self, key, data, *, exclusive=False):
            return self._hit(key, lambda: data, lambda: PosixStore.put(self, key, data, exclusive=exclusive))

        def put_file(self, key, path):
            return self._hit(key, lambda: Path(path).read_bytes(), lambda: PosixStore.put_file(self, key, path))

    store = KillPoint(store_dir)
    if in_place == "1":
        # behave like a FUSE mount without rename/link: objects and manifests are written under their final
        # names, so a kill leaves torn files behind for the next run to cope with
        store._rename_ok = False
        store._link_ok = False
    print("ready", flush=True)
    for line in sys.stdin:  # one plan per generation: "<blob|manifest|none> <n> <before|after|half|none>"
        kind, n, mode = line.split()
        KillPoint.plan, KillPoint.writes = (kind, int(n), mode), 0
        print("go", flush=True)
        checkpoint(store, {"root": Path(app)}, None, state_dir=Path(state), transfers=4,
                   pack_size=64 * 1024, large_file=256 * 1024)
        print("done", flush=True)
""")


def _mutate(app: Path, gen: int, rng: random.Random) -> None:
    """Generation ``gen``: a marker, rewritten and new files, deletions, and a large file now and then."""
    write(app, "GENERATION", str(gen))
    for i in range(rng.randint(50, 400)):
        d = rng.randint(0, 30)
        write(
            app, f"d{d:02d}/f{rng.randint(0, 60):03d}", f"gen {gen} file {i} ".encode() * rng.randint(1, 300)
        )
    for p in sorted(app.rglob("f*")):
        if p.is_file() and rng.random() < 0.05:
            p.unlink()
    if gen % 3 == 0:
        write(app, "large.bin", os.urandom(rng.randint(300_000, 900_000)))
    if gen % 4 == 1 and (app / "d05").exists():
        shutil.rmtree(app / "d05")


@pytest.mark.slow
@pytest.mark.parametrize("in_place", [False, True], ids=["atomic-store", "in-place-store"])
def test_kill9_during_checkpoint_restores_one_whole_generation(tmp_path: Path, in_place: bool) -> None:
    """Each generation's checkpoint is SIGKILLed at a chosen write (before it, after it, or half-way through
    it on the in-place store), at a random moment, or not at all. After each round the newest valid snapshot
    must be exactly the generation the kill point implies: the new one once its manifest is written, else the
    last one known committed, never an older one. Where the kill lands is decided by events (the child stops
    at its n-th store write), not by how fast a loaded machine gets there."""
    rng = random.Random(1234 + in_place)
    app = tmp_path / "app"
    store_dir = tmp_path / "store"
    state = tmp_path / "state"
    env = dict(os.environ, PYTHONPATH=str(SRC))
    generations: list[dict[str, tuple]] = []
    last_known: int | None = None  # the generation the newest valid snapshot is known to hold
    kinds: dict[str, int] = {}
    proc = None
    # every kind of kill point at least once, in a seeded order: (where, n-th blob write, how)
    modes = ["before", "after"] + (["half"] if in_place else [])
    schedule = [("none", "0", "none")] * 2 + [("timer", "0", "none")] * 3
    schedule += [(where, str(rng.randint(1, 4)) if where == "blob" else "1", m)
                 for where in ("manifest", "blob") for m in modes]
    while len(schedule) < 12:
        schedule.append(("blob", str(rng.randint(1, 4)), rng.choice(modes)))
    rng.shuffle(schedule)

    def start() -> subprocess.Popen[str]:
        p = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(store_dir), str(app), str(state), "1" if in_place else "0"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        return p

    def kill(p: subprocess.Popen[str]) -> None:
        p.send_signal(signal.SIGKILL)
        p.wait()

    try:
        for gen in range(12):
            _mutate(app, gen, rng)
            generations.append(tree(app))
            if proc is None:
                proc = start()
            assert proc.stdin is not None and proc.stdout is not None
            plan = schedule[gen]
            proc.stdin.write(" ".join(("none", "0", "none") if plan[0] == "timer" else plan) + "\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "go"
            if plan[0] == "timer":  # at a random moment of the checkpoint (or after it)
                time.sleep(rng.uniform(0.0, 0.25))
                kill(proc)
                proc = None
                expect = {last_known, gen}  # the kill may have come before or after the manifest landed
                kinds["timer"] = kinds.get("timer", 0) + 1
            else:
                line = proc.stdout.readline().split()
                if line == ["done"]:  # no kill point, or fewer writes than the one chosen
                    expect = {gen}
                    kinds["completed"] = kinds.get("completed", 0) + 1
                else:
                    assert line[0] == "hold", line
                    kill(proc)
                    proc = None
                    manifest = line[1].startswith("snapshots/")
                    expect = {gen} if manifest and plan[2] == "after" else {last_known}
                    kind = f"{plan[0]}-{plan[2]}"
                    kinds[kind] = kinds.get(kind, 0) + 1

            # after every round: the newest valid snapshot is exactly the generation the kill point implies
            dst = tmp_path / f"restore-{gen}"
            store = PosixStore(store_dir)
            out = restore(store, {"root": dst})
            if out.snapshot_id is None:
                assert None in expect, f"gen {gen}: no snapshot, expected generation {expect}"
                assert not dst.exists() or tree(dst) == {}
                continue
            assert not out.errors and not out.refused, (out.errors, out.refused)
            got = tree(dst)
            found = int(got["GENERATION"][1])
            assert found in expect, f"gen {gen}: restored generation {found}, expected {expect} ({kinds})"
            assert got == generations[found], f"gen {gen}: restored tree differs from generation {found}"
            assert temp_leftovers(dst) == []
            last_known = found
            shutil.rmtree(dst)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    # let a checkpoint finish on the final tree: it must commit exactly the last generation
    proc = start()
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("none 0 none\n")
        proc.stdin.flush()
        assert [proc.stdout.readline().strip() for _ in range(2)] == ["go", "done"]
    finally:
        proc.kill()
        proc.wait()
    store = PosixStore(store_dir)
    dst = tmp_path / "final"
    restore(store, {"root": dst})
    assert tree(dst) == generations[-1]
    # every snapshot that verifies is one of the generations, whole
    for info in list_snapshots(store):
        if not info.valid:
            continue
        d = tmp_path / f"snap-{info.seq}"
        restore(store, {"root": d}, snapshot_id=info.id)
        assert tree(d) in generations
    assert verify(store, "all").damaged_files == []
    # the kill points that were reached (a blob write beyond the checkpoint's last one completes instead)
    assert {f"manifest-{m}" for m in modes} <= set(kinds) and "blob-before" in kinds, kinds
