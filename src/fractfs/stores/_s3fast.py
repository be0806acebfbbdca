"""A lean S3 client for the hot path: whole-object PUT and (ranged) GET, SigV4-signed, on aiohttp; and
blocking ranged GETs on http.client for threads that read large ranges (:class:`RangeClient`).

Why: botocore spends ~1.5-2 ms of CPU per request (event hooks, endpoint rules, user-agent assembly,
response parsing). A checkpoint of thousands of small objects is bound by that, not by the network:
measured here, 2000 x 4 KiB PUTs took ~5.5 s through s3fs/botocore and ~2.9 s with this client (s5cmd,
in Go: ~2.6 s). Everything else (listing, HEAD, DELETE, multipart uploads) stays on s3fs.

Safety: this client never decides *where* to send a request or with which region. FsspecStore makes one
request through botocore first and copies the URL and signing region botocore chose (virtual-hosted or
path style, regional endpoint, custom endpoint), see :func:`target_from_request`. If the server rejects
a fast request in a way botocore would have handled (redirect, region or signature trouble), the store
switches this client off and carries on with botocore.
"""
from __future__ import annotations

import datetime
import hashlib
import hmac
import http.client
import os
import ssl
import threading
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple
from xml.etree import ElementTree

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_ALGO = "AWS4-HMAC-SHA256"
# Headers botocore may add that this client does not reproduce; seeing one means "not for us".
_KNOWN_AMZ_HEADERS = {"x-amz-date", "x-amz-content-sha256", "x-amz-security-token", "x-amz-user-agent"}


class Credentials(NamedTuple):
    access_key: str
    secret_key: str
    token: str | None


class S3Error(Exception):
    """An S3 error response, shaped like botocore's ClientError (``.response``) so that the store's
    classification (transient? not found? precondition?) treats both alike."""

    def __init__(self, op: str, status: int, code: str, message: str) -> None:
        super().__init__(f"{op}: {code} (HTTP {status}): {message}")
        self.response: dict[str, Any] = {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status},
        }
        self.status = status
        self.code = code


@dataclass(frozen=True)
class Target:
    """Where objects of one bucket live, as botocore resolved it."""

    base_url: str  #: URL prefix to which the percent-encoded object key is appended (ends with '/')
    region: str    #: SigV4 signing region


def quote_key(key: str) -> str:
    """S3's URI encoding of an object key: everything but unreserved characters and '/'."""
    return urllib.parse.quote(key, safe="/~")


def target_from_request(url: str, authorization: str, headers: Mapping[str, str], key: str) -> Target | None:
    """Derive a :class:`Target` from a request botocore prepared for object ``key``, or None when that
    request used something this client does not do (another signature scheme or service, extra
    x-amz-* headers such as SSE-C or requester-pays)."""
    enc = quote_key(key)
    path = urllib.parse.urlsplit(url).path
    if not path.endswith("/" + enc) or "?" in url:
        return None
    try:
        algo, rest = authorization.split(" ", 1)
        fields = dict(p.strip().split("=", 1) for p in rest.split(","))
        _ak, _day, region, service, term = fields["Credential"].split("/")
    except (KeyError, ValueError):
        return None
    if algo != _ALGO or service != "s3" or term != "aws4_request":
        return None
    for name in headers:
        low = name.lower()
        if low.startswith("x-amz-") and low not in _KNOWN_AMZ_HEADERS:
            return None
    return Target(base_url=url[: len(url) - len(enc)], region=region)


