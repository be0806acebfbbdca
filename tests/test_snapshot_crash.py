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
    import sys
    from pathlib import Path
    from fractfs.stores import PosixStore
    from fractfs.snapshot import checkpoint

    store_dir, app, state, in_place = sys.argv[1:5]
    store = PosixStore(store_dir)
    if in_place == "1":
        # behave like a FUSE mount without rename/link: objects and manifests are written under their final
        # names, so a kill leaves torn files behind for the next run to cope with
        store._rename_ok = False
        store._link_ok = False
    print("ready", flush=True)
    while True:
        checkpoint(store, {"root": Path(app)}, None, state_dir=Path(state), transfers=4,
                   pack_size=64 * 1024, large_file=256 * 1024)
        print("done", flush=True)
        sys.stdin.readline()  # wait for the next generation
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
    rng = random.Random(1234 + in_place)
    app = tmp_path / "app"
    store_dir = tmp_path / "store"
    state = tmp_path / "state"
    env = dict(os.environ, PYTHONPATH=str(SRC))
    generations: list[dict[str, tuple]] = []
    kills = 0
    completed = 0
    proc = None

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

    try:
        for gen in range(12):
            _mutate(app, gen, rng)
            generations.append(tree(app))
            if proc is None or proc.poll() is not None:
                proc = start()
            else:
                assert proc.stdin is not None
                proc.stdin.write("\n")
                proc.stdin.flush()
            # kill at a random moment of the checkpoint (sometimes after it finished)
            time.sleep(rng.uniform(0.0, 0.25))
            if rng.random() < 0.8:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                proc = None
                kills += 1
            else:
                assert proc.stdout is not None
                assert proc.stdout.readline().strip() == "done"
                completed += 1

            # after every round: the newest valid snapshot is exactly one generation seen so far
            dst = tmp_path / f"restore-{gen}"
            store = PosixStore(store_dir)
            out = restore(store, {"root": dst})
            if out.snapshot_id is None:
                assert not dst.exists() or tree(dst) == {}
                continue
            assert not out.errors and not out.refused, (out.errors, out.refused)
            got = tree(dst)
            assert got in generations, f"gen {gen}: restored tree matches no committed generation"
            assert temp_leftovers(dst) == []
            shutil.rmtree(dst)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    # let a checkpoint finish on the final tree: it must commit exactly the last generation
    proc = start()
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "done"
    finally:
        proc.kill()
        proc.wait()
    store = PosixStore(store_dir)
    dst = tmp_path / "final"
    out = restore(store, {"root": dst})
    assert tree(dst) == generations[-1]
    # every snapshot that verifies is one of the generations, whole
    for info in list_snapshots(store):
        if not info.valid:
            continue
        d = tmp_path / f"snap-{info.seq}"
        restore(store, {"root": d}, snapshot_id=info.id)
        assert tree(d) in generations
    assert verify(store, "all").damaged_files == []
    assert kills >= 5, "the random schedule should kill most rounds"
