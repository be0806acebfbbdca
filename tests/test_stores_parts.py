"""put_parts: a blob given as parts is written without joining them where the store can (PosixStore: writev),
and every store that must see each write through its own ``put`` still does."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from fractfs.errors import AlreadyExists, CheckpointAborted, VolumeNotMounted
from fractfs.stores import PosixStore
from fractfs.stores.base import put_parts
from fractfs.stores.volume import VolumeGuard
from fractfs.stores.wrappers import abortable


def _parts(n: int) -> list[Any]:
    data = os.urandom(n * 7)
    out: list[Any] = []
    for i in range(n):
        piece = data[i * 7:(i + 1) * 7]
        out.append(memoryview(piece) if i % 3 == 0 else bytearray(piece) if i % 3 == 1 else piece)
        if i % 100 == 0:
            out.append(b"")  # empty parts are allowed and write nothing
    return out


def test_posix_store_writes_parts_in_order_beyond_one_writev(tmp_path: Path) -> None:
    store = PosixStore(tmp_path / "s")
    parts = _parts(3000)  # more parts than one writev(2) takes
    put_parts(store, "packs/aa/x", parts, exclusive=True)
    assert store.get("packs/aa/x") == b"".join(bytes(p) for p in parts)
    with pytest.raises(AlreadyExists):
        put_parts(store, "packs/aa/x", [b"other"], exclusive=True)
    put_parts(store, "packs/aa/x", [b"re", memoryview(b"placed")])
    assert store.get("packs/aa/x") == b"replaced"


def test_a_store_that_overrides_put_sees_every_write(tmp_path: Path) -> None:
    seen: list[tuple[str, bytes]] = []

    class Watching(PosixStore):
        def put(self, key: str, data: bytes, *, exclusive: bool = False) -> None:
            seen.append((key, bytes(data)))
            super().put(key, data, exclusive=exclusive)

    class Forwarding:  # a wrapper that hands unknown attributes to the store it wraps
        def __init__(self, inner: PosixStore) -> None:
            self.inner = inner

        def put(self, key: str, data: bytes, *, exclusive: bool = False) -> None:
            seen.append((key, bytes(data)))
            self.inner.put(key, data, exclusive=exclusive)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    put_parts(Watching(tmp_path / "a"), "k", [b"ab", b"cd"])
    put_parts(Forwarding(PosixStore(tmp_path / "b")), "k", [b"ef", b"gh"])  # type: ignore[arg-type]
    put_parts(abortable(Watching(tmp_path / "c")), "k", [b"ij", b"kl"])
    assert seen == [("k", b"abcd"), ("k", b"efgh"), ("k", b"ijkl")]


def test_a_put_replaced_on_the_class_sees_every_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests (and tools) slow a store down or make it fail by replacing ``PosixStore.put`` itself."""
    seen: list[bytes] = []
    real = PosixStore.put

    def slow_put(self: PosixStore, key: str, data: bytes, *, exclusive: bool = False) -> None:
        seen.append(bytes(data))
        real(self, key, data, exclusive=exclusive)

    monkeypatch.setattr(PosixStore, "put", slow_put)
    put_parts(abortable(PosixStore(tmp_path / "s")), "k", [b"mn", b"op"])
    assert seen == [b"mnop"]


def test_wrappers_keep_their_checks_for_parts(tmp_path: Path) -> None:
    store = abortable(PosixStore(tmp_path / "s"))
    put_parts(store, "k", [b"1", b"2"])
    store.abort()
    with pytest.raises(CheckpointAborted):
        put_parts(store, "k2", [b"3"])
    vol = tmp_path / "vol"
    vol.mkdir()
    guarded = VolumeGuard(PosixStore(vol / "_checkpoint"), vol, ttl=0)
    put_parts(guarded, "k", [b"4", b"5"])
    assert guarded.get("k") == b"45"
    vol.rename(tmp_path / "vol.away")
    with pytest.raises(VolumeNotMounted):
        put_parts(guarded, "k3", [b"6"])
