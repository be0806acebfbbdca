"""The one small storage protocol every backend implements.

Keys are relative, '/'-separated strings (``packs/ab/abcd...``). A store never needs rename to be correct:
callers write content-addressed objects under their final key and commit by writing a manifest last.

Errors: every backend raises :class:`~fractfs.errors.StoreNotFound` for a missing key on reads,
:class:`~fractfs.errors.AlreadyExists` for a refused exclusive write and :class:`~fractfs.errors.StoreError`
for anything else on the store side (unreachable, full, permission denied), with a message that names the
path or URL. Malformed keys (absolute, ``..``, empty components) are a programming error: ``ValueError``.
"""
from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable, Protocol, TypeVar, runtime_checkable

#: Suffix of in-flight files a backend writes before moving them into place (PosixStore). Keys may not
#: end like this, and listings never show such names, so a crash mid-write leaves nothing a reader sees.
TEMP_SUFFIX_RE = re.compile(r"\.tmp-[0-9a-f]{12}$")


@runtime_checkable
class Store(Protocol):
    #: Human-readable location, for logs and status(): a path or URL.
    url: str

    def put(self, key: str, data: bytes, *, exclusive: bool = False) -> None:
        """Write ``data`` at ``key`` (durably: fsync on POSIX). ``exclusive=True`` → raise AlreadyExists if present."""

    def put_file(self, key: str, path: Path) -> None:
        """Stream a local file to ``key`` (large objects)."""

    def get(self, key: str) -> bytes:
        """Whole object; StoreNotFound when missing."""

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes from offset ``start`` (fewer at end of object, ``b""`` past it)."""

    def get_file(self, key: str, path: Path) -> None:
        """Stream ``key`` into local file ``path`` (overwrites ``path``)."""

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        """(key, size) for every object whose key starts with ``prefix`` (recursive, any order)."""

    def size(self, key: str) -> int | None:
        """Size in bytes, or None when the key is missing."""

    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""


#: A store's bytes given as parts, written one after the other (see :func:`put_parts`).
Parts = Sequence["bytes | bytearray | memoryview"]


def put_parts(store: Store, key: str, parts: Parts, *, exclusive: bool = False) -> None:
    """``store.put(key, b"".join(parts))``, without the join when the store's class writes parts itself
    (``put_parts``, e.g. :class:`~fractfs.stores.posix.PosixStore` with ``writev``): a pack of many chunks
    then costs no copy in memory, and no thread holds the GIL for one.

    Only a ``put_parts`` marked as writing like the ``put`` the store's class has now (:func:`writes_like`)
    counts: a wrapper that forwards unknown attributes to the store it wraps, a subclass that overrides
    ``put``, or a ``put`` replaced on the class (fault injection, counting, slowing down in tests) must see
    every write through its ``put``, not be bypassed."""
    cls = type(store)
    fn = _class_attr(cls, "put_parts")
    if fn is not None and getattr(fn, "_writes_like", None) is _class_attr(cls, "put"):
        fn(store, key, parts, exclusive=exclusive)
    else:
        store.put(key, b"".join(parts), exclusive=exclusive)


_F = TypeVar("_F", bound=Callable[..., None])
_R = TypeVar("_R", bound=Callable[..., int])


def writes_like(put: Callable[..., None]) -> Callable[[_F], _F]:
    """Mark a class's ``put_parts`` as writing exactly what its ``put`` (given) writes (see :func:`put_parts`)."""
    def mark(fn: _F) -> _F:
        fn._writes_like = put  # type: ignore[attr-defined]
        return fn
    return mark


def reads_like(get_range: Callable[..., bytes]) -> Callable[[_R], _R]:
    """Mark a class's ``get_range_into`` as reading exactly what its ``get_range`` (given) reads (see
    :func:`reads_into`)."""
    def mark(fn: _R) -> _R:
        fn._reads_like = get_range  # type: ignore[attr-defined]
        return fn
    return mark