class Signer:
    """SigV4 for S3 requests; signing keys are cached per (secret, day, region)."""

    def __init__(self, region: str) -> None:
        self.region = region
        self._keys: dict[tuple[str, str], bytes] = {}

    def _key(self, secret: str, day: str) -> bytes:
        k = self._keys.get((secret, day))
        if k is None:
            k = hmac.new(("AWS4" + secret).encode(), day.encode(), hashlib.sha256).digest()
            for part in (self.region, "s3", "aws4_request"):
                k = hmac.new(k, part.encode(), hashlib.sha256).digest()
            if len(self._keys) > 8:
                self._keys.clear()
            self._keys[(secret, day)] = k
        return k

    def sign(self, method: str, url: str, creds: Credentials, payload_sha256: str,
             now: datetime.datetime | None = None) -> dict[str, str]:
        """Headers (Host, X-Amz-Date, X-Amz-Content-Sha256, [X-Amz-Security-Token], Authorization)
        that authenticate ``method url``. ``url`` must already be percent-encoded; it has no query."""
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        default_port = {"http": 80, "https": 443}.get(parts.scheme)
        if parts.port is not None and parts.port != default_port:
            host = f"{host}:{parts.port}"
        now = now or datetime.datetime.now(datetime.timezone.utc)
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        day = amz_date[:8]
        headers = {"host": host, "x-amz-content-sha256": payload_sha256, "x-amz-date": amz_date}
        if creds.token:
            headers["x-amz-security-token"] = creds.token
        names = sorted(headers)
        signed = ";".join(names)
        canonical = "\n".join([
            method, parts.path or "/", "",
            "".join(f"{n}:{headers[n]}\n" for n in names), signed, payload_sha256,
        ])
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = f"{_ALGO}\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        sig = hmac.new(self._key(creds.secret_key, day), to_sign.encode(), hashlib.sha256).hexdigest()
        out = {
            "Host": host,
            "X-Amz-Date": amz_date,
            "X-Amz-Content-Sha256": payload_sha256,
            "Authorization": f"{_ALGO} Credential={creds.access_key}/{scope}, SignedHeaders={signed}, "
                             f"Signature={sig}",
        }
        if creds.token:
            out["X-Amz-Security-Token"] = creds.token
        return out


def _error_from_body(op: str, status: int, body: bytes) -> S3Error:
    code, message = str(status), ""
    if body:
        try:
            root = ElementTree.fromstring(body)
            code = root.findtext("Code") or code
            message = root.findtext("Message") or ""
        except ElementTree.ParseError:
            message = body[:200].decode("utf-8", "replace")
    elif status == 404:
        code = "NoSuchKey"  # HEAD-style empty 404
    return S3Error(op, status, code, message)


def _ssl_context() -> ssl.SSLContext:
    # Same trust as botocore: AWS_CA_BUNDLE if set, else botocore's default bundle (certifi or its own).
    cafile = os.environ.get("AWS_CA_BUNDLE")
    if not cafile:
        try:
            from botocore.httpsession import get_cert_path

            cafile = get_cert_path(True)
        except Exception:  # noqa: BLE001 - pragma: no cover; botocore always ships a bundle
            cafile = None
    ctx = ssl.create_default_context(cafile=cafile if cafile and os.path.exists(cafile) else None)
    return ctx


def _env_proxy(url: str) -> str | None:
    """The proxy for ``url`` from HTTP(S)_PROXY / NO_PROXY, resolved once per client."""
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxy


