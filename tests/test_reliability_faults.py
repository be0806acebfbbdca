"""Store fault injection: a store that fails, stalls, truncates writes, serves stale listings and flips bits.

``tests/faults.py`` wraps a real store *outside* its own retry layer, so every fault reaches the engine as an
error that survived the store's retries. What must hold with 10 % of calls faulty:

- checkpoints still complete, by retrying whole checkpoints (what the daemon does): nothing is committed
  until every blob checked out, so a failed attempt leaves the previous snapshot as the checkpoint;
- a truncated upload is caught before the manifest references it, so every committed snapshot verifies;
- restore never writes a wrong byte: what it writes is exactly the snapshot's content, what it cannot
  verify it does not write, and an unreachable store fails the restore instead of leaving files out;
- in the app, the sync daemon survives every fault and ``status()["last_error"]`` says what happened.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import pytest
from faults import FaultyStore
from helpers import Node
from test_reliability_support import temp_files

from fractfs.errors import FractfsError, RestoreError, StoreError, StoreNotFound
from fractfs.snapshot import checkpoint, list_snapshots, prune, restore, verify
from fractfs.stores import PosixStore


def _content(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[p.relative_to(root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _mutate(app: Path, rng: random.Random, gen: int) -> None:
    (app / "GEN").write_text(str(gen))
    for _ in range(rng.randint(1, 12)):
        p = app / f"d{rng.randint(0, 4)}" / f"f{rng.randint(0, 30)}"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(rng.choice([0, 100, 5_000, 60_000, 150_000])))
    for p in sorted(app.rglob("f*")):
        if rng.random() < 0.05:
            p.unlink()


def _checkpoint_until_done(store: Any, app: Path, state: Path, max_attempts: int = 300) -> tuple[Any, int]:
    for attempt in range(1, max_attempts + 1):
        try:
            return checkpoint(store, {"root": app}, None, state_dir=state, pack_size=96_000,
                              large_file=100_000, transfers=4), attempt
        except FractfsError:
            continue
    raise AssertionError(f"no checkpoint completed in {max_attempts} attempts")


#: more seeds for the long run: FRACTFS_FAULT_SEEDS=50 pytest -s tests/test_reliability_faults.py
SEEDS = int(os.environ.get("FRACTFS_FAULT_SEEDS", "1"))


@pytest.mark.parametrize("seed", range(SEEDS))
def test_checkpoints_complete_through_ten_percent_faults(tmp_path: Path, seed: int) -> None:
    inner = PosixStore(tmp_path / "store")
    fs = FaultyStore(inner, rate=0.1, seed=11 + seed)
    app, state = tmp_path / "app", tmp_path / "state"
    app.mkdir()
    rng = random.Random(5 + seed)
    attempts = []
    for gen in range(25):
        _mutate(app, rng, gen)
        want = _content(app)
        res, n = _checkpoint_until_done(fs, app, state)
        attempts.append(n)
        # the newest snapshot, read without faults, is exactly this generation
        fs.arm(False)
        dst = tmp_path / f"restore-{gen}"
        out = restore(inner, {"root": dst})
        assert out.snapshot_id == (res.snapshot_id or res.parent)
        assert not out.errors and not out.refused
        assert _content(dst) == want
        shutil.rmtree(dst)
        fs.arm(True)
    fs.arm(False)
    v = verify(inner, "all")
    # a manifest whose write was cut short may be left behind (damaged, never used); no committed snapshot
    # references a damaged blob
    assert v.damaged_files == [] and v.bad_blobs == []
    summary = fs.summary()
    assert summary.get("fail", 0) > 20 and summary.get("truncate", 0) > 5, summary
    assert sum(attempts) > len(attempts), "the faults should have cost some retries"
    print(json.dumps({"test": "checkpoint", "seed": seed, "generations": len(attempts), "attempts": attempts,
                      "faults": summary, "calls": dict(fs.calls)}))


def test_truncated_upload_never_becomes_part_of_a_snapshot(tmp_path: Path) -> None:
    inner = PosixStore(tmp_path / "store")
    fs = FaultyStore(inner, rate=1.0, kinds=("truncate",))
    app = tmp_path / "app"
    app.mkdir()
    (app / "small").write_bytes(os.urandom(5000))
    (app / "large").write_bytes(os.urandom(200_000))
    with pytest.raises(FractfsError, match="lost part of the write"):
        checkpoint(fs, {"root": app}, None, state_dir=tmp_path / "state", large_file=100_000)
    assert [s for s in list_snapshots(inner) if s.valid] == []
    fs.arm(False)
    res = checkpoint(fs, {"root": app}, None, state_dir=tmp_path / "state", large_file=100_000)
    assert res.snapshot_id and verify(inner, "all").ok


class _BatchFaultyStore(FaultyStore):
    """FaultyStore with a batch upload, as PosixStore and FsspecStore have (the engine then uses put_many)."""

    def put_many(self, items: Any, *, workers: int = 32) -> None:
        for key, data in items:
            self.put(key, data)


@pytest.mark.parametrize("batch", [False, True], ids=["single-puts", "batch-puts"])
def test_a_complete_blob_is_never_rewritten(tmp_path: Path, batch: bool) -> None:
    """A blob another snapshot references must not be exposed to a second (possibly torn) write."""
    inner = PosixStore(tmp_path / "store")
    app = tmp_path / "app"
    app.mkdir()
    big = os.urandom(300_000)
    small = {f"s{i}": os.urandom(3000) for i in range(5)}
    (app / "big").write_bytes(big)
    for name, data in small.items():
        (app / name).write_bytes(data)
    first = checkpoint(inner, {"root": app}, None, state_dir=tmp_path / "s1", large_file=100_000)
    for name in ["big", *small]:
        (app / name).write_bytes(b"other")
    checkpoint(inner, {"root": app}, None, state_dir=tmp_path / "s1", large_file=100_000)
    # back to the first contents, from a node that lost its state: the pack and the object exist and the
    # first snapshot references them; a truncating store must not get the chance to damage them
    (app / "big").write_bytes(big)
    for name, data in small.items():
        (app / name).write_bytes(data)
    blobs = {k: inner.get(k) for prefix in ("packs/", "objects/") for k, _ in inner.list(prefix)}
    cls = _BatchFaultyStore if batch else FaultyStore
    fs = cls(inner, rate=1.0, kinds=("truncate",), keys=("objects/", "packs/"))
    res = checkpoint(fs, {"root": app}, None, state_dir=tmp_path / "s2", large_file=100_000)
    assert res.snapshot_id
    # the existing blobs were not written again (a truncating write would have shortened them)
    assert all(inner.get(k) == data for k, data in blobs.items())
    assert verify(inner, first.snapshot_id).ok and verify(inner, "all").ok


def test_stale_listing_never_reuses_a_sequence_number(tmp_path: Path) -> None:
    inner = PosixStore(tmp_path / "store")
    fs = FaultyStore(inner, rate=1.0, kinds=("stale_list",), stale_window=3600)
    app = tmp_path / "app"
    app.mkdir()
    for gen in range(4):
        (app / "v").write_text(f"generation {gen}")
        res = checkpoint(fs, {"root": app}, None, state_dir=tmp_path / "state")
        assert res.snapshot_id
    seqs = [s.seq for s in list_snapshots(inner)]
    assert len(seqs) == len(set(seqs)) == 4, seqs
    restore(inner, {"root": tmp_path / "r"})
    assert (tmp_path / "r" / "v").read_text() == "generation 3"


def test_prune_with_a_stale_listing_keeps_the_newest_snapshot_whole(tmp_path: Path) -> None:
    inner = PosixStore(tmp_path / "store")
    app = tmp_path / "app"
    app.mkdir()
    for gen in range(3):
        (app / f"f{gen}").write_bytes(os.urandom(1000))
        checkpoint(inner, {"root": app}, None, state_dir=tmp_path / "state")
    (app / "newest").write_bytes(os.urandom(1000))
    newest = checkpoint(inner, {"root": app}, None, state_dir=tmp_path / "state")
    fs = FaultyStore(inner, rate=1.0, kinds=("stale_list",), keys=("snapshots/",), stale_window=3600)
    fs._recent[f"snapshots/{newest.snapshot_id}.json.gz"] = float("inf")  # written "just now"
    inner.delete("snapshots/head.json")  # no head to fill the gap (a failed head update, an older writer)
    # the caller knows the snapshot it committed; a listing that does not show it yet is stale
    assert newest.snapshot_id is not None
    res = prune(fs, 1, newest_known=newest.snapshot_id)
    assert res.stale_listing and not res.deleted_blobs and not res.deleted_snapshots
    assert verify(inner, newest.snapshot_id).ok
    # once the listing is current, prune goes ahead and the newest snapshot stays whole
    res = prune(inner, 1, newest_known=newest.snapshot_id)
    assert not res.stale_listing and res.deleted_snapshots
    assert verify(inner, newest.snapshot_id).ok


def _source(tmp_path: Path) -> tuple[PosixStore, dict[str, bytes]]:
    inner = PosixStore(tmp_path / "store")
    app = tmp_path / "app"
    rng = random.Random(3)
    files = {}
    for i in range(60):
        rel = f"d{i % 6}/f{i}"
        data = rng.randbytes(rng.choice([0, 10, 3000, 40_000, 150_000]))
        (app / rel).parent.mkdir(parents=True, exist_ok=True)
        (app / rel).write_bytes(data)
        files[rel] = data
    checkpoint(inner, {"root": app}, None, state_dir=tmp_path / "state", pack_size=50_000, large_file=100_000)
    return inner, files


@pytest.mark.parametrize("seed", range(max(4, SEEDS)))
def test_restore_under_faults_writes_only_verified_bytes(tmp_path: Path, seed: int) -> None:
    inner, files = _source(tmp_path)
    fs = FaultyStore(inner, rate=0.1, seed=seed, kinds=("fail", "delay", "corrupt_read"),
                     keys=("packs/", "objects/"))
    dst = tmp_path / "dst"
    rounds = failed_rounds = 0
    while True:
        rounds += 1
        assert rounds < 100
        try:
            out = restore(fs, {"root": dst}, transfers=4)
        except RestoreError as exc:
            # an unreachable store fails the whole round: nothing of it was put in place
            failed_rounds += 1
            assert "nothing of this restore was put in place" in str(exc)
            assert temp_files(dst) == [] if dst.exists() else True
            continue
        assert temp_files(dst) == []
        # every file on disk is byte-exact; what could not be verified is absent and reported
        on_disk = {p.relative_to(dst).as_posix(): p.read_bytes() for p in dst.rglob("*") if p.is_file()}
        for rel, data in on_disk.items():
            assert data == files[rel], rel
        for msg in out.errors:
            assert "sha256" in msg, msg
            assert msg.split(":", 2)[1] not in on_disk
        if on_disk.keys() == files.keys():
            break
    assert fs.injected > 0
    print(json.dumps({"test": "restore", "seed": seed, "rounds": rounds, "failed_rounds": failed_rounds,
                      "files": len(files), "faults": fs.summary()}))


DAEMON_APP = """
import time
sys.path.insert(0, {tests!r})
from faults import install_in_child
made = install_in_child(0.1, {seed})
st = None
init_failures = 0
while st is None:
    try:
        st = fractfs.init()
    except fractfs.FractfsError as exc:
        init_failures += 1   # a fault during start-up fails init() cleanly; the platform would restart us
        assert init_failures < 50, exc
