"""The Store contract, run against every backend on real storage.

PosixStore on a plain directory, a tmpfs (another filesystem) and an rclone FUSE mount of an S3 bucket
(no symlinks, no hard links); FsspecStore on the SeaweedFS S3 server and on fsspec's memory:// (the
generic, non-S3 code path).
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest

from fractfs.errors import AlreadyExists, ObjectRejected, StoreError, StoreFull, StoreNotFound
from fractfs.stores import FsspecStore, PosixStore, Store, open_store
from fractfs.stores import fsspec as fsspec_mod
from fractfs.stores.base import get_range_into, reads_into
from fractfs.stores.transfer import get_many, parallel_map, put_many, retry

# s3: FsspecStore as configured by default (PUT/GET on the lean client, the rest on s3fs/botocore);
# s3-botocore: the same with the lean client off, i.e. everything through s3fs.
BACKENDS = ["posix-plain", "posix-tmpfs", "posix-fuse", "s3", "s3-botocore", "memory"]


def _make_store(request: pytest.FixtureRequest, kind: str) -> Store:
    if kind.startswith("posix-"):
        vol: Path = request.getfixturevalue(f"{kind[len('posix-') :]}_volume")
        return PosixStore(vol / "checkpoints")
    if kind in ("s3", "s3-botocore"):
        url: str = request.getfixturevalue("s3_url")
        return FsspecStore(url, fast_path=kind == "s3")
    return FsspecStore(f"memory://fractfs-test-{uuid.uuid4().hex}")


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest) -> Store:
    return _make_store(request, request.param)


def _is_posix(store: Store) -> bool:
    return isinstance(store, PosixStore)


# -- basic contract ---------------------------------------------------------------------------------
def test_put_get_round_trip(store: Store) -> None:
    data = bytes(range(256)) * 10
    store.put("objects/ab/abcdef", data)
    assert store.get("objects/ab/abcdef") == data
    store.put("empty", b"")
    assert store.get("empty") == b""
    assert store.size("empty") == 0


def test_overwrite(store: Store) -> None:
    store.put("k", b"first version, longer")
    store.put("k", b"second")
    assert store.get("k") == b"second"
    assert store.size("k") == 6


def test_get_range(store: Store) -> None:
    data = os.urandom(1000)
    store.put("r/obj", data)
    assert store.get_range("r/obj", 0, 10) == data[:10]
    assert store.get_range("r/obj", 100, 250) == data[100:350]
    assert store.get_range("r/obj", 990, 100) == data[990:]  # short at the end, like a POSIX read
    assert store.get_range("r/obj", 1000, 10) == b""
    assert store.get_range("r/obj", 5000, 10) == b""
    assert store.get_range("r/obj", 3, 0) == b""
    with pytest.raises(StoreNotFound):
        store.get_range("r/missing", 0, 10)
    with pytest.raises(ValueError):
        store.get_range("r/obj", -1, 10)


def test_get_range_of_large_ranges(store: Store) -> None:
    # ranges of 1 MiB and more take the blocking client on S3 (see test_s3_large_ranges_...)
    data = os.urandom(3 << 20)
    store.put("r/big", data)
    assert store.get_range("r/big", 0, 2 << 20) == data[: 2 << 20]
    assert store.get_range("r/big", 12345, 1 << 20) == data[12345 : 12345 + (1 << 20)]
    assert store.get_range("r/big", (2 << 20) + 7, 2 << 20) == data[(2 << 20) + 7 :]  # short at the end
    assert store.get_range("r/big", 3 << 20, 1 << 20) == b""
    assert store.get_range("r/big", 2**62, 1 << 20) == b""
    with pytest.raises(StoreNotFound):
        store.get_range("r/missing", 0, 1 << 20)


def test_put_file_get_file_5mib(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    payload = os.urandom(5 * 1024 * 1024 + 123)
    src.write_bytes(payload)
    store.put_file("files/big", src)
    assert store.size("files/big") == len(payload)

    dst = tmp_path / "out.bin"
    dst.write_bytes(b"x" * (len(payload) + 4096))  # longer than the object: must be truncated
    store.get_file("files/big", dst)
    assert hashlib.sha256(dst.read_bytes()).digest() == hashlib.sha256(payload).digest()

    with pytest.raises(StoreNotFound):
        store.get_file("files/missing", tmp_path / "never.bin")
    # A missing local source is the caller's problem: a plain OSError, not a store error.
    with pytest.raises(FileNotFoundError):
        store.put_file("files/x", tmp_path / "does-not-exist")
    assert store.size("files/x") is None


def test_list_with_prefix(store: Store) -> None:
    objs = {"a/1": b"1", "a/2": b"22", "ab/3": b"333", "b/c/4": b"4444", "top": b"55555"}
    for k, v in objs.items():
        store.put(k, v)
    assert dict(store.list()) == {k: len(v) for k, v in objs.items()}
    assert dict(store.list("a/")) == {"a/1": 1, "a/2": 2}
    assert dict(store.list("a")) == {"a/1": 1, "a/2": 2, "ab/3": 3}
    assert dict(store.list("b/")) == {"b/c/4": 4}
    assert dict(store.list("b/c/4")) == {"b/c/4": 4}
    assert dict(store.list("zz")) == {}
    assert dict(store.list("nope/deeper/")) == {}


def test_list_of_missing_root_is_empty(store: Store) -> None:
    assert list(store.list()) == []


def test_size_and_delete(store: Store) -> None:
    store.put("d/x", b"abc")
    assert store.size("d/x") == 3
    assert store.size("d/missing") is None
    store.delete("d/x")
    assert store.size("d/x") is None
    with pytest.raises(StoreNotFound):
        store.get("d/x")
    store.delete("d/x")  # missing: fine
    store.delete("never/existed")


def test_exclusive_put(store: Store) -> None:
    store.put("manifests/0001", b"one", exclusive=True)
    with pytest.raises(AlreadyExists):
        store.put("manifests/0001", b"two", exclusive=True)
    assert store.get("manifests/0001") == b"one"
    assert dict(store.list("manifests/")) == {"manifests/0001": 3}


@pytest.fixture(params=["posix-plain", "posix-tmpfs", "posix-fuse", "s3"])
def atomic_store(request: pytest.FixtureRequest) -> Store:
    """The backends whose exclusive put is atomic (generic fsspec documents check-then-write)."""
    return _make_store(request, request.param)


def test_exclusive_put_race_has_one_winner(atomic_store: Store) -> None:
    store = atomic_store
    winners: list[int] = []
    losers: list[int] = []
    barrier = threading.Barrier(8)

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            store.put("race/key", f"writer {i}".encode(), exclusive=True)
            winners.append(i)
        except AlreadyExists:
            losers.append(i)

    parallel_map(attempt, range(8), 8)
    assert len(winners) == 1 and len(losers) == 7
    assert store.get("race/key") == f"writer {winners[0]}".encode()


def test_get_missing_raises_store_not_found(store: Store) -> None:
    with pytest.raises(StoreNotFound) as info:
        store.get("no/such/key")
    assert isinstance(info.value, StoreError) and isinstance(info.value, KeyError)
    assert "no/such/key" in str(info.value)


BAD_KEYS = ["", "/abs", "a/../b", "..", "../x", "a//b", "./a", "a/", "a\\b", "x\x00y", "obj.tmp-0123456789ab"]


def test_bad_keys_rejected(store: Store, tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    for key in BAD_KEYS:
        calls: list[Callable[[str], Any]] = [
            lambda k: store.put(k, b"x"),
            lambda k: store.put(k, b"x", exclusive=True),
            lambda k: store.put_file(k, f),
            lambda k: store.get(k),
            lambda k: store.get_range(k, 0, 1),
            lambda k: store.get_file(k, tmp_path / "out"),
            lambda k: store.size(k),
            lambda k: store.delete(k),
        ]
        for call in calls:
            with pytest.raises(ValueError):
                call(key)
    for prefix in ["/abs", "../", "a/../", "..", "a//b"]:
        with pytest.raises(ValueError):
            list(store.list(prefix))
    assert list(store.list()) == []  # and nothing was written anywhere


def test_batch_put_get(store: Store) -> None:
    items = [(f"batch/{i:04d}", os.urandom(100 + i)) for i in range(200)]
    put_many(store, items, workers=16)
    got = get_many(store, [k for k, _ in items], workers=16)
    assert got == [v for _, v in items]
    assert len(dict(store.list("batch/"))) == 200
    with pytest.raises(StoreNotFound):
        get_many(store, ["batch/0001", "batch/missing", "batch/0002"], workers=4)
    with pytest.raises(ValueError):
        put_many(store, [("ok/1", b"1"), ("../escape", b"2")], workers=4)


# -- PosixStore specifics -----------------------------------------------------------------------------
def _all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_posix_no_temp_files_left_and_hidden(volume: Path) -> None:
    root = volume / "store"
    s = PosixStore(root)
    for i in range(20):
        s.put(f"p/{i}", b"v" * i)
    s.put("p/0", b"overwritten")
    s.put("m/1", b"x", exclusive=True)
    assert all(".tmp-" not in f for f in _all_files(root))
    # A crash between write and rename leaves a temp file: never listed as an object.
    (root / "p" / "5.tmp-0123456789ab").write_bytes(b"half")
    keys = {k for k, _ in s.list()}
    assert keys == {f"p/{i}" for i in range(20)} | {"m/1"}


def test_posix_root_not_created_until_first_write(tmp_path: Path) -> None:
    root = tmp_path / "vol" / "_checkpoint"
    s = PosixStore(root)
    assert not root.exists()  # an unmounted Volume must not be silently created on local disk
    assert list(s.list()) == [] and s.size("x") is None
    s.put("x", b"1")
    assert (root / "x").read_bytes() == b"1"


def test_posix_on_fuse_has_no_hard_links_yet_exclusive_works(fuse_volume: Path) -> None:
    # rclone answers EIO to link(): the O_EXCL fallback must still refuse the second writer.
    with pytest.raises(OSError):
        os.link(_touch(fuse_volume / "a"), fuse_volume / "b")
    s = PosixStore(fuse_volume / "cp")
    s.put("k", b"1", exclusive=True)
    with pytest.raises(AlreadyExists):
        s.put("k", b"2", exclusive=True)
    assert s.get("k") == b"1"


def _touch(p: Path) -> Path:
    p.write_bytes(b"")
    return p


def test_posix_rename_unsupported_falls_back_to_in_place(
    plain_volume: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Databricks Volumes (FUSE) answered ENOSYS to rename for delta-rs; rclone happens to support it,
    # so this one case is simulated.
    def no_rename(src: Any, dst: Any) -> None:
        raise OSError(errno.ENOSYS, "Function not implemented", str(src))

    monkeypatch.setattr(os, "replace", no_rename)
    s = PosixStore(plain_volume / "s")
    s.put("a/b", b"first")
    s.put("a/b", b"second")
    s.put_file("a/c", _write(plain_volume / "src", b"file body"))
    assert s.get("a/b") == b"second" and s.get("a/c") == b"file body"
    assert _all_files(plain_volume / "s") == ["a/b", "a/c"]
    assert sum("rename is not supported" in r.getMessage() for r in caplog.records) == 1


def _write(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


def test_posix_full_volume_is_a_store_error(tmpfs_factory: Callable[..., Path], tmp_path: Path) -> None:
    vol = tmpfs_factory("1m")
    s = PosixStore(vol / "cp")
    s.put("keep", b"precious")
    with pytest.raises(StoreError) as info:
        s.put("big", os.urandom(2 * 1024 * 1024))
    msg = str(info.value)
    assert "full" in msg and "space" in msg and str(vol) in msg
    with pytest.raises(StoreError, match="full"):
        s.put("keep", os.urandom(2 * 1024 * 1024))  # a failed overwrite keeps the old object
    assert s.get("keep") == b"precious"
    big = _write(tmp_path / "big", os.urandom(2 * 1024 * 1024))
    with pytest.raises(StoreError, match="space"):
        s.put_file("big2", big)
    with pytest.raises(StoreError, match="full"):
        s.put("excl", os.urandom(2 * 1024 * 1024), exclusive=True)
    # Nothing half-written is left behind, neither temp files nor partial objects.
    assert _all_files(vol / "cp") == ["keep"]


def test_posix_full_volume_names_the_object_it_refused(tmpfs_factory: Callable[..., Path], tmp_path: Path) -> None:
    # One file too big for the free space must be told apart from a broken store: StoreFull (an ObjectRejected)
    # names its key, and the store takes smaller objects right after.
    vol = tmpfs_factory("1m")
    s = PosixStore(vol / "cp")
    big = _write(tmp_path / "big", os.urandom(2 * 1024 * 1024))
    with pytest.raises(StoreFull) as info:
        s.put_file("objects/ab/big", big)
    assert isinstance(info.value, ObjectRejected) and info.value.key == "objects/ab/big"
    assert "objects/ab/big" in str(info.value) and "no space left" in str(info.value)
    with pytest.raises(StoreFull) as info:
        s.put("packs/cd/pack", os.urandom(2 * 1024 * 1024))
    assert info.value.key == "packs/cd/pack"
    s.put("snapshots/small", b"the rest still fits")
    assert s.get("snapshots/small") == b"the rest still fits"
    assert _all_files(vol / "cp") == ["snapshots/small"]


def test_posix_file_size_limit_is_object_too_large(tmp_path: Path) -> None:
    # EFBIG for real: a file-size limit (RLIMIT_FSIZE, with SIGXFSZ ignored so write() fails instead) in a child.
    import subprocess
    import sys

    big = _write(tmp_path / "big", os.urandom(256 * 1024))
    code = f"""
