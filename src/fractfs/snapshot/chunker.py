"""Content-defined chunking for format v2 (docs/format.md §A2): where a large file is cut into chunks.

The boundaries are part of the on-store format -- two writers must cut the same bytes at the same places or
nothing deduplicates -- so they follow one published algorithm exactly: FastCDC 2020 as implemented by the
`fastcdc` Rust crate (module `v2020`) and by PyPI's `pyfastcdc`, with normalized chunking level 2, the gear
table derived from MD5 (below) and seed 0. When `pyfastcdc` (the `fast` extra) is installed its Cython code
finds the cut points; otherwise a pure-Python implementation of the same rule does. Both produce identical
boundaries (tests/test_chunker.py checks it on random data); the pure one is the readable reference.

The pure implementation is the rule written as a byte loop: about 9 MB/s on this project's machine against
~1 GB/s for the Cython one, so without the extra a 1 GiB file costs about two minutes of CPU per changed
version (logged once as a warning). A vectorised pure-Python form (big integers as 128-bit lanes) was tried
and measured slower still (~2 MB/s: every big-integer pass costs ~3 ns per 30-bit digit here).
"""
from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
import queue
import threading
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO, NamedTuple, Optional, Union

log = logging.getLogger("fractfs")

KIB = 1024
MIB = 1024 * KIB

_M64 = (1 << 64) - 1


def _derive_gear() -> tuple[int, ...]:
    """GEAR[i] = the first 8 bytes, big-endian, of MD5 over 64 bytes that all equal i.

    This is how the FastCDC reference code and the `fastcdc` crate made their table; deriving it (instead of
    pasting 256 constants) lets a reader check it with any MD5.
    """
    out = []
    for i in range(256):
        md5 = hashlib.md5(bytes([i]) * 64, usedforsecurity=False)
        out.append(int.from_bytes(md5.digest()[:8], "big"))
    return tuple(out)


GEAR: tuple[int, ...] = _derive_gear()

#: The crate's normalized-chunking masks, by log2 of the size they aim for (format v2 uses 17 and 21; the
#: small ones let tests exercise the rule on small inputs).
MASKS: dict[int, int] = {
    5: 0x0000000001804110, 6: 0x0000000001803110, 7: 0x0000000018035100, 8: 0x0000001800035300,
    9: 0x0000019000353000, 10: 0x0000590003530000, 11: 0x0000D90003530000, 12: 0x0000D90103530000,
    13: 0x0000D90303530000, 14: 0x0000D90313530000, 15: 0x0000D90F03530000, 16: 0x0000D90303537000,
    17: 0x0000D90703537000, 18: 0x0000D90707537000, 19: 0x0000D91707537000, 20: 0x0000D91747537000,
    21: 0x0000D91767537000, 22: 0x0000D93767537000, 23: 0x0000D93777537000, 24: 0x0000D93777577000,
    25: 0x0000DB3777577000,
}


@dataclass(frozen=True)
class Params:
    """One FastCDC 2020 configuration. ``FORMAT_PARAMS`` is the one format v2 uses; others exist for tests
    and the benchmark that chose it."""

    min_size: int
    avg_size: int
    max_size: int
    normalization: int = 1

    def __post_init__(self) -> None:
        bits = self.avg_size.bit_length() - 1
        if self.avg_size != 1 << bits:
            raise ValueError(f"avg_size must be a power of two, got {self.avg_size}")
        if not (64 <= self.min_size <= self.avg_size <= self.max_size) or self.min_size % 2 or self.max_size % 2:
            raise ValueError(f"need even sizes with 64 <= min <= avg <= max, got {self}")
        if bits - self.normalization not in MASKS or bits + self.normalization not in MASKS:
            raise ValueError(f"no mask for avg_size {self.avg_size} at normalization {self.normalization}")

    @property
    def mask_s(self) -> int:
        """Mask used before the centre (harder to satisfy: fewer small chunks)."""
        return MASKS[self.avg_size.bit_length() - 1 + self.normalization]

    @property
    def mask_l(self) -> int:
        """Mask used from the centre on (easier: fewer chunks reach max_size)."""
        return MASKS[self.avg_size.bit_length() - 1 - self.normalization]


