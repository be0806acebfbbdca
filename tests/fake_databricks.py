"""An in-memory stand-in for the Databricks Files API, for tests.

It speaks the REST shapes of the public Files API 2.0 reference (``/api/2.0/fs/files`` and
``/api/2.0/fs/directories``) closely enough that the real ``databricks-sdk`` client can be pointed at it with
``WorkspaceClient(host=fake.host, token=fake.token)``. Besides the Files API it answers the two things the SDK
asks a host for on its own:

* ``GET /.well-known/databricks-config`` -- the SDK probes it while building its ``Config`` (host metadata);
* ``/oidc/.well-known/oauth-authorization-server`` and ``POST /oidc/v1/token`` -- OAuth machine-to-machine,
  which is how a Databricks App's service principal (``DATABRICKS_CLIENT_ID``/``SECRET``) authenticates.

Test knobs: ``inject()`` queues error responses (429 with ``Retry-After``, 503, 500, ...), ``page_size`` and
``short_pages`` force the listing to paginate with partial pages, ``requests`` records every call, and
``auto_create_parents`` chooses whether an upload into a missing directory succeeds or fails with 404.
"""

from __future__ import annotations

import base64
import email.utils
import json
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FILES = "/api/2.0/fs/files"
DIRS = "/api/2.0/fs/directories"

_ERROR_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    416: "INVALID_PARAMETER_VALUE",
    429: "TOO_MANY_REQUESTS",
    500: "INTERNAL_ERROR",
    502: "BAD_GATEWAY",
    503: "TEMPORARILY_UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


@dataclass
class Injection:
    """Answer the next ``count`` matching API requests with ``status`` (``count=None``: until cleared)."""

    status: int
    count: int | None
    retry_after: str | None = None
    method: str | None = None
    path_contains: str | None = None
    error_code: str | None = None
    after: int = 0  # let this many matching requests through first

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method != method:
            return False
        return self.path_contains is None or self.path_contains in path


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    status: int
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _File:
    data: bytes
    mtime: float


class FakeDatabricks:
    """A threaded HTTP server on 127.0.0.1 (random port) holding Volume files in memory."""

    def __init__(
        self,
        *,
        volumes: tuple[str, ...] = ("/Volumes/main/default/vol",),
        token: str = "fake-token",
        client_id: str = "fake-sp",
        client_secret: str = "fake-secret",
        page_size: int = 2,
        short_pages: bool = True,
        auto_create_parents: bool = True,
        honour_range: bool = True,
        bad_token_status: int = 401,
    ) -> None:
        self.token = token
        # What an unknown bearer token gets: 401, or 403 "Invalid access token." as many workspaces answer a
        # personal access token that is wrong, expired or revoked.
        self.bad_token_status = bad_token_status
        self.client_id = client_id
        self.client_secret = client_secret
        self.page_size = page_size
        self.short_pages = short_pages
        self.auto_create_parents = auto_create_parents
        self.honour_range = honour_range
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.RLock()
        self.files: dict[str, _File] = {}
        self.dirs: set[str] = set()
        self.volumes = set(volumes)
        for v in volumes:
            self.dirs.add(v)
        self.requests: list[Recorded] = []
        self.injections: list[Injection] = []
        self._issued_tokens: set[str] = {token}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> FakeDatabricks:
        fake = self

        class Handler(_Handler):
            pass

        Handler.fake = fake
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-databricks",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeDatabricks:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def host(self) -> str:
        assert self._server is not None, "start() the fake first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # ---- knobs -------------------------------------------------------------------------------------------
    def inject(
        self,
        status: int,
        count: int | None = 1,
        *,
        retry_after: float | None = None,
        method: str | None = None,
        path_contains: str | None = None,
        error_code: str | None = None,
        after: int = 0,
    ) -> None:
        ra = None if retry_after is None else f"{retry_after:g}"
        with self.lock:
            self.injections.append(Injection(status, count, ra, method, path_contains, error_code, after))

    def clear_injections(self) -> None:
        with self.lock:
            self.injections.clear()

    def count(self, method: str | None = None, prefix: str = "/api/", status: int | None = None) -> int:
        with self.lock:
            return sum(
                1
                for r in self.requests
                if (method is None or r.method == method)
                and r.path.startswith(prefix)
                and (status is None or r.status == status)
            )

    def reset_log(self) -> None:
        with self.lock:
            self.requests.clear()

    # ---- in-memory volume --------------------------------------------------------------------------------
    def volume_of(self, path: str) -> str | None:
        for v in self.volumes:
            if path == v or path.startswith(v + "/"):
                return v
        return None

    def mkdirs(self, path: str) -> None:
        vol = self.volume_of(path)
        assert vol is not None
        while path != vol and path not in self.dirs:
            self.dirs.add(path)
            path = path.rsplit("/", 1)[0]

    def children(self, path: str) -> list[dict[str, object]]:
        """Immediate children of directory ``path`` in name order, shaped like the REST DirectoryEntry."""
        prefix = path + "/"
        out: dict[str, dict[str, object]] = {}
        for d in self.dirs:
            if d.startswith(prefix) and "/" not in d[len(prefix) :]:
                name = d[len(prefix) :]
                # Directory entries carry a trailing slash in their path, which clients must cope with.
                out[name] = {"path": d + "/", "is_directory": True, "name": name}
        for p, f in self.files.items():
            if p.startswith(prefix) and "/" not in p[len(prefix) :]:
                name = p[len(prefix) :]
                out[name] = {
                    "path": p,
                    "is_directory": False,
                    "file_size": len(f.data),
                    "last_modified": int(f.mtime * 1000),
                    "name": name,
                }
        return [out[k] for k in sorted(out)]


