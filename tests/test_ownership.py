"""Scratch another local user could control is refused (issue 16, point 1).

The test process plays the app's user; files "another user" made are chowned to a uid nobody on this node has
(root may chown to any uid), which is what the checks look at.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fractfs.errors import ProvisionError
from fractfs.ownership import ensure_private_dir

OTHER = 54321
needs_root = pytest.mark.skipif(os.geteuid() != 0 and os.environ.get("CI") != "true",
                                reason="making files of another user needs root")


@pytest.fixture()
def shared(tmp_path: Path) -> Path:
    """A /tmp-like directory: everybody may create entries, the sticky bit keeps them from renaming ours."""
    d = tmp_path / "shared"
    d.mkdir()
    os.chmod(d, 0o1777)
    return d


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def test_missing_scratch_is_created_private_from_the_start(shared: Path) -> None:
    old = os.umask(0)  # an app with umask 0 must still get 0700, not a chmod after the fact
    try:
        ensure_private_dir(shared / "fractfs" / "deep", "fractfs_SCRATCH")
    finally:
        os.umask(old)
    assert _mode(shared / "fractfs") == 0o700 and _mode(shared / "fractfs" / "deep") == 0o700


def test_own_private_scratch_and_own_symlink_to_it_are_accepted(shared: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    ensure_private_dir(mine, "fractfs_SCRATCH")
    (shared / "link").symlink_to(mine)
    ensure_private_dir(shared / "link", "fractfs_SCRATCH")


@needs_root
def test_scratch_created_first_by_another_user_is_refused_and_left_alone(shared: Path) -> None:
    planted = shared / "fractfs"
    planted.mkdir()
    os.chmod(planted, 0o777)
    (planted / ".fractfs-state").mkdir()
    os.chown(planted, OTHER, OTHER)
    with pytest.raises(ProvisionError) as err:
        ensure_private_dir(planted, "fractfs_SCRATCH")
    msg = str(err.value)
    assert "fractfs_SCRATCH" in msg and str(planted) in msg and f"uid {OTHER}" in msg
    assert sorted(os.listdir(planted)) == [".fractfs-state"]  # nothing added or changed
    assert os.lstat(planted).st_uid == OTHER and _mode(planted) == 0o777


@needs_root
def test_even_a_private_looking_directory_of_another_user_is_refused(shared: Path) -> None:
    planted = shared / "fractfs"
    planted.mkdir(mode=0o700)
    os.chown(planted, OTHER, OTHER)
    with pytest.raises(ProvisionError, match="owned by uid"):
        ensure_private_dir(planted, "fractfs_SCRATCH")


@needs_root
def test_a_symlink_planted_by_another_user_is_not_followed(shared: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim-home"
    victim.mkdir(mode=0o700)
    (shared / "fractfs").symlink_to(victim)
    os.lchown(shared / "fractfs", OTHER, OTHER)
    with pytest.raises(ProvisionError, match="symbolic link owned by uid"):
        ensure_private_dir(shared / "fractfs" / "sub", "fractfs_SCRATCH")
    assert os.listdir(victim) == []


def test_own_scratch_writable_by_others_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "scratch"
    d.mkdir()
    os.chmod(d, 0o775)
    with pytest.raises(ProvisionError, match=r"writable by other users \(mode 0775\).*chmod go-w"):
        ensure_private_dir(d, "fractfs_SCRATCH")


def test_scratch_under_a_world_writable_directory_without_sticky_bit_is_refused(tmp_path: Path) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)  # others could rename our directory away and put theirs in its place
    with pytest.raises(ProvisionError, match="without the sticky bit"):
        ensure_private_dir(open_dir / "fractfs", "fractfs_SCRATCH")
    assert not (open_dir / "fractfs").exists()


@needs_root
def test_scratch_under_another_users_directory_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, OTHER, OTHER)
    with pytest.raises(ProvisionError, match=f"owned by uid {OTHER}"):
        ensure_private_dir(theirs / "fractfs", "fractfs_SCRATCH")
    assert not (theirs / "fractfs").exists()
