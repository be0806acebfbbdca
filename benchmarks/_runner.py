"""One timed fractfs operation in a fresh process; prints one JSON line ``{"seconds": ..., ...}``.

Each measurement gets its own interpreter, like each run of s5cmd or rclone: no connection pool, page of
imported code or allocator state carries over from the previous run. The clock covers the operation (store
set-up and the first connection included), not the interpreter start and the imports (fractfs, s3fs,
aiobotocore: about 0.4 s), which an app pays once when it starts, not per checkpoint.

    python _runner.py current-checkpoint  --url URL --src DIR --state DIR [--transfers N]
    python _runner.py current-restore     --url URL --dest DIR [--transfers N]
    python _runner.py upstream-checkpoint --url URL --src DIR --scratch DIR     (fractfs 0.2.1's venv)
    python _runner.py upstream-restore    --url URL --dest DIR --scratch DIR    (fractfs 0.2.1's venv)

``current-*`` use the working tree (src/ is put first on sys.path); ``upstream-*`` must run under the
interpreter of benchmarks/.venv-upstream, so nothing here may touch sys.path for them.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any


def _preload_s3() -> None:
    """Import the S3 stack before the clock starts: a long-running app pays this once, not per checkpoint,
    and a Go binary has nothing comparable to pay."""
    import s3fs  # noqa: F401


def _current() -> None:
    src = Path(__file__).resolve().parent.parent / "src"
    sys.path.insert(0, str(src))
    _preload_s3()


def _store(url: str) -> Any:
    from fractfs.stores import open_store

    return open_store(url)


def current_checkpoint(a: argparse.Namespace) -> dict[str, Any]:
    _current()
    from fractfs.snapshot import checkpoint

    t = time.perf_counter()
    store = _store(a.url)
    res = checkpoint(store, {"root": Path(a.src)}, None, state_dir=Path(a.state), transfers=a.transfers)
    dt = time.perf_counter() - t
    getattr(store, "close", lambda: None)()
    return {"seconds": dt, "files": res.files, "bytes": res.bytes, "uploaded": res.uploaded_bytes,
            "snapshot": res.snapshot_id}


def current_restore(a: argparse.Namespace) -> dict[str, Any]:
    _current()
    from fractfs.snapshot import restore

    t = time.perf_counter()
    store = _store(a.url)
    res = restore(store, {"root": Path(a.dest)}, transfers=a.transfers)
    dt = time.perf_counter() - t
    getattr(store, "close", lambda: None)()
    if res.errors:
        raise SystemExit(f"restore reported errors: {res.errors[:5]}")
    return {"seconds": dt, "files": len(res.restored), "bytes": res.bytes}


def _upstream_engine(root: str, url: str, scratch: str) -> Any:
    from fractfs.config import Config
    from fractfs.sync import SyncEngine

    backend = "fsspec" if "://" in url else "mount"
    cfg = Config(root=Path(root), backend=backend, remote_root=url, scratch=Path(scratch))
    return SyncEngine(cfg)


def _upstream_imports() -> None:
    import fractfs
    import fractfs.sync  # noqa: F401

    if fractfs.__version__ != "0.2.1":
        raise SystemExit(f"expected fractfs 0.2.1, imported {fractfs.__version__} from {fractfs.__file__}")
    _preload_s3()


def upstream_checkpoint(a: argparse.Namespace) -> dict[str, Any]:
    _upstream_imports()
    t = time.perf_counter()
    copied = _upstream_engine(a.src, a.url, a.scratch).checkpoint()
    return {"seconds": time.perf_counter() - t, "files": len(copied)}


def upstream_restore(a: argparse.Namespace) -> dict[str, Any]:
    _upstream_imports()
    t = time.perf_counter()
    restored = _upstream_engine(a.dest, a.url, a.scratch).restore()
    return {"seconds": time.perf_counter() - t, "files": len(restored)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("op", choices=["current-checkpoint", "current-restore", "upstream-checkpoint",
                                   "upstream-restore"])
    ap.add_argument("--url", required=True)
    ap.add_argument("--src")
    ap.add_argument("--dest")
    ap.add_argument("--state")
    ap.add_argument("--scratch")
    ap.add_argument("--transfers", type=int, default=16)
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    fn = {"current-checkpoint": current_checkpoint, "current-restore": current_restore,
          "upstream-checkpoint": upstream_checkpoint, "upstream-restore": upstream_restore}[a.op]
    print(json.dumps(fn(a)))


if __name__ == "__main__":
    main()
