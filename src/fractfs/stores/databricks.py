"""A store on a Unity Catalog Volume, reached through the Databricks Files API.

Databricks Apps run unprivileged, without a FUSE mount of ``/Volumes`` of their own, so the app's data reaches its
Volume over HTTPS: ``/api/2.0/fs/files`` for objects and ``/api/2.0/fs/directories`` for listings, authenticated
with the app's service principal (``DATABRICKS_HOST`` + ``DATABRICKS_CLIENT_ID``/``DATABRICKS_CLIENT_SECRET``).

Transport choices, and why:

* Requests go through the SDK's generated ``FilesAPI`` bound to the workspace ``ApiClient``, not through the
  ``w.files`` extension. In recent SDKs that extension first asks for a presigned cloud-storage URL on every
  download (one more round trip, and a detour through storage the app's network may not reach) and switches to
  multipart uploads above 50 MiB. Our objects are packs and manifests well below the 5 GiB single-request limit,
  so one plain request per object is both cheaper and easier to reason about.
* Throttling (429) and 503 are retried by the SDK itself, honouring ``Retry-After``, until its
  ``retry_timeout_seconds``. A client built here gets that budget set to ours, so the two loops do not stack.
  The SDK does not retry 500/502/504 nor a body cut off mid-download; this module retries those, inside the
  same per-operation deadline.
* Range reads send a ``Range`` header (the download endpoint honours it) and cope with a server that ignores it.
"""

from __future__ import annotations

import builtins
import concurrent.futures
import functools
import logging
import os
import random
import re
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Callable, TypeVar

from ..errors import AlreadyExists, ConfigError, ObjectTooLarge, StoreError, StoreNotFound
from .base import check_key, check_prefix
from .transfer import parallel_map

log = logging.getLogger("fractfs")

T = TypeVar("T")

#: The Files API takes one request body of at most 5 GiB.
SINGLE_REQUEST_LIMIT = 5 * 1024**3

_FILES = "/api/2.0/fs/files"
_ROOT_RE = re.compile(r"^/Volumes/([^/]+)/([^/]+)/([^/]+)(/.*)?$")
_CREDENTIALS_HINT = (
    "set DATABRICKS_HOST plus DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET (a service principal; "
    "Databricks Apps inject these) or DATABRICKS_TOKEN, or a DATABRICKS_CONFIG_PROFILE"
)
_GRANTS_HINT = "the principal needs USE CATALOG, USE SCHEMA, READ VOLUME and WRITE VOLUME on the volume"
# A 403 whose message says this is a credentials problem (a wrong, expired or revoked token), not missing grants.
_BAD_TOKEN_RE = re.compile(r"invalid (access )?token|token (is )?(expired|revoked|invalid)", re.IGNORECASE)


def parse_volume_root(root: str) -> tuple[str, str, str, str]:
    """Split ``/Volumes/<catalog>/<schema>/<volume>[/<prefix>]`` into its four parts (prefix may be '').

    A leading ``dbfs:`` (the URI form Databricks prints for volume paths) and a trailing slash are accepted.
    Raises ConfigError (a ValueError) naming the path otherwise.
    """
    text = root.removeprefix("dbfs:")
    text = text.rstrip("/") if text not in ("", "/") else text
    m = _ROOT_RE.match(text)
    problem = None
    if m is None:
        problem = "it names no catalog, schema and volume under /Volumes"
    else:
        prefix = (m.group(4) or "").lstrip("/")
        segments = [m.group(1), m.group(2), m.group(3)] + (prefix.split("/") if prefix else [])
        if any(s in ("", ".", "..") or s != s.strip() or "\\" in s for s in segments):
            problem = "empty, '.', '..' or blank-edged path segments are not allowed"
    if problem is not None or m is None:
        raise ConfigError(
            f"Databricks volume root {root!r} is not of the form "
            f"/Volumes/<catalog>/<schema>/<volume>[/<prefix>]: {problem}"
        )
    return m.group(1), m.group(2), m.group(3), (m.group(4) or "").lstrip("/")