#: Format v2's chunking parameters (docs/format.md §A2), chosen by benchmarks/v2_choices.py: a 5-page
#: SQLite-like transaction costs ~2.8 MiB of new chunks (1 MiB average: ~6.6-7 MiB), ~1800 chunks per GiB.
#: Changing any of them changes every boundary, so it needs a new format version.
FORMAT_PARAMS = Params(min_size=128 * KIB, avg_size=512 * KIB, max_size=2 * MIB, normalization=2)

Buffer = Union[bytes, bytearray, memoryview]


def _cut_reference(buf: Buffer, params: Params = FORMAT_PARAMS) -> int:
    """Length of the first chunk of ``buf``, where ``buf`` holds the next ``max_size`` bytes of the input or
    everything left of it. The rule, as specified:

    - ``n = len(buf)``; if ``n <= min_size`` the chunk is all of it;
    - ``center = min(avg_size, n)``; ``end = n`` rounded down to even (the crate steps two bytes at a time, so
      the last byte of an odd-length tail is never tested);
    - ``h = 0``; for ``i`` from ``min_size`` while ``i < end``: ``h = (2*h + GEAR[buf[i]]) mod 2**64``; the chunk
      ends *before* byte ``i`` (length ``i``) if ``h & mask == 0``, where ``mask`` is ``mask_s`` while
      ``i < center`` rounded down to even, else ``mask_l``;
    - no cut found: the chunk is ``n`` bytes.
    """
    n = len(buf)
    if n <= params.min_size:
        return n
    center = min(params.avg_size, n) & ~1
    end = n & ~1
    gear, mask_s, mask_l = GEAR, params.mask_s, params.mask_l
    h = 0
    for i in range(params.min_size, end):
        h = ((h << 1) + gear[buf[i]]) & _M64
        if not h & (mask_s if i < center else mask_l):
            return i
    return n



@functools.lru_cache(maxsize=None)
def _native() -> Any:
    """pyfastcdc's compiled chunker class, or None. Imported on first use, not with this module: a restore
    reads FORMAT_PARAMS from here and never chunks (the import is about 5 ms of a cold start)."""
    try:
        # the `fast` extra; only the compiled class: the package's own pure fallback is no faster than ours
        from pyfastcdc.cy import FastCDC
    except ImportError:
        return None
    return FastCDC

_warned_slow = False


def native_available() -> bool:
    """True when the `fast` extra (pyfastcdc's compiled chunker) is importable."""
    return _native() is not None


class _Cutter:
    """Finds the first cut of a window with one backend; the window rule is the same for both."""

    def __init__(self, params: Params, native: Optional[bool]) -> None:
        use_native = native_available() if native is None else native
        if use_native and _native() is None:
            raise RuntimeError("pyfastcdc is not installed (a dependency of fractfs): pip install pyfastcdc")
        self.params = params
        self._fast = (
            _native()(params.avg_size, min_size=params.min_size, max_size=params.max_size,
                    normalized_chunking=params.normalization, seed=0)
            if use_native else None
        )

    @property
    def native(self) -> bool:
        return self._fast is not None

    def cut(self, window: memoryview) -> int:
        if self._fast is None:
            return _cut_reference(window, self.params)
        # one chunk per call keeps the buffering ours (bounded, same for both backends); the iterator and
        # Chunk object cost ~1 us per MiB chunk
        for c in self._fast.cut_buf(window):
            return int(c.length)
        return 0