import resource, signal, sys
from pathlib import Path
from fractfs.errors import ObjectTooLarge
from fractfs.stores.posix import PosixStore
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
s = PosixStore({str(tmp_path / "cp")!r})
s.put("small", b"x" * 1000)
try:
    s.put_file("objects/ef/big", Path({str(big)!r}))
except ObjectTooLarge as exc:
    print("refused", exc.key, "|", exc)
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("refused objects/ef/big |"), out.stdout
    assert "EFBIG" in out.stdout and "objects/ef/big" in out.stdout
    assert _all_files(tmp_path / "cp") == ["small"]


# -- FsspecStore specifics -------------------------------------------------------------------------------
def test_s3_unreachable_endpoint_fails_fast(seaweed: Any) -> None:
    from _services import closed_port

    endpoint = f"http://127.0.0.1:{closed_port()}"
    s = FsspecStore("s3://some-bucket/app", storage_options={"endpoint_url": endpoint})
    for op in (lambda: s.put("k", b"x"), lambda: s.get("k"), lambda: list(s.list())):
        t0 = time.monotonic()
        with pytest.raises(StoreError) as info:
            op()
        elapsed = time.monotonic() - t0
        assert elapsed < 15, f"gave up only after {elapsed:.1f}s"
        assert not isinstance(info.value, StoreNotFound)
        assert endpoint in str(info.value) and "unreachable" in str(info.value)