class _Sdk:
    """The few databricks-sdk names this module uses, imported on first use so fractfs works without it."""

    def __init__(self) -> None:
        try:
            from databricks.sdk import WorkspaceClient
            from databricks.sdk import errors as sdk_errors
            from databricks.sdk.core import Config
            from databricks.sdk.service.files import FilesAPI
        except ImportError as e:
            raise StoreError(
                "the Databricks store needs the databricks-sdk package: pip install 'fractfs[databricks]'"
            ) from e
        # Typed loosely on purpose: annotations differ between SDK releases, and only these names are relied on.
        self.WorkspaceClient: Any = WorkspaceClient
        self.Config: Any = Config
        self.FilesAPI: Any = FilesAPI
        self.errors: Any = sdk_errors


class DatabricksFilesStore:
    """Objects under ``root`` on a Unity Catalog Volume, through the Files API.

    ``client`` is a ``databricks.sdk.WorkspaceClient``; by default one is built from the SDK's default
    authentication chain (environment, then config profiles). ``transfers`` bounds the threads used by
    :meth:`put_many`, :meth:`get_many` and :meth:`list`. ``retry_timeout`` bounds, in seconds, how long one
    operation keeps retrying transient failures before it raises StoreError; with a client passed in, throttling
    is retried for as long as that client's own ``retry_timeout_seconds`` says. An object larger than
    ``max_object_size`` (the Files API's single-request limit, lowered only by tests) is refused with
    ObjectTooLarge before anything is sent.
    """

    def __init__(
        self,
        root: str,
        *,
        client: Any = None,
        transfers: int = 16,
        retry_timeout: float = 60.0,
        max_object_size: int = SINGLE_REQUEST_LIMIT,
    ) -> None:
        catalog, schema, volume, prefix = parse_volume_root(root)
        if transfers < 1:
            raise ValueError(f"transfers must be >= 1, got {transfers}")
        if retry_timeout <= 0:
            raise ValueError(f"retry_timeout must be > 0, got {retry_timeout}")
        self.volume = f"/Volumes/{catalog}/{schema}/{volume}"
        self.root = self.volume + (f"/{prefix}" if prefix else "")
        self.url = f"dbfs:{self.root}"
        self.transfers = transfers
        self.retry_timeout = float(retry_timeout)
        self.max_object_size = max_object_size
        self._sdk = _Sdk()
        self._client = client if client is not None else self._default_client()
        self._api = self._client.api_client
        self._files = self._sdk.FilesAPI(self._api)

    def _default_client(self) -> Any:
        from .._version import __version__ as version

        try:
            cfg = self._sdk.Config(
                retry_timeout_seconds=max(1, round(self.retry_timeout)),
                product="fractfs",
                product_version=str(version),
            )
            return self._sdk.WorkspaceClient(config=cfg)
        except ValueError as e:
            # The SDK raises ValueError when no credential source in its chain works.
            raise StoreError(
                f"cannot authenticate to Databricks for {self.url}: {e}; {_CREDENTIALS_HINT}"
            ) from e

    def __repr__(self) -> str:
        return f"DatabricksFilesStore({self.root!r})"

    # ---- paths -------------------------------------------------------------------------------------------
    def _path(self, key: str) -> str:
        return f"{self.root}/{check_key(key)}"

    def _headers(self, extra: dict[str, str]) -> dict[str, str]:
        workspace_id = getattr(getattr(self._client, "config", None), "workspace_id", None)
        if workspace_id:
            # The generated methods send it too; it routes requests on hosts serving several workspaces.
            extra = {**extra, "X-Databricks-Workspace-Id": str(workspace_id)}
        return extra

    # ---- error handling ----------------------------------------------------------------------------------
    def _status(self, err: BaseException) -> int | None:
        e = self._sdk.errors
        for cls, status in (
            (e.NotFound, 404),
            (e.ResourceConflict, 409),
            (e.Unauthenticated, 401),
            (e.PermissionDenied, 403),
            (e.TooManyRequests, 429),
            (e.TemporarilyUnavailable, 503),
            (e.DeadlineExceeded, 504),
            (e.NotImplemented, 501),
            (e.InternalError, 500),
            (e.BadRequest, 400),
        ):
            if isinstance(err, cls):
                return status
        code = getattr(err, "error_code", None)
        if code in ("BAD_GATEWAY", "GATEWAY_TIMEOUT", "SERVICE_UNAVAILABLE"):
            return {"BAD_GATEWAY": 502, "GATEWAY_TIMEOUT": 504, "SERVICE_UNAVAILABLE": 503}[code]
        return None

    def _transient(self, err: BaseException) -> bool:
        """Worth another try here: server-side hiccups the SDK does not retry, and bodies cut off mid-way."""
        import requests  # the SDK's own dependency, so present whenever we got this far

        if isinstance(err, _Truncated):
            return True
        if isinstance(err, self._sdk.errors.DatabricksError):
            return self._status(err) in (500, 502, 504)
        # Raised while reading a streamed body; failures before the response are the SDK's to retry.
        return isinstance(
            err, (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)
        )

    def _error(self, op: str, path: str, err: BaseException, *, gave_up: bool = False) -> StoreError:
        """One StoreError for ``err`` naming the operation, the path and what the server said."""
        e = self._sdk.errors
        if isinstance(err, TimeoutError):
            # The SDK's retry loop ran out of its own budget; the request's last failure is the cause.
            cause = err.__cause__ or err
            budget = getattr(getattr(self._client, "config", None), "retry_timeout_seconds", None) or 300
            return StoreError(
                f"{op} {path}: gave up after retrying for about {budget}s: {self._describe(cause)}"
            )
        if isinstance(err, e.NotFound):
            return StoreNotFound(f"{path}: not found ({op} answered 404)")
        if isinstance(err, e.Unauthenticated):
            return StoreError(
                f"{op} {path}: Databricks rejected the credentials (HTTP 401): {err}; {_CREDENTIALS_HINT}"
            )
        if isinstance(err, e.PermissionDenied) and _BAD_TOKEN_RE.search(str(err)):
            return StoreError(
                f"{op} {path}: Databricks rejected the access token (HTTP 403: {err}); the token is wrong, "
                f"expired or revoked: renew DATABRICKS_TOKEN or the profile's token, or {_CREDENTIALS_HINT}"
            )
        if isinstance(err, e.PermissionDenied):
            return StoreError(f"{op} {path}: permission denied (HTTP 403): {err}; {_GRANTS_HINT}")
        if isinstance(err, e.DatabricksError):
            prefix = f"gave up after retrying for about {self.retry_timeout:.0f}s: " if gave_up else ""
            return StoreError(f"{op} {path}: {prefix}{self._describe(err)}")
        if isinstance(err, ValueError):
            # The SDK's credential providers raise ValueError (for example a rejected client secret).
            return StoreError(f"{op} {path}: cannot authenticate to Databricks: {err}; {_CREDENTIALS_HINT}")
        prefix = f"gave up after retrying for about {self.retry_timeout:.0f}s: " if gave_up else ""
        return StoreError(f"{op} {path}: {prefix}{type(err).__name__}: {err}")

    def _describe(self, err: BaseException) -> str:
        status = self._status(err)
        code = getattr(err, "error_code", None)
        label = f"HTTP {status}" if status else type(err).__name__
        return f"{label}{' ' + code if code else ''}: {err}"

    def _retrying(self, op: str, path: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` with backoff on transient failures until the operation's deadline; map errors to ours."""
        deadline = time.monotonic() + self.retry_timeout
        attempt = 0
        while True:
            try:
                return fn()
            except (StoreError, _LocalSide):
                raise
            except Exception as err:
                if not self._transient(err):
                    raise self._error(op, path, err) from err
                attempt += 1
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._error(op, path, err, gave_up=True) from err
                # The last wait is cut short so that one more try lands right at the deadline.
                delay = min(remaining, min(8.0, 0.25 * 2**attempt) * (0.5 + random.random() / 2))
                log.debug(
                    "fractfs: %s %s failed (%s); retry %d in %.2fs",
                    op,
                    path,
                    self._describe(err),
                    attempt,
                    delay,
                )
                time.sleep(delay)

    # ---- the Store protocol ------------------------------------------------------------------------------
    def _too_large(self, key: str, path: str, size: int, source: str) -> ObjectTooLarge:
        return ObjectTooLarge(
            f"{path}: {source} is {size} bytes; the Files API takes at most {self.max_object_size} bytes in one "
            "request, so this object cannot be stored there (keep such a file out of the checkpoint, e.g. on "
            "the Volume through [dirs], or split it)",
            key=key,
        )

    def put(self, key: str, data: bytes, *, exclusive: bool = False) -> None:
        path = self._path(key)
        if len(data) > self.max_object_size:
            raise self._too_large(key, path, len(data), "the object")
        try:
            # Plain bytes, not a stream: every SDK release can send bytes again on a retry, whereas releases
            # before the fix for databricks-sdk-py#796 re-sent an already consumed stream as an empty body.
            self._upload(path, lambda: data, overwrite=not exclusive)
        except AlreadyExists:
            # A request that landed but whose answer was lost is sent again by the SDK and then meets its own
            # file; the same bytes already in place mean this create did happen.
            if self._holds(path, data):
                log.debug(
                    "fractfs: exclusive put of %s found identical bytes in place; treating as done", path
                )
                return
            raise

    def put_file(self, key: str, path: Path) -> None:
        target = self._path(key)
        size = os.stat(path).st_size
        if size > self.max_object_size:
            raise self._too_large(key, target, size, str(path))
        opened: list[BinaryIO] = []

        def body() -> BinaryIO:
            # A fresh handle per attempt: the SDK rewinds seekable bodies on its retries, we reopen on ours.
            for f in opened:
                f.close()
            opened.clear()
            f = open(path, "rb")  # noqa: SIM115 - closed below, after the upload returns
            opened.append(f)
            return f

        try:
            # The size check afterwards catches a retry inside an older SDK that re-sent the consumed stream as
            # an empty body (databricks-sdk-py#796); one HEAD is cheap next to a large upload.
            for _ in range(2):
                self._upload(target, body, overwrite=True)
                stored = self._size(target)
                if stored == size:
                    return
                log.warning(
                    "fractfs: %s holds %s bytes after uploading %s bytes from %s; uploading again",
                    target,
                    stored,
                    size,
                    path,
                )
            raise StoreError(f"put_file {target}: the store kept {stored} of {size} bytes sent from {path}")
        finally:
            for f in opened:
                f.close()

    def _upload(self, path: str, body: Callable[[], bytes | BinaryIO], *, overwrite: bool) -> None:
        parent = path.rsplit("/", 1)[0]

        def send() -> None:
            try:
                self._files.upload(path, body(), overwrite=overwrite)
            except self._sdk.errors.NotFound:
                # The upload may want its directory to exist first (mkdir -p is idempotent); then try once more.
                self._files.create_directory(parent)
                self._files.upload(path, body(), overwrite=overwrite)

        try:
            self._retrying("upload", path, send)
        except StoreError as err:
            if not overwrite and isinstance(err.__cause__, self._sdk.errors.ResourceConflict):
                raise AlreadyExists(
                    f"{path} already exists (exclusive create refused: HTTP 409)"
                ) from err.__cause__
            raise

    def _holds(self, path: str, data: bytes) -> bool:
        try:
            return self._download(path) == data
        except StoreError:
            return False

    def get(self, key: str) -> bytes:
        return self._download(self._path(key))

    def _download(self, path: str) -> bytes:
        def fetch() -> bytes:
            resp = self._files.download(path)
            return _read_all(resp.contents, resp.content_length, path)

        return self._retrying("download", path, fetch)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        path = self._path(key)
        if start < 0 or length < 0:
            raise ValueError(f"get_range {path}: start and length must be >= 0 (got {start}, {length})")
        if length == 0:
            return b""

        def fetch() -> bytes:
            resp = self._api.do(
                "GET",
                _FILES + urllib.parse.quote(path),
                headers=self._headers(
                    {"Accept": "application/octet-stream", "Range": f"bytes={start}-{start + length - 1}"}
                ),
                raw=True,
                response_headers=["content-length", "content-range"],
            )
            length_hdr = resp.get("content-length")
            data = _read_all(resp["contents"], int(length_hdr) if length_hdr else None, path)
            if resp.get("content-range"):
                return data
            # No Content-Range: the server sent the whole object instead of the range.
            return data[start : start + length]

        try:
            return self._retrying("download", path, fetch)
        except StoreNotFound:
            raise
        except StoreError as err:
            # A range starting at or past the end is refused (416, which the SDK maps to no specific class);
            # reading past the end yields nothing, as from a file. Anything recognisable is a real failure.
            cause = err.__cause__
            if not isinstance(cause, self._sdk.errors.DatabricksError) or self._status(cause) not in (
                None,
                400,
            ):
                raise
            size = self._size(path)
            if size is None:
                raise StoreNotFound(f"{path}: not found (download answered 404)") from None
            if start >= size:
                return b""
            raise

    def get_file(self, key: str, path: Path) -> None:
        src = self._path(key)
        path = Path(path)

        def local(op: Callable[[], T]) -> T:
            # Errors of the local disk (full, read-only, missing directory) are the caller's, not the store's:
            # they pass through unchanged and are never retried.
            try:
                return op()
            except OSError as exc:
                raise _LocalSide(exc) from exc

        def fetch() -> None:
            resp = self._files.download(src)
            expected = resp.content_length
            fd, tmp = local(
                lambda: tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
            )
            try:
                written = 0
                with os.fdopen(fd, "wb") as out:
                    try:
                        while True:
                            chunk = resp.contents.read(1 << 20)
                            if not chunk:
                                break
                            local(functools.partial(out.write, chunk))
                            written += len(chunk)
                    finally:
                        resp.contents.close()
                    if expected is not None and written != int(expected):
                        raise _Truncated(f"{src}: got {written} of {expected} bytes")
                    local(out.flush)
                    local(lambda: os.fsync(out.fileno()))
                # Only a complete copy ever appears under the final name.
                local(lambda: os.replace(tmp, path))
            except BaseException:
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass
                raise

        try:
            self._retrying("download", src, fetch)
        except _LocalSide as e:
            raise e.exc from None

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        check_prefix(prefix)
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        level = [base]
        with concurrent.futures.ThreadPoolExecutor(self.transfers, thread_name_prefix="fractfs-list") as pool:
            while level:
                below: list[str] = []
                # Directories of one level are listed side by side: a tree of pack shards is wide and shallow.
                for entries in pool.map(self._list_dir, level):
                    for rel, is_dir, size in entries:
                        if is_dir:
                            if rel.startswith(prefix) or prefix.startswith(rel + "/"):
                                below.append(rel)
                        elif rel.startswith(prefix):
                            yield rel, size
                level = below

    def _list_dir(self, rel: str) -> builtins.list[tuple[str, bool, int]]:
        """Immediate children of the directory ``rel`` (relative to root); a missing directory has none."""
        path = f"{self.root}/{rel}" if rel else self.root

        def fetch() -> list[tuple[str, bool, int]]:
            out = []
            # The SDK follows next_page_token until the server stops sending one; a short or empty page alone
            # does not end a listing.
            for entry in self._files.list_directory_contents(path):
                name = entry.name or (entry.path or "").rstrip("/").rsplit("/", 1)[-1]
                if not name:
                    continue
                child = f"{rel}/{name}" if rel else name
                out.append((child, bool(entry.is_directory), int(entry.file_size or 0)))
            return out

        try:
            return self._retrying("list", path, fetch)
        except StoreNotFound:
            return []

    def size(self, key: str) -> int | None:
        return self._size(self._path(key))

    def _size(self, path: str) -> int | None:
        try:
            meta = self._retrying("get_metadata", path, lambda: self._files.get_metadata(path))
        except StoreNotFound:
            return None
        if meta.content_length is None:
            raise StoreError(f"get_metadata {path}: the answer carried no Content-Length")
        return int(meta.content_length)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            self._retrying("delete", path, lambda: self._files.delete(path))
        except StoreNotFound:
            pass

    # ---- parallel transfers ------------------------------------------------------------------------------
    # Requests share the client's connection pool (20 connections for https in the SDK), so more threads than
    # ``transfers`` would only queue on it; ``workers`` can lower the bound, not raise it.
    def put_many(
        self, items: Sequence[tuple[str, bytes]], *, workers: int = 32, exclusive: bool = False
    ) -> None:
        """``put`` every (key, data) pair, up to ``min(workers, transfers)`` at a time; the first failure is raised
        once the transfers already running have finished, and the ones not started are dropped."""

        def one(item: tuple[str, bytes]) -> None:
            self.put(item[0], item[1], exclusive=exclusive)

        parallel_map(one, items, min(workers, self.transfers))

    def get_many(self, keys: Sequence[str], *, workers: int = 32) -> builtins.list[bytes]:
        """``get`` every key, results in the order of ``keys``; the first failure (e.g. StoreNotFound) is raised."""
        return parallel_map(self.get, keys, min(workers, self.transfers))


class _Truncated(Exception):
    """A download ended before the length the server announced."""


class _LocalSide(Exception):
    """Carries an OSError of the local filesystem past the store's error mapping."""

    def __init__(self, exc: OSError) -> None:
        super().__init__(str(exc))
        self.exc = exc


def _read_all(stream: Any, expected: int | None, path: str) -> bytes:
    try:
        data: bytes = stream.read()
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    if expected is not None and len(data) != int(expected):
        raise _Truncated(f"{path}: got {len(data)} of {expected} bytes")
    return data