def cut_points(data: Buffer, *, params: Params = FORMAT_PARAMS,
               native: Optional[bool] = None) -> Iterator[tuple[int, int]]:
    """``(offset, length)`` of every chunk of an in-memory buffer, in order; empty input has no chunks."""
    cutter = _Cutter(params, native)
    view = memoryview(data).cast("B")
    pos, n = 0, len(view)
    while pos < n:
        length = cutter.cut(view[pos:pos + params.max_size])
        yield pos, length
        pos += length


def _warn_slow() -> None:
    global _warned_slow
    if not _warned_slow:
        _warned_slow = True
        log.warning("fractfs: chunking files in pure Python (~10 MB/s): pyfastcdc, a dependency of fractfs, "
                    "could not be imported; pip install pyfastcdc for the compiled chunker (same chunks, "
                    "~100x faster)")


class Chunk(NamedTuple):
    """One chunk of a stream. ``data`` is a view into the chunker's buffer: valid only until the iterator
    advances (copy it with ``bytes()`` to keep it)."""

    offset: int
    length: int
    digest: bytes  # SHA-256 of the chunk's bytes
    data: memoryview


class _FdReader:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def readinto(self, b: memoryview) -> int:
        return os.readv(self.fd, [b])


Source = Union[int, BinaryIO, io.RawIOBase, io.BufferedIOBase]


def _fill(reader: Any, readinto: Any, view: memoryview, end: int, cap: int,
          remaining: Optional[int]) -> tuple[int, Optional[int], bool]:
    """Read into ``view[end:cap]`` until it is full, the input ends, or ``remaining`` bytes (None: no limit)
    were read. Returns the new ``end``, what is left of ``remaining``, and whether the input has ended."""
    while end < cap:
        want = cap - end if remaining is None else min(cap - end, remaining)
        if want == 0:
            return end, remaining, True
        if readinto is not None:
            got = readinto(view[end:end + want])
        else:
            piece = reader.read(want)
            got = len(piece)
            view[end:end + got] = piece
        if not got:
            return end, remaining, True
        end += got
        if remaining is not None:
            remaining -= got
    return end, remaining, False


def chunks(source: Source, *, params: Params = FORMAT_PARAMS, native: Optional[bool] = None,
           limit: Optional[int] = None) -> Iterator[Chunk]:
    """Read ``source`` (a file descriptor or a binary file object) to its end, or ``limit`` bytes, and yield
    its chunks with their SHA-256, reading each byte from the source once.

    Memory stays bounded (a buffer of 2 x ``max_size``, 4 MiB for v2) whatever the file size. Reading stops at
    ``limit`` so a file that is being appended to can be captured up to the size its ``fstat`` showed.
    """
    cutter = _Cutter(params, native)
    if not cutter.native:
        _warn_slow()
    reader: Any = _FdReader(source) if isinstance(source, int) else source
    readinto = getattr(reader, "readinto", None)
    cap = 2 * params.max_size
    buf = bytearray(cap)
    view = memoryview(buf)
    start = end = 0  # unconsumed bytes are buf[start:end]
    offset = 0  # input offset of buf[start]
    remaining = limit
    eof = False
    while True:
        if not eof and end - start < params.max_size:
            # keep whole windows: a cut may only be decided with max_size bytes (or the rest of the input)
            if start:
                view[: end - start] = view[start:end]
                end -= start
                start = 0
            end, remaining, eof = _fill(reader, readinto, view, end, cap, remaining)
        if start == end:
            return
        window = view[start:min(end, start + params.max_size)]
        length = cutter.cut(window)
        data = view[start:start + length]
        yield Chunk(offset, length, hashlib.sha256(data).digest(), data)
        start += length
        offset += length


#: Buffers of :func:`chunks_pipelined`: each holds 4 windows (8 MiB); three of them bound its memory to ~24 MiB.
PIPE_BLOCK_WINDOWS = 4  # at least 2: the uncut tail is copied within buffers (see _cut_blocks)
PIPE_BLOCKS = 3