def test_s3_missing_bucket_is_not_a_missing_key(seaweed: Any) -> None:
    s = FsspecStore(f"s3://no-such-bucket-{uuid.uuid4().hex[:12]}/app")
    with pytest.raises(StoreError, match="does not exist") as info:
        s.get("k")
    assert not isinstance(info.value, StoreNotFound)
    # SeaweedFS answers a PUT into a missing bucket with AccessDenied (it would auto-create buckets for
    # admin identities only); either way it is a plain StoreError naming the URL.
    with pytest.raises(StoreError) as info:
        s.put("k", b"x")
    assert not isinstance(info.value, (StoreNotFound, AlreadyExists)) and s.url in str(info.value)


def test_s3_bucket_root_and_pagination(seaweed: Any, s3_bucket: str) -> None:
    s = FsspecStore(f"s3://{s3_bucket}")
    items = [(f"p/{i:05d}", b"x") for i in range(1100)]  # more than one list_objects_v2 page
    put_many(s, items, workers=32)
    listed = dict(s.list("p/"))
    assert len(listed) == 1100 and set(listed.values()) == {1}
    assert s.get("p/00042") == b"x"


def test_s3_exclusive_uses_conditional_put(s3_url: str, seaweed: Any) -> None:
    # Write the key behind the store's back: only the server's If-None-Match check can catch it.
    s = FsspecStore(s3_url)
    bucket, _, prefix = s3_url[len("s3://") :].partition("/")
    seaweed.client().put_object(Bucket=bucket, Key=f"{prefix}/m", Body=b"other")
    with pytest.raises(AlreadyExists):
        s.put("m", b"mine", exclusive=True)
    assert s.get("m") == b"other"