errors, alive = set(), True
for gen in range(12):
    with open("state-%d.txt" % (gen % 4), "w") as f:
        f.write("generation %d " % gen * 200)
    open("gen.txt", "w").write(str(gen))
    t0 = time.time()
    while time.time() - t0 < 0.6:
        s = fractfs.status()
        alive = alive and s["daemon_running"]
        if s["last_error"]:
            errors.add(s["last_error"][:300])
        time.sleep(0.02)
# let the daemon catch up with the last generation, still under faults
t0 = time.time()
while time.time() - t0 < 60:
    s = fractfs.status()
    if s["last_sync_start"] and s["last_sync_start"] > os.stat("gen.txt").st_mtime and s["last_sync_time"] \
            and s["last_sync_time"] > s["last_sync_start"] and s["consecutive_failures"] == 0:
        break
    time.sleep(0.05)
final = fractfs.status()
for fs in made:
    fs.arm(False)
fractfs.shutdown()
print(json.dumps({{"alive": alive, "errors": sorted(errors), "init_failures": init_failures,
                  "syncs": final["syncs"], "last_error": final["last_error"],
                  "recovered": final["consecutive_failures"] == 0 and final["last_sync_time"] > (
                      final["last_error_time"] or 0),
                  "lease_generation": (final["lease"] or {{}}).get("generation"),
                  "faults": [fs.summary() for fs in made]}}))