def reads_into(store: Store) -> Callable[[str, int, memoryview], int] | None:
    """The store's ``get_range_into(key, start, into)``, bound, when its class reads into a caller's buffer
    itself; else None (the caller then uses ``get_range``).

    ``get_range_into`` reads ``len(into)`` bytes from ``start`` (fewer at the end of the object) and returns
    how many it read. A restore reads packs into buffers it reuses this way (:mod:`..snapshot.restorer`):
    reading 89 MiB into fresh memory cost 70-85 ms of page faults on tmpfs, into reused buffers 17-21 ms.
    As with :func:`put_parts`, only one marked as reading like the ``get_range`` the store's class has now
    counts (:func:`reads_like`): a wrapper or a test that replaces ``get_range`` is never bypassed."""
    cls = type(store)
    fn = _class_attr(cls, "get_range_into")
    if fn is not None and getattr(fn, "_reads_like", None) is _class_attr(cls, "get_range"):
        return getattr(store, "get_range_into")  # type: ignore[no-any-return]  # noqa: B009
    return None


def get_range_into(store: Store, key: str, start: int, into: memoryview) -> int:
    """``store``'s own get_range_into when it has one (:func:`reads_into`), else get_range copied into
    ``into``: the number of bytes read."""
    fn = reads_into(store)
    if fn is not None:
        return fn(key, start, into)
    data = store.get_range(key, start, len(into))
    into[:len(data)] = data
    return len(data)


def _class_attr(cls: type, name: str) -> Any:
    return next((c.__dict__[name] for c in cls.__mro__ if name in c.__dict__), None)


@runtime_checkable
class BatchStore(Store, Protocol):
    """Optional fast paths for many small objects.

    A backend implements these when it can do better than a thread pool calling ``put``/``get`` — e.g.
    FsspecStore drives all requests from one asyncio loop instead of funnelling 32 threads through it.
    Callers should not test for them themselves: :func:`fractfs.stores.transfer.put_many` and
    :func:`~fractfs.stores.transfer.get_many` use them when present and fall back to a bounded pool.
    Both stop at the first error (remaining work is cancelled) and raise it.
    """

    def put_many(self, items: Sequence[tuple[str, bytes]], *, workers: int = 32) -> None:
        """``put(key, data)`` for every pair, up to ``workers`` at a time."""

    def get_many(self, keys: Sequence[str], *, workers: int = 32) -> list[bytes]:
        """``get(key)`` for every key, results in the order of ``keys``."""


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe store key, else raise ValueError.

    Defence in depth: keys come from manifests that may have been tampered with, and a key like
    ``../../etc/passwd`` must never reach a filesystem path or an object name outside the store root.
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"store key must be a non-empty string, got {key!r}")
    if "\x00" in key or "\\" in key:
        raise ValueError(f"store key {key!r} contains a NUL or backslash")
    if key.startswith("/"):
        raise ValueError(f"store key {key!r} is absolute; keys are relative to the store root")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise ValueError(f"store key {key!r} has an empty, '.' or '..' component")
    if TEMP_SUFFIX_RE.search(key):
        raise ValueError(f"store key {key!r} ends like a temporary file name (.tmp-<hex>)")
    return key


def check_prefix(prefix: str) -> str:
    """Like :func:`check_key` for a listing prefix, which may be empty or end inside a component."""
    if not prefix:
        return ""
    if "\x00" in prefix or "\\" in prefix or prefix.startswith("/"):
        raise ValueError(f"store prefix {prefix!r} is absolute or contains a NUL or backslash")
    parts = prefix.split("/")
    # The last part may be partial ("packs/a") or empty ("packs/"), the others must be real components.
    for part in parts[:-1]:
        if part in ("", ".", ".."):
            raise ValueError(f"store prefix {prefix!r} has an empty, '.' or '..' component")
    if parts[-1] in (".", ".."):
        raise ValueError(f"store prefix {prefix!r} ends in '.' or '..'")
    return prefix