def test_s3_endpoint_from_environment(s3_url: str) -> None:
    # The session fixture exports AWS_ENDPOINT_URL; no storage_options needed.
    s = open_store(s3_url)
    assert isinstance(s, FsspecStore)
    s.put("env", b"ok")
    assert s.get("env") == b"ok"


def test_open_store_dispatch(tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path / "x")), PosixStore)
    assert isinstance(open_store("memory://fractfs-dispatch"), FsspecStore)
    assert isinstance(open_store("s3://bucket/prefix"), FsspecStore)
    with pytest.raises(ValueError):
        open_store("")


def test_fsspec_missing_backend_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="install"):
        FsspecStore("nosuchproto-xyz://bucket/app")


# -- helpers ------------------------------------------------------------------------------------------
def _client_error(code: str, status: int) -> Exception:
    from botocore.exceptions import ClientError

    return ClientError(
        {
            "Error": {"Code": code, "Message": code},  # type: ignore[typeddict-item]
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        "PutObject",
    )


def _wrapped(inner: Exception) -> Exception:
    outer = OSError(errno.EIO, "translated")
    outer.__cause__ = inner
    return outer


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), True),
        (TimeoutError("timed out"), True),
        (FileNotFoundError("gone"), False),
        (PermissionError("no"), False),
        (ValueError("bad"), False),
    ],
)
def test_is_transient_builtin(exc: Exception, transient: bool) -> None:
    assert fsspec_mod.is_transient(exc) is transient


