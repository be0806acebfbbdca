"""Format v2 packs (docs/format.md §A3): members, then an index, then a trailer; id = SHA-256(index).

A v1 pack id is the SHA-256 of the whole pack, which costs a second pass over every byte already hashed per
file. A v2 pack ends with the list of its members' (SHA-256, length), and its id is the SHA-256 of that list:
the writer hashes 40 bytes per member instead of the pack, and a reader that checks every member against its
digest (which restore and verify do anyway) has checked the whole pack.

Layout (all integers unsigned little-endian)::

    member 0 bytes | member 1 bytes | ... | index | trailer
    index   = N records of 40 bytes: sha256 (32 raw bytes) + length (u64)
    trailer = 32 bytes: magic b"FRACTPK2" + N (u64) + flags (u64, 0 in v2) + index length (u64, = 40 * N)

Member ``i`` starts at the sum of the lengths before it; members are stored verbatim (no compression in v2).
"""
from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from typing import NamedTuple, Union

#: What a member's bytes may be given as: a view into a buffer the caller keeps alive until the pack is stored
#: saves a copy of every chunk of a file already in memory.
Bytes = Union[bytes, bytearray, memoryview]

MAGIC = b"FRACTPK2"
TRAILER = struct.Struct("<8sQQQ")
RECORD = struct.Struct("<32sQ")
#: A pack is sealed near this size; a member is at most one chunk (4 MiB) so this bounds a pack too.
MAX_MEMBERS = 1 << 20


class PackError(ValueError):
    """A pack's index or trailer is malformed (the pack is damaged)."""


class Member(NamedTuple):
    sha256: bytes
    offset: int
    length: int


def build_index(members: Sequence[tuple[bytes, int]]) -> tuple[bytes, str]:
    """Index + trailer bytes for members ``(sha256 digest, length)`` in pack order, and the pack id."""
    index = b"".join(RECORD.pack(d, n) for d, n in members)
    trailer = TRAILER.pack(MAGIC, len(members), 0, len(index))
    return index + trailer, hashlib.sha256(index).hexdigest()


class PackWriter:
    """Collects members in memory and seals them into one pack. Each member's digest comes from the caller
    (the chunker computed it while reading), so sealing never re-reads member bytes."""

    def __init__(self) -> None:
        self._parts: list[Bytes] = []
        self._members: list[tuple[bytes, int]] = []
        self._where: dict[bytes, int] = {}
        self.size = 0

    def add(self, digest: bytes, data: Bytes) -> int:
        """Append a member (once per digest) and return its offset in the pack."""
        at = self._where.get(digest)
        if at is not None:
            return at
        at = self.size
        self._where[digest] = at
        self._parts.append(data)
        self._members.append((digest, len(data)))
        self.size += len(data)
        return at

    def __len__(self) -> int:
        return len(self._members)

    def seal(self) -> tuple[str, list[Bytes]]:
        """The pack id and its bytes as parts (members..., index + trailer), ready for a streaming upload."""
        tail, pack_id = build_index(self._members)
        return pack_id, [*self._parts, tail]


def read_trailer(tail: bytes, pack_size: int) -> int:
    """Validate the last 32 bytes of a pack of ``pack_size`` bytes; returns the index length to read."""
    if len(tail) != TRAILER.size:
        raise PackError(f"pack trailer must be {TRAILER.size} bytes, got {len(tail)}")
    magic, count, flags, index_len = TRAILER.unpack(tail)
    if magic != MAGIC:
        raise PackError("not a v2 pack (bad trailer magic)")
    if flags != 0:
        raise PackError(f"pack flags {flags:#x} unknown to this reader")
    if count > MAX_MEMBERS or index_len != count * RECORD.size or index_len + TRAILER.size > pack_size:
        raise PackError(f"pack trailer inconsistent: {count} members, index {index_len} bytes, pack {pack_size}")
    return int(index_len)


def parse_index(index: bytes, pack_size: int, pack_id: str) -> list[Member]:
    """Members of a pack from its index bytes, checked against the pack id and the pack's size."""
    if hashlib.sha256(index).hexdigest() != pack_id:
        raise PackError(f"pack {pack_id}: index does not hash to the pack id")
    out: list[Member] = []
    offset = 0
    for digest, length in RECORD.iter_unpack(index):
        out.append(Member(digest, offset, length))
        offset += length
    if offset + len(index) + TRAILER.size != pack_size:
        raise PackError(f"pack {pack_id}: members add up to {offset} bytes, pack holds "
                        f"{pack_size - len(index) - TRAILER.size}")
    return out