def chunks_pipelined(source: Source, *, params: Params = FORMAT_PARAMS, native: Optional[bool] = None,
                     limit: Optional[int] = None, hashers: int = 2) -> Generator[Chunk, None, None]:
    """:func:`chunks` on several threads: a worker reads and cuts the next block while ``hashers`` threads hash
    the chunks of the one before (reading, cutting and SHA-256 all release the GIL, so on two cores a large
    file is taken in at about twice the speed of doing the three in turn).

    Same chunks, digests and bounds as :func:`chunks`. ``data`` stays valid until the iterator has moved past
    every chunk of its block (at least until it advances, as with :func:`chunks`). Closing the iterator early
    stops the worker before it returns, so the caller may close ``source`` right after.
    """
    reader: Any = _FdReader(source) if isinstance(source, int) else source
    cutter = _Cutter(params, native)  # made here: a missing pyfastcdc is the caller's error, not the worker's
    if not cutter.native:
        _warn_slow()
    size = PIPE_BLOCK_WINDOWS * params.max_size
    free: queue.Queue[bytearray] = queue.Queue()
    for _ in range(PIPE_BLOCKS):
        free.put(bytearray(size))
    out: queue.Queue[Any] = queue.Queue()
    stop = threading.Event()
    worker = threading.Thread(target=_cut_blocks, args=(reader, cutter, params, limit, free, out, stop),
                              name="fractfs-chunk", daemon=True)
    pool = ThreadPoolExecutor(max_workers=max(1, hashers), thread_name_prefix="fractfs-hash")
    worker.start()
    try:
        while True:
            item = out.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            buf, cuts = item
            view = memoryview(buf)
            datas = [view[start:start + length] for _offset, start, length in cuts]
            digests = [pool.submit(_sha256, d) for d in datas]
            for (offset, _start, length), data, digest in zip(cuts, datas, digests):
                yield Chunk(offset, length, digest.result(), data)
            free.put(buf)  # the worker may refill it: the caller has moved past all of its chunks
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)  # no hash still reads a buffer after we return
        while worker.is_alive():
            free.put(bytearray(0))  # wakes a worker waiting for a buffer (an empty one ends it)
            worker.join(0.05)


def _sha256(data: memoryview) -> bytes:
    return hashlib.sha256(data).digest()


def _cut_blocks(reader: Any, cutter: _Cutter, params: Params, limit: Optional[int],
                free: queue.Queue[bytearray], out: queue.Queue[Any], stop: threading.Event) -> None:
    """The worker of :func:`chunks_pipelined`: fills a free buffer with the previous block's uncut tail plus
    new input, cuts every chunk whose window is complete (or all of them at the end of the input), and hands
    ``(buffer, [(input offset, start in buffer, length), ...])`` on."""
    try:
        readinto = getattr(reader, "readinto", None)
        tail: Buffer = b""
        offset = 0  # input offset of the tail's first byte
        remaining = limit
        eof = False
        max_size = params.max_size
        while not stop.is_set():
            buf = free.get()
            if stop.is_set() or not buf:
                return
            view = memoryview(buf)
            end = len(tail)
            # The uncut tail of the previous block, copied from where it is: that buffer is only ever read by
            # the hashing threads, and refilled by nobody but this worker; if it is this very buffer again, the
            # tail (under max_size bytes, at the end of a block of more than twice that) cannot overlap its
            # new place at the start.
            view[:end] = tail
            tail = b""
            if not eof:
                end, remaining, eof = _fill(reader, readinto, view, end, len(buf), remaining)
            cuts = []
            start = 0
            # a cut may only be decided with max_size bytes in view (or the rest of the input)
            while start < end and (eof or end - start >= max_size):
                length = cutter.cut(view[start:min(end, start + max_size)])
                cuts.append((offset, start, length))
                start += length
                offset += length
            tail = view[start:end]
            del view
            if cuts:
                out.put((buf, cuts))
            else:
                free.put(buf)
            if eof and not tail:
                out.put(None)
                return
    except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread, which raises it
        out.put(exc)