class _Handler(BaseHTTPRequestHandler):
    fake: FakeDatabricks
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without this every request waits on a delayed ACK.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # ---- plumbing ----------------------------------------------------------------------------------------
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(
        self,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        # Record before answering, so a test that reads the log right after a call sees that call.
        self._record(status)
        self.send_response(status)
        hdrs = dict(headers or {})
        if body or "Content-Length" not in hdrs:
            hdrs.setdefault("Content-Length", str(len(body)))
        if body:
            hdrs.setdefault("Content-Type", content_type)
        for k, v in hdrs.items():
            self.send_header(k, v)
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _record(self, status: int) -> None:
        fake = self.fake
        url = urllib.parse.urlsplit(self.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query, keep_blank_values=True).items()}
        with fake.lock:
            fake.requests.append(
                Recorded(
                    self.command, urllib.parse.unquote(url.path), query, status, dict(self.headers.items())
                )
            )

    def _json(self, status: int, obj: object, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(
        self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        body = {"error_code": code or _ERROR_CODES.get(status, "UNKNOWN"), "message": message}
        if self.command == "HEAD":
            # A HEAD answer has no body; clients go by the status alone.
            self._send(status, b"", headers)
        else:
            self._json(status, body, headers)

    def _handle(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(url.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query, keep_blank_values=True).items()}
        body = self._body() if self.command in ("PUT", "POST") else b""
        with self.fake.lock:
            self.fake.in_flight += 1
            self.fake.max_in_flight = max(self.fake.max_in_flight, self.fake.in_flight)
        try:
            self._dispatch(path, query, body)
        finally:
            with self.fake.lock:
                self.fake.in_flight -= 1

    def _dispatch(self, path: str, query: dict[str, str], body: bytes) -> None:
        fake = self.fake
        if path == "/.well-known/databricks-config" and self.command == "GET":
            self._json(200, {"oidc_endpoint": f"{fake.host}/oidc"})
            return
        if path.startswith("/oidc/"):
            self._oidc(path, body)
            return
        if not path.startswith("/api/"):
            self._error(404, f"no such endpoint: {path}", "ENDPOINT_NOT_FOUND")
            return
        auth = self.headers.get("Authorization", "")
        with fake.lock:
            known = auth.startswith("Bearer ") and auth[len("Bearer ") :] in fake._issued_tokens
        if not known:
            if fake.bad_token_status == 403 and auth.startswith("Bearer "):
                self._error(403, "Invalid access token.", "403")
            else:
                self._error(401, "Credential was not sent or was of an unsupported type for this API.")
            return
        with fake.lock:
            for inj in fake.injections:
                if inj.matches(self.command, path):
                    if inj.after > 0:
                        inj.after -= 1
                        continue
                    if inj.count is not None:
                        inj.count -= 1
                        if inj.count <= 0:
                            fake.injections.remove(inj)
                    hdrs = {"Retry-After": inj.retry_after} if inj.retry_after is not None else None
                    injected = (inj.status, inj.error_code, hdrs)
                    break
            else:
                injected = None
        if injected is not None:
            status, code, hdrs = injected
            self._error(status, f"injected {status} by the test", code, hdrs)
            return
        if path.startswith(FILES + "/"):
            self._files(path[len(FILES) :], query, body)
        elif path.startswith(DIRS + "/"):
            self._dirs(path[len(DIRS) :], query)
        else:
            self._error(404, f"no such endpoint: {path}", "ENDPOINT_NOT_FOUND")

    # ---- OAuth (service principal, client credentials) ---------------------------------------------------
    def _oidc(self, path: str, body: bytes) -> None:
        fake = self.fake
        if path == "/oidc/.well-known/oauth-authorization-server":
            self._json(
                200,
                {
                    "issuer": f"{fake.host}/oidc",
                    "authorization_endpoint": f"{fake.host}/oidc/v1/authorize",
                    "token_endpoint": f"{fake.host}/oidc/v1/token",
                },
            )
            return
        if path == "/oidc/v1/token" and self.command == "POST":
            form = {k: v[-1] for k, v in urllib.parse.parse_qs(body.decode()).items()}
            cid, secret = form.get("client_id"), form.get("client_secret")
            basic = self.headers.get("Authorization", "")
            if basic.startswith("Basic "):
                cid, _, secret = base64.b64decode(basic[6:]).decode().partition(":")
            if form.get("grant_type") != "client_credentials" or (cid, secret) != (
                fake.client_id,
                fake.client_secret,
            ):
                self._json(401, {"error": "invalid_client", "error_description": "bad client id or secret"})
                return
            tok = f"sp-token-{len(fake._issued_tokens)}"
            with fake.lock:
                fake._issued_tokens.add(tok)
            self._json(200, {"access_token": tok, "token_type": "Bearer", "expires_in": 3600})
            return
        self._error(404, f"no such endpoint: {path}", "ENDPOINT_NOT_FOUND")

    # ---- /api/2.0/fs/files -------------------------------------------------------------------------------
    def _files(self, path: str, query: dict[str, str], body: bytes) -> None:
        fake = self.fake
        if fake.volume_of(path) is None:
            self._error(404, f"Volume for path {path} does not exist.")
            return
        with fake.lock:
            f = fake.files.get(path)
            if self.command == "PUT":
                if path in fake.dirs:
                    self._error(409, f"A directory exists at {path}.", "RESOURCE_ALREADY_EXISTS")
                    return
                if f is not None and query.get("overwrite", "true").lower() == "false":
                    self._error(409, f"The file being created already exists: {path}", "ALREADY_EXISTS")
                    return
                parent = path.rsplit("/", 1)[0]
                if parent not in fake.dirs:
                    if not fake.auto_create_parents:
                        self._error(404, f"The parent directory {parent} does not exist.")
                        return
                    fake.mkdirs(parent)
                fake.files[path] = _File(body, time.time())
                self._send(204)
                return
            if self.command == "DELETE":
                if f is None:
                    self._error(404, f"The file {path} does not exist.")
                    return
                del fake.files[path]
                self._send(204)
                return
            if self.command not in ("GET", "HEAD"):
                self._error(405, f"method {self.command} not allowed", "BAD_REQUEST")
                return
            if f is None:
                self._error(404, f"The file {path} does not exist.")
                return
            data, mtime = f.data, f.mtime
        headers = {
            "Last-Modified": email.utils.formatdate(mtime, usegmt=True),
            "Accept-Ranges": "bytes",
        }
        rng = self.headers.get("Range") if fake.honour_range else None
        if rng:
            span = _parse_range(rng, len(data))
            if span is None:
                headers["Content-Range"] = f"bytes */{len(data)}"
                self._error(416, f"Range {rng} not satisfiable for {path}", headers=headers)
                return
            start, end = span
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            part = data[start : end + 1]
            headers["Content-Length"] = str(len(part))
            self._send(206, part, headers, "application/octet-stream")
            return
        headers["Content-Length"] = str(len(data))
        if self.command == "HEAD":
            headers["Content-Type"] = "application/octet-stream"
            self._send(200, b"", headers)
        else:
            self._send(200, data, headers, "application/octet-stream")

    # ---- /api/2.0/fs/directories -------------------------------------------------------------------------
    def _dirs(self, path: str, query: dict[str, str]) -> None:
        fake = self.fake
        path = path.rstrip("/")
        if fake.volume_of(path) is None:
            self._error(404, f"Volume for path {path} does not exist.")
            return
        with fake.lock:
            if self.command == "PUT":
                if path in fake.files or any(p in fake.files for p in _ancestors(path)):
                    self._error(409, f"A file exists at or above {path}.", "RESOURCE_ALREADY_EXISTS")
                    return
                fake.mkdirs(path)
                self._send(204)
                return
            if path not in fake.dirs:
                self._error(404, f"The directory {path} does not exist.")
                return
            if self.command == "HEAD":
                self._send(200)
                return
            if self.command == "DELETE":
                if fake.children(path):
                    self._error(409, f"The directory {path} is not empty.", "DIRECTORY_NOT_EMPTY")
                    return
                if path in fake.volumes:
                    self._error(400, "cannot delete a volume root")
                    return
                fake.dirs.discard(path)
                self._send(204)
                return
            if self.command != "GET":
                self._error(405, f"method {self.command} not allowed", "BAD_REQUEST")
                return
            entries = fake.children(path)
        size = min(int(query.get("page_size") or 1000), 1000, fake.page_size or 1000)
        token = query.get("page_token")
        # The token is opaque to clients; here it carries the offset and how many pages came before.
        offset, page_no = (
            (int(x) for x in base64.urlsafe_b64decode(token.encode()).decode().split(":"))
            if token
            else (0, 0)
        )
        if fake.short_pages and page_no % 3 == 1:
            # The reference allows a page shorter than page_size, even an empty one, while more entries follow.
            size = (page_no // 3) % 2
        chunk = entries[offset : offset + size]
        nxt = offset + len(chunk)
        out: dict[str, object] = {}
        if chunk:
            out["contents"] = chunk
        if nxt < len(entries):
            out["next_page_token"] = base64.urlsafe_b64encode(f"{nxt}:{page_no + 1}".encode()).decode()
        self._json(200, out)

    do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _handle


def _ancestors(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(2, len(parts))]


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """One ``bytes=`` range, inclusive, clipped to the file (RFC 9110); None when unsatisfiable."""
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return None
    first, _, last = spec.strip().partition("-")
    if first == "":
        n = int(last)
        if n <= 0 or size == 0:
            return None
        return max(0, size - n), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size or end < start:
        return None
    return start, min(end, size - 1)