"""


def test_daemon_survives_faults_and_status_tells(tmp_path: Path, plain_volume: Path) -> None:
    node = Node(tmp_path / "node", plain_volume, '[ignore]\npatterns = ["*.tmp"]\n')
    tests = str(Path(__file__).resolve().parent)
    out = node.run(DAEMON_APP.format(tests=tests, seed=3), fractfs_SYNC_INTERVAL="0.2", timeout=180)
    print(json.dumps({"test": "daemon", **out}))
    assert out["alive"] is True
    # the faults were seen through status(): named as such, or as the lease that could not be renewed
    assert any("injected failure" in e for e in out["errors"]), out["errors"]
    # ... and that the daemon got past them: the last checkpoint, which saw the final tree, succeeded
    assert out["syncs"] >= 1 and out["recovered"] is True, out
    assert sum(sum(f.values()) for f in out["faults"]) > 10
    # a cold node, no faults: exactly the last generation
    before = {p.name: p.read_bytes() for p in node.root.iterdir() if p.is_file() and p.name != ".fractfs.toml"}
    node.wipe()
    got = node.run("""
        st = fractfs.init()
        print(json.dumps({"restore": st["restore"], "gen": open("gen.txt").read()}))
        fractfs.shutdown(final_sync=False)
    """)
    assert got["gen"] == "11" and not got["restore"]["errors"]
    after = {p.name: p.read_bytes() for p in node.root.iterdir() if p.is_file() and p.name != ".fractfs.toml"}
    assert after == before



class _LostResponseStore:
    """A store whose next manifest write lands but reports failure (its response was lost), and whose listing
    then lags behind and does not show that manifest (an eventually consistent store, a FUSE directory cache)."""

    def __init__(self, inner: PosixStore):
        self.inner = inner
        self.lose_next = False
        self.hidden: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def put(self, key: str, data: bytes, *, exclusive: bool = False) -> None:
        self.inner.put(key, data, exclusive=exclusive)
        if self.lose_next and key.startswith("snapshots/") and key.endswith(".json.gz"):
            self.lose_next = False
            self.hidden.add(key)
            raise StoreError(f"{key}: connection reset before the response (the write landed)")

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        return ((k, n) for k, n in self.inner.list(prefix) if k not in self.hidden)

    def size(self, key: str) -> int | None:
        return None if key in self.hidden else self.inner.size(key)

    def get(self, key: str) -> bytes:
        if key == "snapshots/head.json":
            raise StoreNotFound(key)  # the head would name the newest snapshot: this store's listing lags
        return self.inner.get(key)


def test_a_manifest_whose_write_response_was_lost_never_shares_its_number(tmp_path: Path) -> None:
    """A manifest write that landed although the node saw it fail, then a listing that does not show it yet:
    the next checkpoint must take a higher number, or the two manifests (an older and a newer state) would be
    ordered by digest alone and the older one could win the restore."""
    inner = PosixStore(tmp_path / "store")
    st = _LostResponseStore(inner)
    app, state = tmp_path / "app", tmp_path / "state"
    app.mkdir()
    (app / "f.txt").write_text("one")
    checkpoint(st, {"root": app}, None, state_dir=state)
    (app / "f.txt").write_text("two, whose commit the node thinks failed")
    st.lose_next = True
    with pytest.raises(StoreError):
        checkpoint(st, {"root": app}, None, state_dir=state)
    (app / "f.txt").write_text("three, the newest")
    res = checkpoint(st, {"root": app}, None, state_dir=state)
    seqs = sorted(int(k.split("/")[1][:12]) for k, _n in inner.list("snapshots/") if k.endswith(".json.gz"))
    assert len(seqs) == len(set(seqs)) == 3, seqs
    out = restore(inner, {"root": tmp_path / "back"})
    assert out.snapshot_id == res.snapshot_id
    assert (tmp_path / "back" / "f.txt").read_text() == "three, the newest"
