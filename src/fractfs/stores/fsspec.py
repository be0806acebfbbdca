"""Store on any fsspec URL (``s3://bucket/prefix``, ``gs://``, ``memory://`` ...), tuned for S3.

Retries live here, not in s3fs/botocore: both of those retry on their own (5 attempts each, nested,
without jitter, and botocore's do not cover every 5xx), which turns one unreachable endpoint into
minutes of waiting. We switch theirs off and retry transient failures once, with bounded exponential
backoff and jitter; 404/403/412 and other definite answers are never retried.

For asynchronous filesystems (s3fs) every operation runs as a coroutine on fsspec's I/O loop, so the
batch methods (:meth:`FsspecStore.put_many`, :meth:`FsspecStore.get_many`) keep many requests in flight
from a single thread instead of funnelling a thread pool through that loop.
"""
from __future__ import annotations

import asyncio
import builtins
import errno
import inspect
import logging
import os
import socket
import threading
import weakref
from collections.abc import Awaitable, Iterator, Sequence
from pathlib import Path
from typing import Any, Callable, TypeVar

from ..errors import AlreadyExists, ObjectTooLarge, StoreError, StoreFull, StoreNotFound
from ._s3fast import Credentials, FastS3, RangeClient, _env_proxy, target_from_request
from .base import check_key, check_prefix
from .transfer import DEFAULT_ATTEMPTS, aretry, parallel_map, retry

log = logging.getLogger("fractfs")

T = TypeVar("T")

#: Ranged reads of this size stream big objects to disk with bounded memory.
CHUNK = 8 * 1024 * 1024
#: Ranged reads at least this long go through the blocking client (_s3fast.RangeClient) on S3.
RANGE_CLIENT_MIN = 1024 * 1024

_S3_PROTOCOLS = ("s3", "s3a")
_THROTTLE_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "RequestThrottled", "TooManyRequestsException",
    "RequestLimitExceeded", "ProvisionedThroughputExceededException", "BandwidthLimitExceeded",
    "RequestTimeout", "RequestTimeoutException", "InternalError", "ServiceUnavailable",
}
# Matched by class name anywhere in an exception's MRO, so botocore/aiohttp need not be importable here.
_TRANSIENT_CLASS_NAMES = {
    "ConnectionError",          # builtin (refused/reset/aborted) and botocore's (endpoint unreachable)
    "TimeoutError", "timeout", "FSTimeoutError", "ReadTimeoutError", "ConnectTimeoutError",
    "HTTPClientError", "ResponseParserError", "IncompleteReadError", "IncompleteRead",
    "ClientPayloadError", "ServerDisconnectedError", "ClientConnectionError", "ClientOSError",
}
_DEFINITE = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError,
             ValueError, TypeError, StoreNotFound, AlreadyExists)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its causes/contexts: s3fs re-raises botocore errors as OSError ``from`` the original."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen and len(seen) < 10:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _response(exc: BaseException) -> tuple[str, int, str] | None:
    """(error code, HTTP status, message) of the first botocore ClientError in the chain, if any."""
    for e in _chain(exc):
        resp = getattr(e, "response", None)
        if isinstance(resp, dict) and isinstance(resp.get("Error"), dict):
            err = resp["Error"]
            status = resp.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            code = str(err.get("Code") or status)
            try:
                status = int(status) or int(code)
            except ValueError:
                status = 0
            return code, status, str(err.get("Message") or "")
    return None


def is_transient(exc: BaseException) -> bool:
    """True for failures worth retrying: connection problems, timeouts, throttling, 5xx."""
    resp = _response(exc)
    if resp is not None:
        code, status, _ = resp
        return status >= 500 or status == 429 or code in _THROTTLE_CODES
    for e in _chain(exc):
        if isinstance(e, _DEFINITE):
            return False
        if isinstance(e, (asyncio.TimeoutError, socket.timeout)):
            return True
        if any(c.__name__ in _TRANSIENT_CLASS_NAMES for c in type(e).__mro__):
            return True
        if isinstance(e, OSError) and e.errno in (errno.ECONNRESET, errno.ECONNREFUSED, errno.ETIMEDOUT,
                                                  errno.EPIPE, errno.ECONNABORTED, errno.EBUSY):
            return True
    return False


