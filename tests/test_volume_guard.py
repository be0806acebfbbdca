"""A Volume that vanishes while a store is in use: nothing is written to local disk, every call says so,
and the same Volume coming back makes the store work again (issue 11, point 3)."""
from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from fractfs.errors import StoreError, VolumeChanged, VolumeNotMounted
from fractfs.snapshot import checkpoint, restore
from fractfs.stores.base import get_range_into, reads_into
from fractfs.stores.posix import PosixStore
from fractfs.stores.volume import MARKER_KEY, VolumeGuard, guard

import _services
from helpers import files_under




# -- PosixStore on its own: a root it has seen is never made again ------------------------------------------
def test_posix_store_does_not_recreate_a_vanished_checkpoint_area(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    store = PosixStore(vol / "_checkpoint")
    store.put("packs/ab/one", b"1")
    os.rename(vol, tmp_path / "vol.away")
    vol.mkdir()  # what an unmount leaves: an empty mountpoint directory
    with pytest.raises(VolumeNotMounted) as err:
        store.put("packs/ab/two", b"2")
    assert str(vol / "_checkpoint") in str(err.value) and "Mount the Volume again" in str(err.value)
    with pytest.raises(VolumeNotMounted):
        store.put("snapshots/new", b"3", exclusive=True)
    with pytest.raises(VolumeNotMounted):
        list(store.list("snapshots/"))  # not "no snapshots": a restore must not start from nothing
    assert files_under(vol) == [] and os.listdir(vol) == []
    # the Volume is back: the same store carries on
    vol.rmdir()
    os.rename(tmp_path / "vol.away", vol)
    store.put("packs/ab/two", b"2")
    assert sorted(store.list()) == [("packs/ab/one", 1), ("packs/ab/two", 1)]


def test_posix_store_still_creates_its_area_on_first_write(tmp_path: Path) -> None:
    store = PosixStore(tmp_path / "vol" / "_checkpoint")
    assert list(store.list()) == []  # a missing area lists as empty before it was ever seen
    store.put("a/b/c", b"x")
    assert (tmp_path / "vol" / "_checkpoint" / "a" / "b" / "c").read_bytes() == b"x"


def test_posix_store_remakes_a_pruned_subdirectory(tmp_path: Path) -> None:
    store = PosixStore(tmp_path / "area")
    store.put("packs/ab/one", b"1")
    (tmp_path / "area" / "packs" / "ab" / "one").unlink()
    (tmp_path / "area" / "packs" / "ab").rmdir()
    (tmp_path / "area" / "packs").rmdir()
    store.put("packs/ab/two", b"2")  # the remembered directories are gone, the root is not: made again
    assert store.get("packs/ab/two") == b"2"


# -- the guard --------------------------------------------------------------------------------------------
def test_guard_marks_the_volume_once_and_shares_the_mark(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    a = guard(PosixStore(vol / "_checkpoint"), vol)
    b = guard(PosixStore(vol / "_checkpoint"), vol)
    assert isinstance(a, VolumeGuard) and isinstance(b, VolumeGuard)
    a.put("k", b"v")
    marker = (vol / "_checkpoint" / MARKER_KEY).read_bytes()
    assert b"fractfs-volume" in marker
    assert b.get("k") == b"v"
    assert a.identity == b.identity == marker
    assert a.url == str(vol / "_checkpoint")


def test_guard_passes_other_stores_through(tmp_path: Path) -> None:
    store = PosixStore(tmp_path)
    assert guard(store, None) is store

    class Other:
        url = "memory://x"

    other = Other()
    assert guard(other, tmp_path) is other  # type: ignore[arg-type]


def test_renamed_volume_refuses_every_call_and_recovers(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    g = guard(PosixStore(vol / "_checkpoint"), vol, ttl=0)
    assert isinstance(g, VolumeGuard)
    g.put("packs/aa/one", b"one")
    assert reads_into(g) is not None  # the guard keeps the Volume's reads into buffers, checked like the rest
    os.rename(vol, tmp_path / "vol.away")
    calls: list[Callable[[], object]] = [
        lambda: g.put("packs/bb/two", b"two"),
        lambda: g.put_file("objects/cc/big", tmp_path / "vol.away" / "_checkpoint" / MARKER_KEY),
        lambda: g.get("packs/aa/one"),
        lambda: g.get_range("packs/aa/one", 0, 1),
        lambda: get_range_into(g, "packs/aa/one", 0, memoryview(bytearray(1))),  # the restore's pooled reads
        lambda: g.get_file("packs/aa/one", tmp_path / "out"),
        lambda: list(g.list()),
        lambda: g.size("packs/aa/one"),
        lambda: g.delete("packs/aa/one"),
        lambda: g.put_many([("packs/dd/x", b"x")]),
        lambda: g.get_many(["packs/aa/one"]),
    ]
    for call in calls:
        with pytest.raises(VolumeNotMounted) as err:
            call()
        assert str(vol) in str(err.value)
    assert not vol.exists()
    assert g.problem is not None and str(vol) in g.problem
    # an empty directory where the Volume was (an unmounted mountpoint): refused as well, nothing written
    vol.mkdir()
    for call in calls:
        with pytest.raises(VolumeNotMounted) as err:
            call()
        assert "marker" in str(err.value) and "mount the Volume again" in str(err.value)
    assert os.listdir(vol) == []
    vol.rmdir()
    os.rename(tmp_path / "vol.away", vol)
    g.put("packs/bb/two", b"two")
    assert g.get("packs/aa/one") == b"one" and g.problem is None
    assert sorted(k for k, _ in g.list("packs/")) == ["packs/aa/one", "packs/bb/two"]


def test_within_the_ttl_the_store_itself_still_refuses(tmp_path: Path) -> None:
    # The guard trusts a check for `ttl` seconds; a Volume lost inside that window must not be written either.
    vol = tmp_path / "vol"
    vol.mkdir()
    g = guard(PosixStore(vol / "_checkpoint"), vol, ttl=3600)
    g.put("packs/aa/one", b"one")
    assert reads_into(g) is not None  # the guard keeps the Volume's reads into buffers, checked like the rest
    os.rename(vol, tmp_path / "vol.away")
    vol.mkdir()
    with pytest.raises(VolumeNotMounted):
        g.put("packs/bb/two", b"two")
    assert os.listdir(vol) == []


def test_unmounted_tmpfs_writes_nothing_to_local_disk_and_remount_recovers(
    tmpfs_factory: Callable[..., Path], bind_mount: Callable[[Path, Path], None], tmp_path: Path
) -> None:
    backing = tmpfs_factory("32m")  # the Volume's real contents live here; `vol` is where the app sees it
    vol = tmp_path / "mnt" / "vol"
    vol.parent.mkdir()
    bind_mount(backing, vol)
    state = tmp_path / "state"
    app = tmp_path / "app"
    app.mkdir()
    (app / "counter").write_text("1")
    g = guard(PosixStore(vol / "_checkpoint"), vol, ttl=0)
    first = checkpoint(g, {"root": app}, None, state_dir=state)
    assert first.snapshot_id is not None

    _services.unmount(vol)
    assert not os.path.ismount(vol) and os.listdir(vol) == []
    (app / "counter").write_text("2")
    with pytest.raises(VolumeNotMounted):
        checkpoint(g, {"root": app}, None, state_dir=state)
    with pytest.raises(VolumeNotMounted):
        restore(g, {"root": tmp_path / "elsewhere"})
    assert files_under(vol) == []  # nothing landed on the node's own disk

    bind_mount(backing, vol)
    second = checkpoint(g, {"root": app}, None, state_dir=state)
    assert second.snapshot_id is not None and second.snapshot_id != first.snapshot_id
    out = tmp_path / "restored"
    restore(g, {"root": out})
    assert (out / "counter").read_text() == "2"


def test_another_volume_mounted_in_its_place_is_refused(
    tmpfs_factory: Callable[..., Path], bind_mount: Callable[[Path, Path], None], tmp_path: Path
) -> None:
    ours = tmpfs_factory("16m")
    theirs = tmpfs_factory("16m")
    guard(PosixStore(theirs / "_checkpoint"), theirs).put("k", b"theirs")  # a Volume with its own marker
    vol = tmp_path / "vol"
    bind_mount(ours, vol)
    g = guard(PosixStore(vol / "_checkpoint"), vol, ttl=0)
    g.put("k", b"ours")
    _services.unmount(vol)
    bind_mount(theirs, vol)
    with pytest.raises(VolumeChanged) as err:
        g.put("k", b"ours again")
    assert str(vol) in str(err.value) and MARKER_KEY in str(err.value)
    assert (theirs / "_checkpoint" / "k").read_bytes() == b"theirs"
    assert isinstance(err.value, StoreError)


def test_read_only_volume_without_marker_still_reads(
    tmpfs_factory: Callable[..., Path], tmp_path: Path
) -> None:
    vol = tmpfs_factory("16m")
    PosixStore(vol / "_checkpoint").put("k", b"written before markers existed")
    subprocess.run(["mount", "-o", "remount,ro", str(vol)], check=True, capture_output=True, timeout=30)
    g = guard(PosixStore(vol / "_checkpoint"), vol, ttl=0)
    assert g.get("k") == b"written before markers existed"
    assert not (vol / "_checkpoint" / MARKER_KEY).exists()
    with pytest.raises(StoreError):
        g.put("k2", b"x")  # the Volume's own refusal (read-only), not a guard error


def test_threads_creating_the_area_while_others_list_never_see_it_vanish(tmp_path: Path) -> None:
    # The area is made by the first write while other threads list it: a listing that looked just before the
    # root appeared must not take it for a Volume that went away.
    import threading

    for round_ in range(30):
        store = PosixStore(tmp_path / f"area-{round_}")
        barrier = threading.Barrier(8)
        errors: list[BaseException] = []

        def work(i: int, store: PosixStore = store, barrier: threading.Barrier = barrier,
                 errors: list[BaseException] = errors) -> None:
            barrier.wait()
            try:
                for _ in range(20):
                    if i % 2:
                        list(store.list("locks/"))
                    else:
                        store.put(f"locks/{i}", b"x")
            except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
