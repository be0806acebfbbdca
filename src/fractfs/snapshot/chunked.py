"""Reading a file stored as chunks (format v2, ``Entry.chunks``): which ranged reads fetch it, and whether a
local file already holds it.

A chunked file can be far larger than memory, so it is never assembled in a buffer: restore fetches it as
*runs* (one ranged read of a pack covering neighbouring chunks of the file), verifies every chunk of a run
against its SHA-256 and writes it at its offset in the file (see ``restorer._Writer.write_chunk_run``). What
this module decides is pure arithmetic on the manifest's chunk refs, so it is tested without a store.
"""
from __future__ import annotations

import hashlib
import os
from typing import NamedTuple

from ..localfile import hash_file
from .format import MAX_INT64, ChunkRef, Entry

#: A run is at most this long: a whole pack at the default pack size. Adjacent chunks of one file sit next to
#: each other in a pack (a checkpoint appends a file's chunks in order), so one ranged GET of several chunks
#: replaces several: fewer requests, and less server CPU per byte (SeaweedFS served 1 GiB in ranges of 8 MiB
#: for 2.6 CPU-s, of 16 MiB for 2.1; benchmarks/README.md, chunk_restore.py).
RUN_MAX = 16 << 20
#: Bytes between two chunks of the same file in a pack that a run reads over rather than starting a new one.
RUN_GAP = 64 << 10


class Piece(NamedTuple):
    """One chunk of a run: where it goes in the file, and what it is."""

    file_offset: int
    number: int  #: the chunk's position in the file, from 0 (for messages)
    ref: ChunkRef


class Run(NamedTuple):
    """One ranged read: bytes ``start .. start+length`` of pack ``pack``, holding ``pieces``."""

    pack: str
    start: int
    length: int
    pieces: tuple[Piece, ...]


def bad_ref(e: Entry) -> str | None:
    """Why the entry's chunk refs cannot be read (None when they can). The manifest codec already refused
    entries whose lengths do not add up or that name no pack; what is left is a range no store can serve."""
    for k, c in enumerate(e.chunks):
        if c.offset + c.length > MAX_INT64:
            return f"chunk {k} lies beyond any possible pack (offset {c.offset}); not restored"
    return None


def plan_runs(chunks: tuple[ChunkRef, ...], run_max: int = RUN_MAX, gap: int = RUN_GAP) -> list[Run]:
    """The ranged reads that fetch ``chunks`` (a file's content in order): consecutive chunks in one pack,
    ascending and at most ``gap`` bytes apart, share a read of at most ``run_max`` bytes."""
    runs: list[Run] = []
    pack = ""
    start = end = 0
    pieces: list[Piece] = []
    at = 0
    for k, c in enumerate(chunks):
        c_end = c.offset + c.length
        if pieces and c.pack == pack and end <= c.offset <= end + gap and c_end - start <= run_max:
            end = c_end
        else:
            if pieces:
                runs.append(Run(pack, start, end - start, tuple(pieces)))
            pack, start, end, pieces = c.pack, c.offset, c_end, []
        pieces.append(Piece(at, k, c))
        at += c.length
    if pieces:
        runs.append(Run(pack, start, end - start, tuple(pieces)))
    return runs


def holds(path: str, e: Entry) -> bool:
    """Does the regular file at ``path`` (already known to be ``e.size`` bytes) hold ``e``'s content? A
    chunked file is compared chunk by chunk, since its ``sha256`` names the chunk list, not the bytes.
    Raises OSError."""
    if not e.chunks:
        return hash_file(path)[0] == e.sha256
    buf = bytearray(max(c.length for c in e.chunks))
    view = memoryview(buf)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        for c in e.chunks:
            got = 0
            while got < c.length:
                n = os.readv(fd, [view[got:c.length]])
                if n == 0:
                    return False
                got += n
            if hashlib.sha256(view[:c.length]).hexdigest() != c.sha256:
                return False
        return os.read(fd, 1) == b""
    finally:
        os.close(fd)