@pytest.mark.parametrize(
    ("code", "status", "transient"),
    [
        ("SlowDown", 503, True),
        ("InternalError", 500, True),
        ("ServiceUnavailable", 503, True),
        ("TooManyRequests", 429, True),
        ("NoSuchKey", 404, False),
        ("AccessDenied", 403, False),
        ("PreconditionFailed", 412, False),
    ],
)
def test_is_transient_client_errors(code: str, status: int, transient: bool) -> None:
    err = _client_error(code, status)
    assert fsspec_mod.is_transient(err) is transient
    assert fsspec_mod.is_transient(_wrapped(err)) is transient  # as s3fs re-raises it


def test_retry_is_bounded_and_selective() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("reset")
        return "ok"

    assert retry(flaky, is_transient=fsspec_mod.is_transient, attempts=5) == "ok"
    assert len(calls) == 3

    calls.clear()

    def always_down() -> None:
        calls.append(1)
        raise ConnectionRefusedError("down")

    with pytest.raises(ConnectionRefusedError):
        retry(always_down, is_transient=fsspec_mod.is_transient, attempts=4)
    assert len(calls) == 4

    calls.clear()

    def missing() -> None:
        calls.append(1)
        raise FileNotFoundError("nope")

    with pytest.raises(FileNotFoundError):
        retry(missing, is_transient=fsspec_mod.is_transient, attempts=5)
    assert len(calls) == 1


def test_parallel_map_order_and_first_error() -> None:
    assert parallel_map(lambda x: x * 2, range(100), 8) == [x * 2 for x in range(100)]
    started: list[int] = []

    def work(i: int) -> int:
        started.append(i)
        if i == 3:
            raise RuntimeError("boom")
        time.sleep(0.01)
        return i

    with pytest.raises(RuntimeError, match="boom"):
        parallel_map(work, range(1000), 4)
    assert len(started) < 1000  # the rest was cancelled, not run


