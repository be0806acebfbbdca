"""Shared fixtures: a real S3 server (SeaweedFS), real FUSE/tmpfs/plain volumes, and helpers.

Where a piece is missing (no `weed`, no rclone, not root, no /dev/fuse) the tests that need it are
skipped with the reason -- except under CI=true, where a missing piece is a failure: CI installs and
starts everything, so a skip there would only hide a broken setup.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, NoReturn

import pytest

_TESTS = Path(__file__).resolve().parent
if str(_TESTS) not in sys.path:  # so tests can `from helpers import run_py` under any import mode
    sys.path.insert(0, str(_TESTS))

import _services  # noqa: E402 - needs the sys.path entry above
from _services import MissingPiece, SeaweedServer, in_ci  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than a few seconds (deselect with -m 'not slow')")
    # Never let botocore probe the EC2 metadata address for credentials: the tests talk to loopback only.
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")


def missing(reason: str) -> NoReturn:
    """Skip the test for a missing piece, or fail it under CI (where nothing may be skipped)."""
    if in_ci():
        pytest.fail(f"CI=true but a required piece is missing: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def git() -> str:
    """The `git` executable: the oracle the tier resolver is checked against (.ci/run installs it)."""
    exe = shutil.which("git")
    if exe is None:
        missing("git is not installed (apt-get install git): the gitignore oracle tests need it")
    return exe


# -- S3 (SeaweedFS) --------------------------------------------------------------------------------
class Seaweed:
    """Handle on the session's S3 server: ``endpoint``, ``env`` and ``make_bucket``."""

    def __init__(self, server: SeaweedServer) -> None:
        self.server = server
        self.endpoint: str = server.endpoint

    @property
    def env(self) -> dict[str, str]:
        """The AWS_* variables that point a client at this server (AWS_CA_BUNDLE must be absent)."""
        return self.server.env

    def full_env(self) -> dict[str, str]:
        """A complete environment for a subprocess: os.environ + ``env``, without AWS_CA_BUNDLE."""
        env = dict(os.environ)
        env.pop("AWS_CA_BUNDLE", None)
        env.update(self.env)
        return env

    def make_bucket(self, name: str | None = None) -> str:
        return self.server.make_bucket(name)

    def delete_bucket(self, name: str) -> None:
        self.server.delete_bucket(name)

    def client(self) -> Any:
        """A botocore S3 client for this server (for tests that inspect the bucket directly)."""
        return self.server.client()


# Variables that would send clients elsewhere or make them fail against a plain-http local server.
_AWS_UNSET = (
    "AWS_CA_BUNDLE",
    "AWS_ENDPOINT_URL_S3",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
)


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    server = SeaweedServer(tmp_path_factory.mktemp("seaweed"))
    try:
        server.start()
    except MissingPiece as exc:
        missing(str(exc))
    mp = pytest.MonkeyPatch()
    try:
        for name in _AWS_UNSET:
            mp.delenv(name, raising=False)
        for name, value in server.env.items():
            mp.setenv(name, value)
        yield Seaweed(server)
    finally:
        mp.undo()
        server.stop()


@pytest.fixture
def s3_bucket(seaweed: Seaweed) -> Iterator[str]:
    """A fresh, empty bucket; dropped afterwards (seaweed keeps volumes per bucket, so free them)."""
    name = seaweed.make_bucket()
    yield name
    seaweed.delete_bucket(name)


@pytest.fixture
def s3_url(s3_bucket: str) -> str:
    """``s3://<fresh bucket>/app``."""
    return f"s3://{s3_bucket}/app"


# -- volumes ---------------------------------------------------------------------------------------
@pytest.fixture
def plain_volume(tmp_path: Path) -> Path:
    """A plain directory on the same filesystem as tmp_path."""
    p = tmp_path / "plain-volume"
    p.mkdir()
    return p