class FsspecStore:
    """Objects under an fsspec URL; keys are appended to it with '/'."""

    def __init__(self, url: str, *, storage_options: dict[str, Any] | None = None,
                 attempts: int = DEFAULT_ATTEMPTS, fast_path: bool = True) -> None:
        try:
            import fsspec
            from fsspec.asyn import AsyncFileSystem
        except ImportError as exc:
            raise StoreError(f"{url}: fsspec is not installed; install fractfs[s3]") from exc
        protocol, _ = fsspec.core.split_protocol(url)
        if not protocol:
            raise ValueError(f"FsspecStore needs a URL with a protocol (s3://...), got {url!r}")
        try:
            cls = fsspec.get_filesystem_class(protocol)
        except (ImportError, ValueError) as exc:
            extra = "install fractfs[s3]" if protocol in _S3_PROTOCOLS else f"install the fsspec backend for {protocol}://"
            raise StoreError(f"{url}: no filesystem for {protocol}:// ({exc}); {extra}") from exc

        self.url = url.rstrip("/")
        self.attempts = attempts
        self._is_s3 = protocol in _S3_PROTOCOLS
        opts = dict(storage_options or {})
        if self._is_s3:
            opts = _s3_options(opts)
        # A private instance: we change its retry settings, and fsspec's instance cache would share them
        # (and its listing cache) with unrelated code in the same process.
        opts["skip_instance_cache"] = True
        try:
            self.fs: Any = cls(**opts)
        except Exception as exc:
            raise StoreError(f"{url}: cannot set up {protocol}:// filesystem: {exc}") from exc
        if self._is_s3:
            self.fs.retries = 1  # we retry (see module docstring)
        self._root = str(cls._strip_protocol(url)).rstrip("/")
        self._async = isinstance(self.fs, AsyncFileSystem) and bool(getattr(self.fs, "async_impl", False))
        self._bucket, _, self._key_prefix = self._root.partition("/")
        self._pool_size = int(opts.get("config_kwargs", {}).get("max_pool_connections", 10))
        self._endpoint = str(opts.get("endpoint_url") or opts.get("client_kwargs", {}).get("endpoint_url") or "")
        # s3fs >= 2024 fetches whole objects with a HEAD first (to split big ones into parallel ranges);
        # our objects are packs of bounded size, so one plain GET is cheaper.
        self._cat_kw: dict[str, Any] = {}
        cat = getattr(self.fs, "_cat_file", None)
        if self._is_s3 and cat is not None and "max_concurrency" in inspect.signature(cat).parameters:
            self._cat_kw = {"max_concurrency": 1}
        # The lean S3 client (see _s3fast) for PUT/GET; decided lazily, on the first request.
        self._fast_wanted = self._is_s3 and self._async and fast_path and _fast_path_possible(opts)
        self._fast: FastS3 | None = None
        self._fast_pid = 0
        self._fast_lock: asyncio.Lock | None = None
        self._fast_finalizer: Callable[[], Any] | None = None
        #: Blocking ranged GETs (see _s3fast.RangeClient), made from the fast path's target when first needed.
        self._ranges: RangeClient | None = None
        self._ranges_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FsspecStore({self.url!r})"

    # -- plumbing -------------------------------------------------------------------------------------
    def _path(self, key: str) -> str:
        return self._root + "/" + check_key(key)

    def _where(self, key: str) -> str:
        where = f"{self.url}/{key}" if key else self.url
        return f"{where} (endpoint {self._endpoint})" if self._endpoint else where

    def _translate(self, exc: BaseException, action: str, key: str) -> BaseException:
        """Map a backend exception to fractfs's StoreError family (our own errors pass through)."""
        if isinstance(exc, (StoreError, ValueError)):
            return exc
        where = self._where(key)
        resp = _response(exc)
        err: StoreError
        if resp is not None:
            code, status, message = resp
            if code == "NoSuchBucket":
                err = StoreError(f"cannot {action} {where}: bucket {self._bucket!r} does not exist")
            elif code in ("NoSuchKey", "NotFound") or status == 404:
                err = StoreNotFound(f"{key} not found in {self.url}")
            elif code == "PreconditionFailed" or status == 412:
                err = AlreadyExists(f"{key} already exists in {self.url}")
            elif code == "EntityTooLarge" or status == 413:
                err = ObjectTooLarge(f"cannot {action} {where}: the store refuses an object this large ({code}: "
                                     f"{message})", key=key)
            elif code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch") or status == 403:
                err = StoreError(f"cannot {action} {where}: access denied ({code}: {message}); "
                                 "check the credentials and the bucket policy")
            else:
                err = StoreError(f"cannot {action} {where}: {code} (HTTP {status}): {message}")
        elif isinstance(exc, FileExistsError):
            err = AlreadyExists(f"{key} already exists in {self.url}")
        elif isinstance(exc, (FileNotFoundError, IsADirectoryError)):
            err = StoreNotFound(f"{key} not found in {self.url}")
        elif isinstance(exc, PermissionError):
            err = StoreError(f"cannot {action} {where}: permission denied ({exc})")
        elif isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            err = StoreFull(f"cannot {action} {where}: no space left on the store ({exc}); free space there",
                            key=key)
        elif isinstance(exc, OSError) and exc.errno == errno.EFBIG:
            err = ObjectTooLarge(f"cannot {action} {where}: the store refuses a file this large ({exc})", key=key)
        elif is_transient(exc):
            err = StoreError(f"cannot {action} {where}: store unreachable or failing "
                             f"({type(exc).__name__}: {exc}); gave up after {self.attempts} attempts")
        else:
            err = StoreError(f"cannot {action} {where}: {type(exc).__name__}: {exc}")
        err.__cause__ = exc
        return err

    async def _acall(self, method: str, *args: Any, action: str, key: str, **kw: Any) -> Any:
        """``await fs._<method>(*args)`` with retries and error translation (async filesystems)."""
        fn = getattr(self.fs, "_" + method)

        async def once() -> Any:
            return await fn(*args, **kw)

        try:
            return await aretry(once, is_transient=is_transient, attempts=self.attempts,
                                what=f"{action} {self._where(key)}")
        except Exception as exc:
            raise self._translate(exc, action, key) from exc

    def _call(self, method: str, *args: Any, action: str, key: str, **kw: Any) -> Any:
        """Blocking ``fs.<method>(*args)`` with retries and error translation."""
        if self._async:
            from fsspec.asyn import sync

            return sync(self.fs.loop, self._acall, method, *args, action=action, key=key, **kw)
        fn = getattr(self.fs, method)
        try:
            return retry(lambda: fn(*args, **kw), is_transient=is_transient, attempts=self.attempts,
                         what=f"{action} {self._where(key)}")
        except Exception as exc:
            raise self._translate(exc, action, key) from exc

    def _run(self, coro_fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        from fsspec.asyn import sync

        result: T = sync(self.fs.loop, coro_fn, *args)
        return result

    # -- the lean S3 client (fast path) ------------------------------------------------------------------
    def _object_key(self, key: str) -> str:
        """The S3 object key (inside the bucket) of store key ``key``."""
        return f"{self._key_prefix}/{key}" if self._key_prefix else key

    async def _fast_client(self) -> FastS3 | None:
        if not self._fast_wanted:
            return None
        if self._fast is not None and self._fast_pid == os.getpid():
            return self._fast
        if self._fast_lock is None or self._fast_pid != os.getpid():
            self._fast_lock, self._fast_pid = asyncio.Lock(), os.getpid()
        async with self._fast_lock:  # many requests start at once: discover the endpoint only once
            if self._fast is None and self._fast_wanted:
                await self._discover_fast()
        return self._fast

    async def _discover_fast(self) -> None:
        # Ask botocore where a request for an object of this bucket goes and how it is signed, by
        # watching one real (HEAD) request; a 404 or even an unreachable endpoint still tells us.
        s3 = await self.fs.set_session()
        probe = self._object_key(".fractfs-endpoint-probe")
        seen: dict[str, Any] = {}

        def capture(request: Any, **_: Any) -> None:
            seen.setdefault("url", request.url)
            seen.setdefault("headers", dict(request.headers.items()))

        event = "before-send.s3.HeadObject"
        s3.meta.events.register(event, capture)
        try:
            await s3.head_object(Bucket=self._bucket, Key=probe)
        except Exception:  # noqa: BLE001, S110 - only the request botocore built matters, not the answer
            pass
        finally:
            s3.meta.events.unregister(event, capture)
        signer_creds = getattr(getattr(s3, "_request_signer", None), "_credentials", None)
        target = None
        if seen and signer_creds is not None:
            headers = {str(k): v.decode() if isinstance(v, bytes) else str(v) for k, v in seen["headers"].items()}
            auth = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
            target = target_from_request(str(seen["url"]), auth, headers, probe)
        if target is None:
            if seen:  # botocore did something we do not reproduce (SSE-C, anonymous, sigv2 ...)
                log.info("fractfs: %s: using botocore for every request (request shape not supported "
                         "by the fast path)", self.url)
                self._fast_wanted = False
            return

        creds_source: Any = signer_creds

        async def credentials() -> Credentials:
            frozen = creds_source.get_frozen_credentials()
            if inspect.isawaitable(frozen):
                frozen = await frozen
            return Credentials(frozen.access_key, frozen.secret_key, frozen.token)

        fast = FastS3(target, credentials,
                      connect_timeout=float(getattr(self.fs, "connect_timeout", 5) or 5),
                      read_timeout=float(getattr(self.fs, "read_timeout", 15) or 15) * 2,
                      max_connections=int(self._pool_size))
        self._fast = fast
        self._fast_finalizer = weakref.finalize(self, _close_fast, self.fs.loop, fast)
        log.debug("fractfs: %s: fast S3 path on (%s, region %s)", self.url, target.base_url, target.region)

    def _fast_refused(self, exc: BaseException) -> bool:
        """Did the server refuse a fast request in a way botocore would have handled (redirect, region,
        signature)? Then switch the fast path off and let botocore do this and every later request."""
        resp = _response(exc)
        if resp is None:
            return False
        code, status, message = resp
        if status in (301, 307, 400, 403) or code in _FAST_REFUSALS:
            log.warning("fractfs: %s: fast S3 path refused (%s, HTTP %s: %s); continuing with botocore",
                        self.url, code, status, message)
            self._fast_wanted = False
            self._fast = None
            return True
        return False

    async def _via_fast(self, fast_op: Callable[[FastS3], Awaitable[T]], slow_op: Callable[[], Awaitable[T]],
                        action: str, key: str) -> T:
        fast = await self._fast_client()
        if fast is not None:
            try:
                return await aretry(lambda: fast_op(fast), is_transient=is_transient, attempts=self.attempts,
                                    what=f"{action} {self._where(key)}")
            except Exception as exc:
                if not self._fast_refused(exc):
                    raise self._translate(exc, action, key) from exc
        return await slow_op()

    def close(self) -> None:
        """Release the fast path's connections (also done automatically when the store is collected)."""
        if self._fast_finalizer is not None:
            self._fast_finalizer()
        self._fast = None
        self._ranges = None  # its per-thread connections close with their threads

    # -- Store protocol -------------------------------------------------------------------------------
    def put(self, key: str, data: bytes, *, exclusive: bool = False) -> None:
        path = self._path(key)
        if self._async:
            self._run(self._aput, key, path, data, exclusive)
            return
        # No conditional create in the generic fsspec API: check-then-write is racy between two
        # writers, which is acceptable only because callers verify what they read back.
        if exclusive and self._call("exists", path, action="check", key=key):
            raise AlreadyExists(f"{key} already exists in {self.url}")
        self._call("pipe_file", path, data, action="write", key=key)

    async def _aput(self, key: str, path: str, data: bytes, exclusive: bool) -> None:
        if self._is_s3:
            # exclusive → conditional PUT (If-None-Match: *): the server refuses atomically if the key
            # exists (AWS since 2024, SeaweedFS, MinIO); the refusal (412) becomes AlreadyExists. If a
            # response is lost and the retry meets our own first write, the caller sees AlreadyExists
            # too; callers that care read the object back (manifests are checksummed anyway).
            match = {"IfNoneMatch": "*"} if exclusive else {}
            await self._via_fast(
                lambda fast: fast.put(self._object_key(key), data, if_none_match=exclusive),
                lambda: self._acall("pipe_file", path, data, action="write", key=key, **match),
                "write", key)
            return
        if exclusive and await self._acall("exists", path, action="check", key=key):
            raise AlreadyExists(f"{key} already exists in {self.url}")
        await self._acall("pipe_file", path, data, action="write", key=key)

    def put_file(self, key: str, path: Path) -> None:
        rpath = self._path(key)
        lpath = os.fspath(path)
        # Fail on the local side first, as a plain OSError: a missing source is not a store problem.
        with open(lpath, "rb"):
            pass
        self._call("put_file", lpath, rpath, action="upload to", key=key)

    def get(self, key: str) -> bytes:
        if self._async:
            return self._run(self._aget, key)
        data: bytes = self._call("cat_file", self._path(key), action="read", key=key)
        return data

    async def _aget(self, key: str) -> bytes:
        path = self._path(key)
        if self._is_s3:
            return await self._via_fast(
                lambda fast: fast.get(self._object_key(key)),
                lambda: self._acall("cat_file", path, action="read", key=key, **self._cat_kw),
                "read", key)
        data: bytes = await self._acall("cat_file", path, action="read", key=key)
        return data

    async def _aget_range(self, key: str, start: int, end: int) -> bytes:
        path = self._path(key)
        try:
            if self._is_s3:
                return await self._via_fast(
                    lambda fast: fast.get(self._object_key(key), start, end),
                    lambda: self._acall("cat_file", path, start=start, end=end, action="read", key=key),
                    "read", key)
            data: bytes = await self._acall("cat_file", path, start=start, end=end, action="read", key=key)
            return data
        except StoreError as exc:
            resp = _response(exc)
            if resp is not None and (resp[0] == "InvalidRange" or resp[1] == 416):
                return b""  # range starts past the end: same answer as a short POSIX read
            raise

    def _range_client(self) -> RangeClient | None:
        """The blocking ranged-GET client, or None (not S3, fast path off or refused, or a proxy to go through)."""
        if not self._fast_wanted:
            return None
        ranges = self._ranges
        if ranges is not None and self._fast is not None:
            return ranges
        with self._ranges_lock:
            fast = self._run(self._fast_client)  # finds the endpoint and signing region once
            if fast is None or _env_proxy(fast.target.base_url) is not None:
                return None
            if self._ranges is None or self._ranges.target != fast.target:
                def credentials() -> Credentials:
                    return self._run(fast._credentials)

                read_timeout = float(getattr(self.fs, "read_timeout", 15) or 15) * 2
                self._ranges = RangeClient(fast.target, credentials, timeout=read_timeout)
            return self._ranges

    def _get_range_blocking(self, ranges: RangeClient, key: str, start: int, end: int) -> bytes | None:
        """Bytes ``[start, end)`` through ``ranges``; None when the server refused the fast path (the caller
        then asks botocore, as for every later request)."""
        try:
            return retry(lambda: ranges.get(self._object_key(key), start, end), is_transient=is_transient,
                         attempts=self.attempts, what=f"read {self._where(key)}")
        except Exception as exc:
            if self._fast_refused(exc):
                self._ranges = None
                return None
            raise self._translate(exc, "read", key) from exc

    def _get_range(self, key: str, start: int, end: int) -> bytes:
        if self._async:
            # Large ranges (restore's runs of chunks, objects fetched in pieces) in this thread, on
            # http.client: see _s3fast.RangeClient. Small ones are not worth a connection per thread.
            ranges = self._range_client() if end - start >= RANGE_CLIENT_MIN else None
            if ranges is not None:
                got = self._get_range_blocking(ranges, key, start, end)
                if got is not None:
                    return got
            return self._run(self._aget_range, key, start, end)
        try:
            data: bytes = self._call("cat_file", self._path(key), start=start, end=end, action="read", key=key)
        except StoreError as exc:
            resp = _response(exc)
            if resp is not None and (resp[0] == "InvalidRange" or resp[1] == 416):
                return b""
            raise
        return data

    def get_range(self, key: str, start: int, length: int) -> bytes:
        if start < 0 or length < 0:
            raise ValueError(f"get_range({key!r}, {start}, {length}): start and length must be >= 0")
        check_key(key)
        if length == 0:
            if self.size(key) is None:
                raise StoreNotFound(f"{key} not found in {self.url}")
            return b""
        return self._get_range(key, start, start + length)

    def get_file(self, key: str, path: Path) -> None:
        check_key(key)
        total = self.size(key)
        if total is None:
            raise StoreNotFound(f"{key} not found in {self.url}")
        # Ranged reads in bounded chunks: each chunk is retried on its own, memory stays bounded, and
        # errors writing the local file stay plain OSErrors (the caller's disk, not the store).
        with open(os.fspath(path), "wb") as out:
            for off in range(0, total, CHUNK):
                end = min(off + CHUNK, total)
                chunk = self._get_range(key, off, end)
                if len(chunk) != end - off:
                    raise StoreError(f"cannot read {self._where(key)}: object changed while downloading "
                                     f"(got {len(chunk)} bytes at offset {off}, expected {end - off})")
                out.write(chunk)

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        prefix = check_prefix(prefix)
        if self._is_s3:
            return iter(self._run(self._alist_s3, prefix))
        return iter(self._list_generic(prefix))

    async def _alist_s3(self, prefix: str) -> builtins.list[tuple[str, int]]:
        # list_objects_v2 directly: no directory emulation, no listing cache, one request per 1000 keys.
        base = self._key_prefix + "/" if self._key_prefix else ""
        out: list[tuple[str, int]] = []
        token: str | None = None
        while True:
            kw: dict[str, Any] = {"Bucket": self._bucket, "Prefix": base + prefix}
            if token:
                kw["ContinuationToken"] = token
            page = await self._acall("call_s3", "list_objects_v2", action="list", key=prefix, **kw)
            for obj in page.get("Contents", ()):
                k = obj["Key"][len(base):]
                if k and not k.endswith("/"):  # "directory" placeholder objects are not ours
                    out.append((k, int(obj["Size"])))
            if not page.get("IsTruncated"):
                return out
            token = page.get("NextContinuationToken")
            if not token:
                return out

    def _list_generic(self, prefix: str) -> builtins.list[tuple[str, int]]:
        base_rel = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self._root + ("/" + base_rel if base_rel else "")
        self.fs.invalidate_cache(base)
        try:
            found = self._call("find", base, detail=True, withdirs=False, action="list", key=prefix)
        except StoreNotFound:
            return []
        out: list[tuple[str, int]] = []
        root = self._root + "/"
        for p, info in found.items():
            p = str(p)
            if info.get("type", "file") != "file" or not p.startswith(root):
                continue
            k = p[len(root):]
            if k.startswith(prefix):
                out.append((k, int(info.get("size") or 0)))
        return out

    def size(self, key: str) -> int | None:
        path = self._path(key)
        try:
            if self._is_s3:
                head = self._call("call_s3", "head_object", Bucket=self._bucket,
                                  Key=path[len(self._bucket) + 1:], action="stat", key=key)
                return int(head["ContentLength"])
            info = self._call("info", path, action="stat", key=key)
        except StoreNotFound:
            return None
        if info.get("type", "file") != "file":
            return None
        return int(info.get("size") or 0)

    def delete(self, key: str) -> None:
        try:
            self._call("rm_file", self._path(key), action="delete", key=key)
        except StoreNotFound:
            pass

    # -- optional batch fast paths (BatchStore) ------------------------------------------------------
    def put_many(self, items: Sequence[tuple[str, bytes]], *, workers: int = 32) -> None:
        if not self._async:
            parallel_map(lambda kv: self.put(kv[0], kv[1]), items, workers)
            return
        checked = [(k, self._path(k), d) for k, d in items]  # bad keys fail before any upload
        self._run(self._abatch, [
            (lambda k=k, p=p, d=d: self._aput(k, p, d, False)) for k, p, d in checked
        ], workers)

    def get_many(self, keys: Sequence[str], *, workers: int = 32) -> builtins.list[bytes]:
        if not self._async:
            return parallel_map(self.get, keys, workers)
        for k in keys:
            check_key(k)
        result: list[bytes] = self._run(self._abatch, [
            (lambda k=k: self._aget(k)) for k in keys
        ], workers)
        return result

    @staticmethod
    async def _abatch(factories: Sequence[Callable[[], Awaitable[Any]]], workers: int) -> builtins.list[Any]:
        """Run coroutine factories, ``workers`` at a time, results in order; the first failure cancels
        the rest and is raised."""
        sem = asyncio.Semaphore(max(1, workers))

        async def one(f: Callable[[], Awaitable[Any]]) -> Any:
            async with sem:
                return await f()

        tasks = [asyncio.ensure_future(one(f)) for f in factories]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise


# Answers to a fast request that mean "botocore would have done this differently".
_FAST_REFUSALS = {"AuthorizationHeaderMalformed", "SignatureDoesNotMatch", "PermanentRedirect",
                  "TemporaryRedirect", "InvalidRequest", "IllegalLocationConstraintException",
                  "XAmzContentSHA256Mismatch", "AccessDenied", "InvalidAccessKeyId", "InvalidToken",
                  "ExpiredToken", "MissingSecurityHeader"}


def _fast_path_possible(opts: dict[str, Any]) -> bool:
    """The fast path reproduces plain signed requests only; options that change what botocore sends
    (anonymous access, requester-pays, SSE settings, object versions, client TLS settings) keep every
    request on botocore."""
    if opts.get("anon") or opts.get("requester_pays") or opts.get("s3_additional_kwargs"):
        return False
    if opts.get("version_aware") or opts.get("session") is not None:
        return False
    client_kwargs = opts.get("client_kwargs") or {}
    return set(client_kwargs) <= {"endpoint_url", "region_name"}


def _close_fast(loop: Any, fast: FastS3) -> None:
    """Close the fast path's aiohttp session on fsspec's loop (from a finalizer: never raise, never hang)."""
    try:
        if loop is not None and loop.is_running() and not loop.is_closed():
            asyncio.run_coroutine_threadsafe(fast.close(), loop).result(timeout=2)
    except Exception:  # noqa: BLE001, S110 - best effort at shutdown
        pass


def _s3_options(opts: dict[str, Any]) -> dict[str, Any]:
    """Defaults for s3fs: endpoint from the standard AWS variables, a connection pool big enough for
    our concurrency, and no retries below ours."""
    client_kwargs = dict(opts.get("client_kwargs") or {})
    ignore = os.environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() in ("1", "true", "yes")
    if not ignore and "endpoint_url" not in opts and "endpoint_url" not in client_kwargs:
        # Recent botocore reads these itself; older releases (still allowed by our s3fs floor) do not.
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            opts["endpoint_url"] = endpoint
    config = dict(opts.get("config_kwargs") or {})
    # botocore's default pool is 10 connections: with 32 requests in flight the rest would queue.
    config.setdefault("max_pool_connections", 64)
    config.setdefault("retries", {"total_max_attempts": 1})
    opts["config_kwargs"] = config
    opts.setdefault("use_listings_cache", False)
    return opts