# -- the lean S3 client -----------------------------------------------------------------------------------
def test_s3_fast_path_is_used_and_verified_by_the_server(s3_url: str) -> None:
    s = FsspecStore(s3_url)
    s.put("a", b"1")
    assert s._fast is not None  # the contract tests above really exercised it
    # The test server checks signatures (it has one identity): a wrong secret is refused.
    s2 = FsspecStore(s3_url, storage_options={"key": "fractfs-test", "secret": "wrong-secret"})
    with pytest.raises(StoreError, match="access denied") as info:
        s2.get("a")
    assert not isinstance(info.value, StoreNotFound)


def test_s3_fast_path_refused_falls_back_to_botocore(s3_url: str, caplog: pytest.LogCaptureFixture) -> None:
    from fractfs.stores._s3fast import Credentials

    s = FsspecStore(s3_url)
    s.put("k0", b"zero")
    assert s._fast is not None

    async def bad_credentials() -> Credentials:  # as if our signing were wrong
        return Credentials("fractfs-test", "not-the-secret", None)

    s._fast._credentials = bad_credentials
    s.put("k1", b"one")  # refused (SignatureDoesNotMatch) → redone through botocore
    assert s._fast is None and not s._fast_wanted
    assert s.get("k1") == b"one" and s.get("k0") == b"zero"
    assert any("fast S3 path refused" in r.getMessage() for r in caplog.records)


