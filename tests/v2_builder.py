"""Build format v2 snapshots by hand (no checkpoint involved): packs from ``pack2.PackWriter`` holding chunks
cut by ``chunker``, and a manifest from ``manifests.encode``. The reader tests and benchmarks/chunk_restore.py
use it to put exactly the snapshot they need on a store."""

from __future__ import annotations

import hashlib
import io
import random
from typing import Any, BinaryIO

from fractfs.snapshot import chunker, manifest2, manifests, pack2
from fractfs.snapshot.format import DIR, FILE, SYMLINK, ChunkRef, Entry, Manifest, SnapName, pack_key

PACK_SIZE = 16 << 20


class V2Builder:
    """Collects entries; chunks go into packs of about ``pack_size`` bytes, uploaded as each one fills."""

    def __init__(self, store: Any, pack_size: int = PACK_SIZE) -> None:
        self.store = store
        self.pack_size = pack_size
        self.entries: list[Entry] = []
        self.packs: list[str] = []
        self._writer = pack2.PackWriter()
        #: refs into the open pack, completed with its id when it is sealed: (entry index, chunk index)
        self._open: list[tuple[int, int]] = []
        self._pending: dict[int, list[Any]] = {}  # entry index -> [pack-less ChunkRef parts]

    # -- content ---------------------------------------------------------------------------------------
    def file(self, path: str, data: bytes | BinaryIO, *, area: str = "root", mode: int = 0o644,
             mtime_ns: int = 1_700_000_000_000_000_000, sqlite: bool = False) -> int:
        """Add a file; returns its entry index. ``data`` may be a binary file object (read once, chunked
        on the way, never held whole)."""
        src = io.BytesIO(data) if isinstance(data, bytes) else data
        i = len(self.entries)
        parts: list[Any] = []
        self._pending[i] = parts
        size = 0
        for c in chunker.chunks(src):
            if self._writer.size and self._writer.size + c.length > self.pack_size:
                self.seal()
            off = self._writer.add(c.digest, bytes(c.data))
            parts.append(["", off, c.length, c.digest.hex()])
            self._open.append((i, len(parts) - 1))
            size += c.length
        self.entries.append(Entry(area, path, FILE, mode=mode, size=size, mtime_ns=mtime_ns, sqlite=sqlite))
        return i

    def link(self, path: str, target: str, *, area: str = "root", mtime_ns: int = 1) -> None:
        self.entries.append(Entry(area, path, SYMLINK, mtime_ns=mtime_ns, target=target))

    def dir(self, path: str, *, area: str = "root", mode: int = 0o755) -> None:
        self.entries.append(Entry(area, path, DIR, mode=mode))

    def seal(self) -> str | None:
        """Upload the open pack; returns its id (None when it is empty)."""
        if not len(self._writer):
            return None
        pid, parts = self._writer.seal()
        self.store.put(pack_key(pid), b"".join(parts))
        for i, k in self._open:
            self._pending[i][k][0] = pid
        self._open = []
        self._writer = pack2.PackWriter()
        self.packs.append(pid)
        return pid

    # -- manifest -------------------------------------------------------------------------------------
    def finished_entries(self) -> list[Entry]:
        """The entries as the reader models them (a one-chunk file is a plain pack slice)."""
        self.seal()
        out = []
        for i, e in enumerate(self.entries):
            parts = self._pending.get(i)
            if parts is None:
                out.append(e)
                continue
            refs = tuple(ChunkRef(*p) for p in parts)
            if not refs:
                out.append(e._replace(sha256=hashlib.sha256(b"").hexdigest()))
            elif len(refs) == 1:
                out.append(e._replace(sha256=refs[0].sha256, pack=refs[0].pack, offset=refs[0].offset))
            else:
                out.append(e._replace(sha256=manifest2.content_id(refs), chunks=refs))
        return out

    def commit(self, seq: int, *, parent: str | None = None, node: str = "builder") -> SnapName:
        """Write the manifest (after the packs: blobs first, manifest last) and return its name."""
        m = Manifest(seq=seq, created_ns=1_700_000_000_000_000_000 + seq, node=node, parent=parent,
                     entries=self.finished_entries(), version=2)
        name, data = manifests.encode(m)
        self.store.put(name.key, data)
        return name


def random_bytes(n: int, seed: int) -> bytes:
    """``n`` reproducible pseudo-random bytes (incompressible, no two chunks alike)."""
    return random.Random(seed).randbytes(n)