@pytest.fixture
def tmpfs_factory(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """``make(size="256m") -> Path``: mount a fresh tmpfs (another filesystem); all unmounted after."""
    mounted: list[Path] = []

    def make(size: str = "256m") -> Path:
        p = tmp_path / f"tmpfs-volume-{len(mounted)}"
        try:
            _services.mount_tmpfs(p, size)
        except MissingPiece as exc:
            missing(str(exc))
        mounted.append(p)
        return p

    yield make
    for p in reversed(mounted):
        _services.unmount(p)


@pytest.fixture
def tmpfs_volume(tmpfs_factory: Callable[..., Path]) -> Path:
    """A fresh 256 MiB tmpfs mount (cross-device from tmp_path)."""
    return tmpfs_factory("256m")


@pytest.fixture
def coarse_clock_dir(tmp_path: Path) -> Iterator[Path]:
    """A fresh ramfs mount: a filesystem whose timestamps tick coarsely (see _services.mount_ramfs)."""
    p = tmp_path / "ramfs"
    try:
        _services.mount_ramfs(p)
    except MissingPiece as exc:
        missing(str(exc))
    try:
        yield p
    finally:
        _services.unmount(p)


def _rclone_pids(mountpoint: Path) -> list[int]:
    """PIDs of the rclone daemon serving ``mountpoint`` (unique per test, so never someone else's)."""
    pids = []
    needle = str(mountpoint).encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"rclone") and b"mount" in argv and needle in argv:
            pids.append(int(entry))
    return pids


def _alive(pid: int) -> bool:
    """Running, i.e. present and not a zombie (the daemon's parent is init, which may reap late)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.fixture
def fuse_volume(seaweed: Seaweed, s3_bucket: str, tmp_path: Path) -> Iterator[Path]:
    """A fresh bucket mounted with ``rclone mount --vfs-cache-mode writes``: FUSE, no symlinks."""
    try:
        _services.check_fuse_available()
    except MissingPiece as exc:
        missing(str(exc))
    mnt = tmp_path / "fuse-volume"
    _services.rclone_mount(seaweed.endpoint, s3_bucket, mnt, tmp_path / "rclone")
    try:
        yield mnt
    finally:
        pids = _rclone_pids(mnt)
        _services.unmount(mnt, fuse=True)
        # After the kernel lets go, rclone finishes pending uploads and exits; give it a moment, then
        # make sure no daemon outlives its test.
        deadline = time.monotonic() + 15
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if _alive(p)]
            time.sleep(0.02)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture(params=["posix", "s3", "fuse"])
def real_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """The stores a checkpoint area lives on, as the snapshot code sees them: a directory, S3 (SeaweedFS) and a
    FUSE mount of a bucket (rclone)."""
    from fractfs.stores import PosixStore, open_store

    if request.param == "posix":
        yield PosixStore(tmp_path / "store")
    elif request.param == "s3":
        s = open_store(str(request.getfixturevalue("s3_url")))
        yield s
        s.close()  # type: ignore[attr-defined]
    else:
        yield PosixStore(request.getfixturevalue("fuse_volume") / "_checkpoint")


@pytest.fixture(params=["plain", "tmpfs", "fuse"])
def volume(request: pytest.FixtureRequest) -> Path:
    """Each kind of Volume fractfs meets: plain dir, tmpfs (cross-device) and an rclone FUSE mount."""
    path: Path = request.getfixturevalue(f"{request.param}_volume")
    return path


@pytest.fixture
def bind_mount(tmp_path: Path) -> Iterator[Callable[[Path, Path], None]]:
    """``mount(src, dst)``: bind-mount ``src`` at ``dst`` (the same Volume mounted again); all undone after."""
    done: list[Path] = []

    def mount(src: Path, dst: Path) -> None:
        dst.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "--bind", str(src), str(dst)], check=True, capture_output=True, timeout=30)
        done.append(dst)

    yield mount
    for p in reversed(done):
        if os.path.ismount(p):
            _services.unmount(p)