def test_s3_large_ranges_use_the_blocking_client_one_connection_per_thread(s3_url: str) -> None:
    import socket
    import threading

    s = FsspecStore(s3_url)
    data = os.urandom(4 << 20)
    s.put("big", data)
    assert s.get_range("big", 1, 2 << 20) == data[1 : 1 + (2 << 20)]
    ranges = s._ranges
    assert ranges is not None
    conn = ranges._local.conn
    assert s.get_range("big", 0, 1 << 20) == data[: 1 << 20]
    assert ranges._local.conn is conn  # kept alive and reused
    # the server (or a proxy) closed the idle connection: the read is redone once on a new one
    conn.sock.shutdown(socket.SHUT_RDWR)
    assert s.get_range("big", 5, 3 << 20) == data[5 : 5 + (3 << 20)]
    assert ranges._local.conn is not conn

    got: dict[int, bytes] = {}

    def read(i: int) -> None:
        got[i] = s.get_range("big", i << 18, 1 << 20)

    threads = [threading.Thread(target=read, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(got[i] == data[i << 18 : (i << 18) + (1 << 20)] for i in range(8))
    # with the lean client switched off there is no blocking one either: everything goes through botocore
    assert FsspecStore(s3_url, fast_path=False)._range_client() is None


def test_s3_large_ranges_refused_fall_back_to_botocore(s3_url: str, caplog: pytest.LogCaptureFixture) -> None:
    from fractfs.stores._s3fast import Credentials

    s = FsspecStore(s3_url)
    data = os.urandom(2 << 20)
    s.put("big", data)
    assert s.get_range("big", 0, 1 << 20) == data[: 1 << 20]
    assert s._ranges is not None
    s._ranges._credentials = lambda: Credentials("fractfs-test", "not-the-secret", None)
    assert s.get_range("big", 100, 1 << 20) == data[100 : 100 + (1 << 20)]  # refused, then botocore
    assert s._ranges is None and not s._fast_wanted and s._range_client() is None
    assert any("fast S3 path refused" in r.getMessage() for r in caplog.records)


def test_sigv4_matches_botocore(monkeypatch: pytest.MonkeyPatch) -> None:
    import datetime

    import botocore.auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials as BotoCredentials

    from fractfs.stores._s3fast import Credentials, Signer, quote_key

    now = datetime.datetime(2026, 3, 4, 5, 6, 7, tzinfo=datetime.timezone.utc)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: now.replace(tzinfo=None))
    for token in (None, "session-token/+="):
        for base in ("http://127.0.0.1:8333/bucket/", "https://bucket.s3.eu-west-1.amazonaws.com/"):
            key = "app/objects/ab/a b+c=d~e%f\u00fc.bin"
            url = base + quote_key(key)
            body = b"payload bytes"
            payload = hashlib.sha256(body).hexdigest()
            ours = Signer("eu-west-1").sign("PUT", url, Credentials("AKID", "SECRET", token), payload, now)

            req = AWSRequest(method="PUT", url=url, data=body, headers={"X-Amz-Content-SHA256": payload})
            req.context["payload_signing_enabled"] = True
            botocore.auth.S3SigV4Auth(BotoCredentials("AKID", "SECRET", token), "s3", "eu-west-1").add_auth(req)
            assert ours["Authorization"] == req.headers["Authorization"], (base, token)
            assert ours["X-Amz-Date"] == req.headers["X-Amz-Date"]


def test_target_from_request() -> None:
    from fractfs.stores._s3fast import target_from_request

    auth = "AWS4-HMAC-SHA256 Credential=AK/20260101/eu-west-1/s3/aws4_request, SignedHeaders=host, Signature=x"
    t = target_from_request("https://b.s3.eu-west-1.amazonaws.com/app/p%20q", auth, {}, "app/p q")
    assert t is not None and t.base_url == "https://b.s3.eu-west-1.amazonaws.com/" and t.region == "eu-west-1"
    t = target_from_request("http://127.0.0.1:1/b/app/p", auth, {"X-Amz-Date": "x"}, "app/p")
    assert t is not None and t.base_url == "http://127.0.0.1:1/b/"
    # Things the lean client does not reproduce keep the store on botocore.
    assert target_from_request("http://h/b/app/p", auth, {"x-amz-server-side-encryption-customer-key": "k"},
                               "app/p") is None
    assert target_from_request("http://h/b/app/p", auth.replace("/s3/", "/s3express/"), {}, "app/p") is None
    assert target_from_request("http://h/b/app/p", "AWS AK:sig", {}, "app/p") is None
    assert target_from_request("http://h/b/other", auth, {}, "app/p") is None


def test_fsspec_full_volume_is_store_full(tmpfs_factory: Callable[..., Path]) -> None:
    vol = tmpfs_factory("1m")
    s = FsspecStore(f"file://{vol}")  # fsspec's local backend does not make parent directories: keep it flat
    with pytest.raises(StoreFull) as info:
        s.put("big", os.urandom(2 * 1024 * 1024))
    assert info.value.key == "big" and "no space left" in str(info.value)


def test_get_range_into_reads_what_get_range_reads(store: Store) -> None:
    # base.get_range_into: the store's own read into a buffer (PosixStore: preadv) or get_range copied in
    data = os.urandom(3 << 20)
    store.put("r/into", data)
    buf = memoryview(bytearray(1 << 20))
    assert get_range_into(store, "r/into", 12345, buf) == 1 << 20 and bytes(buf) == data[12345:12345 + (1 << 20)]
    assert get_range_into(store, "r/into", (3 << 20) - 10, buf) == 10 and bytes(buf[:10]) == data[-10:]
    assert get_range_into(store, "r/into", 3 << 20, buf) == 0
    with pytest.raises(StoreNotFound):
        get_range_into(store, "r/missing", 0, buf)
    assert (reads_into(store) is not None) == _is_posix(store)


def test_only_a_get_range_into_that_reads_like_get_range_is_used(tmp_path: Path) -> None:
    """A subclass or test double that replaces get_range must see every read (as put_parts and put)."""

    class Counting(PosixStore):
        reads = 0

        def get_range(self, key: str, start: int, length: int) -> bytes:
            Counting.reads += 1
            return super().get_range(key, start, length)

    plain = PosixStore(tmp_path / "a")
    assert reads_into(plain) is not None
    counting = Counting(tmp_path / "b")
    counting.put("k", b"0123456789")
    assert reads_into(counting) is None
    buf = memoryview(bytearray(4))
    assert get_range_into(counting, "k", 3, buf) == 4 and bytes(buf) == b"3456" and Counting.reads == 1
