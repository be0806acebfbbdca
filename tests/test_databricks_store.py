"""DatabricksFilesStore against a local fake of the Files API, driven by the real databricks-sdk client."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _services import in_ci
from fake_databricks import FakeDatabricks

try:
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.core import Config
except ImportError:  # pragma: no cover - depends on the environment
    if in_ci():
        raise
    pytest.skip(
        "databricks-sdk is not installed (pip install 'fractfs[databricks]')", allow_module_level=True
    )

from fractfs.errors import AlreadyExists, ObjectRejected, ObjectTooLarge, StoreError, StoreNotFound
from fractfs.stores.base import BatchStore, Store
from fractfs.stores.databricks import DatabricksFilesStore, parse_volume_root

ROOT = "/Volumes/main/default/vol/app"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The SDK's default auth chain reads DATABRICKS_* variables and ~/.databrickscfg: keep the host's out.
    for name in list(os.environ):
        if name.startswith(("DATABRICKS_", "ARM_", "AZURE_", "GOOGLE_")):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "no-databrickscfg"))


@pytest.fixture
def fake() -> Iterator[FakeDatabricks]:
    with FakeDatabricks() as f:
        yield f


def client_for(fake: FakeDatabricks, token: str | None = None, retry_timeout: int = 20) -> WorkspaceClient:
    cfg = Config(host=fake.host, token=token or fake.token, retry_timeout_seconds=retry_timeout)
    return WorkspaceClient(config=cfg)


@pytest.fixture
def store(fake: FakeDatabricks) -> DatabricksFilesStore:
    return DatabricksFilesStore(ROOT, client=client_for(fake), retry_timeout=20)


def on_fake(fake: FakeDatabricks, key: str) -> bytes:
    return fake.files[f"{ROOT}/{key}"].data


# ---- the store contract ----------------------------------------------------------------------------------
def test_is_a_store(store: DatabricksFilesStore) -> None:
    assert isinstance(store, Store)
    assert isinstance(store, BatchStore)
    assert store.url == f"dbfs:{ROOT}"


def test_put_get_size_delete(store: DatabricksFilesStore, fake: FakeDatabricks) -> None:
    store.put("manifests/one", b"first")
    store.put("manifests/one", b"second version")  # overwrite by default
    assert store.get("manifests/one") == b"second version"
    assert on_fake(fake, "manifests/one") == b"second version"
    assert store.size("manifests/one") == len(b"second version")
    store.put("empty", b"")
    assert store.get("empty") == b""
    assert store.size("empty") == 0

    store.delete("manifests/one")
    assert store.size("manifests/one") is None
    with pytest.raises(StoreNotFound) as err:
        store.get("manifests/one")
    assert isinstance(err.value, KeyError)
    assert f"{ROOT}/manifests/one" in str(err.value)
    store.delete("manifests/one")  # missing is fine
    store.delete("never/was")


def test_get_range(store: DatabricksFilesStore) -> None:
    data = bytes(range(256)) * 4
    store.put("packs/p1", data)
    assert store.get_range("packs/p1", 0, 10) == data[:10]
    assert store.get_range("packs/p1", 100, 300) == data[100:400]
    assert store.get_range("packs/p1", 1000, 100) == data[1000:]  # fewer at the end
    assert store.get_range("packs/p1", 1024, 5) == b""  # past the end
    assert store.get_range("packs/p1", 5000, 5) == b""
    assert store.get_range("packs/p1", 3, 0) == b""
    with pytest.raises(StoreNotFound):
        store.get_range("packs/missing", 0, 4)
    with pytest.raises(ValueError):
        store.get_range("packs/p1", -1, 4)


def test_get_range_when_server_ignores_range(fake: FakeDatabricks, store: DatabricksFilesStore) -> None:
    fake.honour_range = False
    store.put("p", b"0123456789")
    assert store.get_range("p", 2, 3) == b"234"
    assert store.get_range("p", 8, 10) == b"89"


def test_range_request_sends_range_header(fake: FakeDatabricks, store: DatabricksFilesStore) -> None:
    store.put("p", b"x" * 1000)
    fake.reset_log()
    assert store.get_range("p", 10, 20) == b"x" * 20
    [req] = [r for r in fake.requests if r.method == "GET"]
    assert req.headers.get("Range") == "bytes=10-29"
    assert req.status == 206


def test_put_file_and_get_file(store: DatabricksFilesStore, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    payload = os.urandom(3 * 1024 * 1024 + 7)
    src.write_bytes(payload)
    store.put_file("objects/ab/big", src)
    assert store.size("objects/ab/big") == len(payload)

    dst = tmp_path / "out" / "big"
    dst.parent.mkdir()
    dst.write_bytes(b"old content to be replaced")
    store.get_file("objects/ab/big", dst)
    assert dst.read_bytes() == payload
    assert sorted(p.name for p in dst.parent.iterdir()) == ["big"]  # no temp file left behind

    with pytest.raises(StoreNotFound):
        store.get_file("objects/ab/missing", tmp_path / "out" / "missing")
    assert not (tmp_path / "out" / "missing").exists()
    assert sorted(p.name for p in dst.parent.iterdir()) == ["big"]


def test_get_file_local_errors_are_not_store_errors(store: DatabricksFilesStore, tmp_path: Path) -> None:
    store.put("k", b"data")
    with pytest.raises(FileNotFoundError):
        store.get_file("k", tmp_path / "no-such-dir" / "k")


def test_exclusive_put(store: DatabricksFilesStore, fake: FakeDatabricks) -> None:
    store.put("lease", b"owner=a", exclusive=True)
    with pytest.raises(AlreadyExists) as err:
        store.put("lease", b"owner=b", exclusive=True)
    assert f"{ROOT}/lease" in str(err.value)
    assert on_fake(fake, "lease") == b"owner=a"
    # The same bytes already in place count as this create having happened (a retried request that landed).
    store.put("lease", b"owner=a", exclusive=True)
    assert any(r.method == "PUT" and r.query.get("overwrite") == "false" for r in fake.requests)


def test_keys_are_checked(store: DatabricksFilesStore) -> None:
    for bad in ("", "/abs", "a/../b", "a//b", "./a", "a/"):
        with pytest.raises(ValueError):
            store.put(bad, b"x")
    with pytest.raises(ValueError):
        list(store.list("../"))


def test_list_with_prefix_across_many_pages(store: DatabricksFilesStore, fake: FakeDatabricks) -> None:
    want: dict[str, int] = {}
    for i in range(23):
        want[f"packs/ab/{i:04d}"] = i
    for i in range(5):
        want[f"packs/cd/{i:04d}"] = 100 + i
    want["packs/abc"] = 7  # a file whose name shares the prefix "packs/ab"
    want["snapshots/2026/s1"] = 3
    want["top"] = 1
    items = [(k, b"x" * n) for k, n in want.items()]
    store.put_many(items)
    fake.reset_log()

    assert dict(store.list()) == want
    pages = fake.count("GET", "/api/2.0/fs/directories")
    # 6 directories, and the fake serves at most 2 entries a page, some pages short or empty.
    assert pages > 20
    followed = [r for r in fake.requests if r.method == "GET" and "page_token" in r.query]
    assert len(followed) > 15, "the listing should have followed next_page_token past short and empty pages"

    assert dict(store.list("packs/ab")) == {k: v for k, v in want.items() if k.startswith("packs/ab")}
    assert dict(store.list("packs/ab/")) == {k: v for k, v in want.items() if k.startswith("packs/ab/")}
    assert dict(store.list("packs/c")) == {k: v for k, v in want.items() if k.startswith("packs/c")}
    assert dict(store.list("snap")) == {"snapshots/2026/s1": 3}
    assert dict(store.list("nothing/here")) == {}


def test_list_of_an_empty_store(fake: FakeDatabricks) -> None:
    store = DatabricksFilesStore("/Volumes/main/default/vol/fresh", client=client_for(fake))
    assert list(store.list()) == []


def test_listing_survives_a_500_mid_way(store: DatabricksFilesStore, fake: FakeDatabricks) -> None:
    store.put_many([(f"d/{i:02d}", b"y") for i in range(9)])
    fake.inject(500, 1, method="GET", path_contains="/fs/directories", after=2)
    assert sorted(k for k, _ in store.list("d/")) == [f"d/{i:02d}" for i in range(9)]
    assert fake.count("GET", "/api/2.0/fs/directories", status=500) == 1


def test_upload_makes_missing_directories(fake: FakeDatabricks, store: DatabricksFilesStore) -> None:
    # Whether the service creates parents on upload is not documented; the store copes either way.
    fake.auto_create_parents = False
    store.put("deep/er/still/obj", b"1")
    assert on_fake(fake, "deep/er/still/obj") == b"1"
    assert fake.count("PUT", "/api/2.0/fs/directories") == 1
    fake.reset_log()
    store.put("deep/er/still/obj2", b"2")
    assert fake.count("PUT") == 1  # the directory is there now: a single request


# ---- retries and errors ----------------------------------------------------------------------------------
def test_429_with_retry_after_is_retried(store: DatabricksFilesStore, fake: FakeDatabricks) -> None:
    store.put("k", b"v")
    fake.inject(429, 2, retry_after=1, method="GET")
    t0 = time.monotonic()
    assert store.get("k") == b"v"
    elapsed = time.monotonic() - t0
    assert fake.count("GET", status=429) == 2
    assert elapsed >= 2.0, elapsed  # both waits honoured Retry-After: 1


def test_503_on_upload_is_retried(store: DatabricksFilesStore, fake: FakeDatabricks) -> None:
    fake.inject(503, 1, retry_after=1, method="PUT")
    t0 = time.monotonic()
    store.put("k", b"payload")
    assert time.monotonic() - t0 >= 1.0
    assert on_fake(fake, "k") == b"payload"
    assert fake.count("PUT", status=503) == 1


def test_503_on_put_file_is_retried_with_the_whole_body(
    store: DatabricksFilesStore, fake: FakeDatabricks, tmp_path: Path
) -> None:
    # An SDK that re-sends a consumed stream would store an empty object here; the store must notice.
    src = tmp_path / "big"
    src.write_bytes(os.urandom(256 * 1024))
    fake.inject(503, 1, retry_after=1, method="PUT")
    store.put_file("objects/aa/big", src)
    assert on_fake(fake, "objects/aa/big") == src.read_bytes()


def test_transient_500_and_502_are_retried(store: DatabricksFilesStore, fake: FakeDatabricks) -> None:
    store.put("k", b"v")
    fake.inject(500, 1, method="GET")
    fake.inject(502, 1, method="GET", error_code="BAD_GATEWAY")
    assert store.get("k") == b"v"
    assert fake.count("GET", status=500) == 1
    assert fake.count("GET", status=502) == 1


@pytest.mark.parametrize("status", [500, 503])
def test_persistent_5xx_ends_in_store_error_in_bounded_time(fake: FakeDatabricks, status: int) -> None:
    budget = 3
    store = DatabricksFilesStore(ROOT, client=client_for(fake, retry_timeout=budget), retry_timeout=budget)
    fake.inject(status, None, retry_after=1 if status == 503 else None)
    t0 = time.monotonic()
    with pytest.raises(StoreError) as err:
        store.get("some/key")
    elapsed = time.monotonic() - t0
    assert not isinstance(err.value, StoreNotFound)
    msg = str(err.value)
    assert f"{ROOT}/some/key" in msg and str(status) in msg and "gave up" in msg
    # The SDK may overshoot its budget by one Retry-After (plus up to 1 s of jitter) before it stops.
    assert elapsed < budget + 3, elapsed
    assert fake.count("GET", status=status) >= 2


def test_401_names_the_credentials(fake: FakeDatabricks) -> None:
    store = DatabricksFilesStore(ROOT, client=client_for(fake, token="wrong"))
    with pytest.raises(StoreError) as err:
        store.put("k", b"v")
    msg = str(err.value)
    assert "401" in msg and "credentials" in msg
    assert "DATABRICKS_CLIENT_ID" in msg and "DATABRICKS_CLIENT_SECRET" in msg
    assert "wrong" not in msg  # the SDK masks the token; so must we


def test_missing_credentials_name_the_env_vars(fake: FakeDatabricks) -> None:
    with pytest.raises(StoreError) as err:
        DatabricksFilesStore(ROOT)
    msg = str(err.value)
    assert "DATABRICKS_HOST" in msg and "DATABRICKS_CLIENT_ID" in msg and ROOT in msg


def test_service_principal_from_env(fake: FakeDatabricks, monkeypatch: pytest.MonkeyPatch) -> None:
    # What a Databricks App gets: host plus the app's service principal, exchanged for an OAuth token.
    monkeypatch.setenv("DATABRICKS_HOST", fake.host)
    monkeypatch.setenv("DATABRICKS_CLIENT_ID", fake.client_id)
    monkeypatch.setenv("DATABRICKS_CLIENT_SECRET", fake.client_secret)
    store = DatabricksFilesStore(ROOT)
    store.put("k", b"via service principal")
    assert store.get("k") == b"via service principal"
    assert any(r.path == "/oidc/v1/token" and r.status == 200 for r in fake.requests)


def test_wrong_client_secret_is_a_credentials_error(
    fake: FakeDatabricks, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABRICKS_HOST", fake.host)
    monkeypatch.setenv("DATABRICKS_CLIENT_ID", fake.client_id)
    monkeypatch.setenv("DATABRICKS_CLIENT_SECRET", "not-the-secret")
    with pytest.raises(StoreError) as err:
        store = DatabricksFilesStore(ROOT)
        store.put("k", b"v")
    assert "DATABRICKS_CLIENT_SECRET" in str(err.value)
    assert "not-the-secret" not in str(err.value)


def test_403_invalid_access_token_names_the_credentials() -> None:
    # Many workspaces answer a wrong, expired or revoked personal access token with 403, not 401.
    with FakeDatabricks(bad_token_status=403) as fake:
        store = DatabricksFilesStore(ROOT, client=client_for(fake, token="revoked"))
        with pytest.raises(StoreError) as err:
            store.put("k", b"v")
    msg = str(err.value)
    assert "Invalid access token" in msg and "DATABRICKS_TOKEN" in msg and f"{ROOT}/k" in msg
    assert "WRITE VOLUME" not in msg and "revoked" not in msg.replace("expired or revoked", "")


def test_object_over_the_request_limit_is_refused_before_sending(fake: FakeDatabricks, tmp_path: Path) -> None:
    store = DatabricksFilesStore(ROOT, client=client_for(fake), max_object_size=1000)
    fake.reset_log()
    big = tmp_path / "big"
    big.write_bytes(b"b" * 1001)
    with pytest.raises(ObjectTooLarge) as err:
        store.put_file("objects/ab/big", big)
    assert isinstance(err.value, ObjectRejected) and err.value.key == "objects/ab/big"
    assert f"{ROOT}/objects/ab/big" in str(err.value) and "1001" in str(err.value) and "1000" in str(err.value)
    with pytest.raises(ObjectTooLarge) as err:
        store.put("packs/cd/pack", b"p" * 1001)
    assert err.value.key == "packs/cd/pack"
    assert fake.count("PUT") == 0 and not fake.files  # refused before any request
    with pytest.raises(ObjectTooLarge):
        store.put_many([("packs/ef/ok", b"ok"), ("packs/ef/pack", b"p" * 1001)])
    assert f"{ROOT}/packs/ef/pack" not in fake.files
    # right at the limit is fine
    big.write_bytes(b"b" * 1000)
    store.put_file("objects/ab/big", big)
    assert on_fake(fake, "objects/ab/big") == b"b" * 1000


def test_403_names_the_grants(store: DatabricksFilesStore, fake: FakeDatabricks) -> None:
    fake.inject(403, 1, method="PUT")
    with pytest.raises(StoreError) as err:
        store.put("k", b"v")
    assert "WRITE VOLUME" in str(err.value) and f"{ROOT}/k" in str(err.value)


# ---- the root --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "root",
    [
        "",
        "/",
        "/tmp/app",
        "Volumes/main/default/vol",
        "/Volumes/main/default",
        "/Volumes/main//vol",
        "/Volumes/main/default/vol/../other",
        "/Volumes/main/default/vol/a//b",
        "/Volumes/main/default/vol/./a",
        "s3://bucket/prefix",
    ],
)
def test_bad_root_is_refused_before_any_request(root: str) -> None:
    with pytest.raises(ValueError) as err:
        DatabricksFilesStore(root, client=object())
    assert repr(root) in str(err.value) and "/Volumes/<catalog>/<schema>/<volume>" in str(err.value)


def test_root_forms() -> None:
    assert parse_volume_root("/Volumes/c/s/v") == ("c", "s", "v", "")
    assert parse_volume_root("/Volumes/c/s/v/") == ("c", "s", "v", "")
    assert parse_volume_root("dbfs:/Volumes/c/s/v/app/x") == ("c", "s", "v", "app/x")


def test_volume_root_itself_works(fake: FakeDatabricks) -> None:
    store = DatabricksFilesStore("/Volumes/main/default/vol", client=client_for(fake))
    store.put("a/b", b"1")
    assert dict(store.list()) == {"a/b": 1}


# ---- parallel transfers ----------------------------------------------------------------------------------
def test_put_many_get_many_200(fake: FakeDatabricks, store: DatabricksFilesStore) -> None:
    items = [(f"objects/{i % 16:02x}/{i:064x}", os.urandom(64 + i)) for i in range(200)]
    t0 = time.monotonic()
    store.put_many(items)
    got = store.get_many([k for k, _ in items])
    elapsed = time.monotonic() - t0
    assert got == [d for _, d in items]
    assert fake.max_in_flight > 1, "transfers should overlap"
    assert fake.max_in_flight <= store.transfers
    assert elapsed < 60
    with pytest.raises(StoreNotFound):
        store.get_many([items[0][0], "objects/ff/missing", items[1][0]])


def test_put_many_exclusive_conflict(store: DatabricksFilesStore) -> None:
    store.put("x/1", b"a")
    with pytest.raises(AlreadyExists):
        store.put_many([("x/0", b"z"), ("x/1", b"b"), ("x/2", b"c")], exclusive=True)


# ---- the snapshot engine over this store -----------------------------------------------------------------
def test_checkpoint_restore_round_trip(
    fake: FakeDatabricks, store: DatabricksFilesStore, tmp_path: Path
) -> None:
    from test_snapshot_support import everything, temp_leftovers, tree, write

    from fractfs.snapshot import checkpoint, restore, verify

    src = {"root": tmp_path / "app"}
    for i in range(5):
        write(src["root"], f"f{i}", f"file number {i} " * 50)
    write(src["root"], "sub/dir/nested.txt", "nested")
    write(src["root"], "big.bin", os.urandom(64 * 1024))
    state = tmp_path / "state"
    first = checkpoint(store, src, everything, state_dir=state, large_file=32 * 1024)
    assert first.snapshot_id is not None
    first_packs = {k for k, _ in store.list("packs/")}
    assert first_packs and not any(k.startswith("objects/") for k, _ in store.list())  # format v2: all in packs
    from fractfs.snapshot import catalog

    m, _ = catalog.newest_valid(store)
    assert m is not None
    f2 = next(e for e in m.entries if e.path == "f2")

    # Round trip of the first generation into an empty place.
    fresh = {"root": tmp_path / "fresh"}
    out = restore(store, fresh)
    assert out.errors == [] and tree(fresh["root"]) == tree(src["root"])

    # Second generation: one file deleted, one changed.
    (src["root"] / "f4").unlink()
    write(src["root"], "f0", "changed content")
    second = checkpoint(store, src, everything, state_dir=state, large_file=32 * 1024)
    assert second.snapshot_id is not None and second.deleted == ["root:f4"]

    # Bit rot in the first pack, inside f2.
    pkey = f"packs/{f2.pack[:2]}/{f2.pack}"  # the small files' pack (big.bin's chunks have packs of their own)
    assert pkey in first_packs
    blob = fake.files[f"{ROOT}/{pkey}"]
    damaged = bytearray(blob.data)
    damaged[f2.offset + 10] ^= 0x01
    blob.data = bytes(damaged)

    target = {"root": tmp_path / "again"}
    out = restore(store, target)
    assert len(out.errors) == 1 and out.errors[0].startswith("root:f2:"), out.errors
    assert not (target["root"] / "f2").exists()  # detected, not restored
    assert not (target["root"] / "f4").exists()  # deleted in the newest snapshot
    assert (target["root"] / "f0").read_text() == "changed content"
    assert (target["root"] / "f1").read_text() == "file number 1 " * 50
    assert (target["root"] / "sub/dir/nested.txt").read_text() == "nested"
    assert (target["root"] / "big.bin").read_bytes() == (src["root"] / "big.bin").read_bytes()
    assert temp_leftovers(target["root"]) == []
    report = verify(store)
    assert not report.ok and report.bad_blobs == [pkey]


def test_checkpoint_leaves_out_a_file_over_the_request_limit_and_commits_the_rest(
    fake: FakeDatabricks, tmp_path: Path
) -> None:
    """Issue 11 point 7 on the Files API: a changed file larger than one request takes is refused per object;
    the checkpoint commits the 2-byte state change next to it, keeps the file's previous version and status
    names it with the store's reason."""
    from fractfs.checkpointer import Checkpointer, status_fields
    from fractfs.snapshot import restore
    from fractfs.snapshot.engine import Options

    store = DatabricksFilesStore(ROOT, client=client_for(fake), max_object_size=64 * 1024)
    app = tmp_path / "app"
    app.mkdir()
    (app / "state.txt").write_text("v1")
    (app / "big.bin").write_bytes(os.urandom(48 * 1024))  # under the limit: stored as its own object
    cp = Checkpointer(store, areas=lambda: {"root": app}, want=lambda: (lambda _a, _r, _d: True),
                      state_dir=tmp_path / "state", options=Options(large_file=32 * 1024), keeper=None)
    assert sorted(cp.checkpoint()) == ["big.bin", "state.txt"]
    (app / "big.bin").write_bytes(os.urandom(100 * 1024))  # over it now
    (app / "new-big.bin").write_bytes(os.urandom(70 * 1024))  # new and over it: left out
    (app / "state.txt").write_text("v2")
    assert cp.checkpoint() == ["state.txt"]
    fields = status_fields(cp.stats, lambda t: t)
    assert fields["last_error"] is None
    reasons = {e["path"]: e["reason"] for e in fields["not_stored"]}
    assert sorted(reasons) == ["big.bin", "new-big.bin"], reasons
    # the pack holding big.bin's one chunk (100 KiB, with its index) is what the store refused
    assert "packs/" in reasons["big.bin"] and "102472" in reasons["big.bin"] and str(64 * 1024) in reasons["big.bin"]
    dst = tmp_path / "fresh"
    res = restore(store, {"root": dst})
    assert not res.errors
    assert (dst / "state.txt").read_text() == "v2"
    assert (dst / "big.bin").stat().st_size == 48 * 1024 and not (dst / "new-big.bin").exists()