class FastS3:
    """PUT/GET for one bucket. Must be used from a single event loop (fsspec's I/O loop)."""

    def __init__(self, target: Target, credentials: Callable[[], Awaitable[Credentials]], *,
                 connect_timeout: float = 5.0, read_timeout: float = 30.0, max_connections: int = 64) -> None:
        self.target = target
        self._signer = Signer(target.region)
        self._credentials = credentials
        self._timeouts = (connect_timeout, read_timeout)
        self._max_connections = max_connections
        self._session: Any = None
        self._proxy = _env_proxy(target.base_url)

    def _sess(self) -> Any:
        if self._session is None or self._session.closed:
            import aiohttp  # a dependency of aiobotocore, hence present wherever s3fs is

            connect, read = self._timeouts
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections, ssl=_ssl_context()),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=read),
                # Not trust_env: it costs two thread hops per request (netrc, proxy lookup) and a netrc
                # entry for the host would clash with our Authorization header. The proxy is resolved
                # once instead (_env_proxy), as botocore would.
                trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
            )
        return self._session

    def url(self, key: str) -> str:
        return self.target.base_url + quote_key(key)

    async def put(self, key: str, data: bytes, *, if_none_match: bool = False) -> None:
        import yarl

        url = self.url(key)
        # The payload hash is signed, so the server verifies the body it received (XAmzContentSHA256Mismatch
        # otherwise): end-to-end integrity for free.
        headers = self._signer.sign("PUT", url, await self._credentials(), hashlib.sha256(data).hexdigest())
        headers["Content-Length"] = str(len(data))
        if if_none_match:
            headers["If-None-Match"] = "*"
        async with self._sess().put(yarl.URL(url, encoded=True), data=data, headers=headers,
                                    proxy=self._proxy) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise _error_from_body("PutObject", resp.status, body)

    async def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        """Whole object, or bytes ``[start, end)``."""
        import yarl

        url = self.url(key)
        headers = self._signer.sign("GET", url, await self._credentials(), EMPTY_SHA256)
        if start is not None:
            headers["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        async with self._sess().get(yarl.URL(url, encoded=True), headers=headers, proxy=self._proxy) as resp:
            body: bytes = await resp.read()
            if resp.status not in (200, 206):
                raise _error_from_body("GetObject", resp.status, body)
            expected = resp.headers.get("Content-Length")
            if expected is not None and int(expected) != len(body):
                raise ConnectionError(f"GetObject {url}: got {len(body)} of {expected} bytes")
            if start is not None and resp.status == 200:
                # A server that ignores Range sends the whole object: cut the slice ourselves.
                body = body[start:end]
            return body

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


class RangeClient:
    """Blocking ranged GETs for one bucket on http.client, one keep-alive connection per calling thread.

    Why: a large ranged read on aiohttp (:meth:`FastS3.get`) gathers the body in pieces on the event loop's one
    thread, in Python, and joins them: one more copy of every byte, and one thread doing it for all requests.
    ``http.client``'s read receives the body straight into one bytes object of the right size, in C, with the
    GIL released, in the thread that asked. Measured restoring a 1 GiB chunked file from SeaweedFS: about 30 %
    less client CPU (benchmarks/README.md, chunk_restore.py). Used for ranged reads only (restore's runs of chunks, big objects in pieces);
    everything else stays on :class:`FastS3`. Not used through a proxy (the store then keeps aiohttp).
    """

    def __init__(self, target: Target, credentials: Callable[[], Credentials], *, timeout: float = 30.0) -> None:
        parts = urllib.parse.urlsplit(target.base_url)
        self.target = target
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._signer = Signer(target.region)
        self._credentials = credentials
        self._timeout = timeout
        self._ssl = _ssl_context() if self._https else None
        self._local = threading.local()

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection, and whether it served a request before (the server may have closed it)."""
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is not None and getattr(local, "pid", 0) == os.getpid():
            return conn, True
        # after a fork the child must not share the parent's socket: a new connection
        if self._https:
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout, context=self._ssl)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        local.conn, local.pid = conn, os.getpid()
        return conn, False

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    def get(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of ``key`` (fewer at the end of the object, none past it). Raises S3Error
        for an error response, OSError/HTTPException for a broken connection (the caller retries)."""
        url = self.target.base_url + quote_key(key)
        parts = urllib.parse.urlsplit(url)
        headers = self._signer.sign("GET", url, self._credentials(), EMPTY_SHA256)
        headers["Range"] = f"bytes={start}-{end - 1}"
        for attempt in range(2):
            conn, reused = self._connection()
            try:
                conn.request("GET", parts.path, headers=headers)
                resp = conn.getresponse()
                # one read of Content-Length bytes: received into a single bytes object, no joining
                body = resp.read()
            except (OSError, http.client.HTTPException):
                self._drop()
                if reused and attempt == 0:
                    continue  # an idle connection the server closed: once more on a new one, no backoff
                raise
            except BaseException:
                self._drop()
                raise
            break
        if resp.status == 416:
            return b""  # range starts past the end: same answer as a short POSIX read
        if resp.status not in (200, 206):
            raise _error_from_body("GetObject", resp.status, body)
        if resp.status == 200:
            body = body[start:end]  # a server that ignores Range sends the whole object
        return body
