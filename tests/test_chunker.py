"""Format v2 chunk boundaries: the pure-Python rule and pyfastcdc cut identically, edits stay local."""
from __future__ import annotations

import hashlib
import io
import os
import random

import pytest

from fractfs.snapshot import chunker as C
from fractfs.snapshot.chunker import FORMAT_PARAMS, KIB, MIB, Params

SMALL = Params(min_size=2 * KIB, avg_size=8 * KIB, max_size=32 * KIB)


def vector(n: int) -> bytes:
    """The spec's test-vector input (docs/format.md §A2.4): SHA-256 of the counter 0, 1, 2, ...
    as 8-byte little-endian integers, concatenated."""
    return b"".join(hashlib.sha256(i.to_bytes(8, "little")).digest() for i in range(n // 32))


def lengths(data: bytes, params: Params = FORMAT_PARAMS, native: bool = True) -> list[int]:
    return [ln for _, ln in C.cut_points(data, params=params, native=native)]


def test_gear_table_is_the_published_one() -> None:
    # the first values of the fastcdc crate's v2020 table (which pyfastcdc ships as well)
    assert C.GEAR[:4] == (0x3B5D3C7D207E37DC, 0x784D68BA91123086, 0xCD52880F882E7298, 0xEACF8E4E19FDCCA7)
    from pyfastcdc.py.constants import GEAR, MASKS

    assert C.GEAR == tuple(GEAR)
    assert all(C.MASKS[k] == MASKS[k] for k in C.MASKS)
    assert FORMAT_PARAMS.mask_s == 0x0000D91767537000 and FORMAT_PARAMS.mask_l == 0x0000D90703537000


def test_known_answer_for_the_spec_vector() -> None:
    data = vector(8 * MIB)
    expect = [560905, 636753, 708026, 322071, 533378, 662298, 556544, 573335, 617449, 660916, 541350, 602020,
              495627, 588824, 329112]
    assert lengths(data, native=True) == expect
    assert lengths(data, native=False) == expect


@pytest.mark.parametrize("seed", range(6))
def test_fallback_matches_pyfastcdc_on_random_data(seed: int) -> None:
    rng = random.Random(seed)
    # odd and even lengths, shorter than min, between min and max, many windows
    for n in (0, 1, 2047, 2048, 2049, 9999, rng.randrange(40_000, 400_000) | 1, rng.randrange(40_000, 400_000)):
        data = rng.randbytes(n)
        native = lengths(data, SMALL, native=True)
        assert lengths(data, SMALL, native=False) == native
        from pyfastcdc.cy import FastCDC

        whole = [c.length for c in FastCDC(8192, min_size=2048, max_size=32768).cut_buf(data)]
        assert native == whole, "one-window-at-a-time cutting must equal the library's own walk"
        assert sum(native) == n


def test_runs_without_cut_points_end_at_max_size() -> None:
    zeros = bytes(200_000)
    expect = [32768] * 6 + [200_000 - 6 * 32768]
    assert lengths(zeros, SMALL, native=True) == expect
    assert lengths(zeros, SMALL, native=False) == expect


def test_last_byte_of_an_odd_tail_is_never_a_cut() -> None:
    # the crate tests two bytes per step, so in an odd-length final window the last byte is not tested: this
    # input's byte 8194 would satisfy the mask (a cut there if a byte followed) yet the tail stays whole
    data = random.Random(55).randbytes(8194) + bytes([136])
    assert lengths(data + b"\0", SMALL, native=True) == [8194, 2]
    assert lengths(data, SMALL, native=True) == [8195]
    assert lengths(data, SMALL, native=False) == [8195]


def test_sizes_stay_within_bounds() -> None:
    data = random.Random(9).randbytes(64 * MIB)
    ls = lengths(data)
    assert all(FORMAT_PARAMS.min_size < ln <= FORMAT_PARAMS.max_size for ln in ls[:-1])
    assert 0 < ls[-1] <= FORMAT_PARAMS.max_size
    assert 90 < len(ls) < 150  # ~0.56 MiB mean on random data


def test_edit_in_the_middle_changes_few_chunks() -> None:
    rng = random.Random(1)
    base = rng.randbytes(64 * MIB)
    mid = len(base) // 2
    edited = base[:mid] + rng.randbytes(4 * KIB) + base[mid + 4 * KIB:]

    def digests(b: bytes) -> list[bytes]:
        return [c.digest for c in C.chunks(io.BytesIO(b))]

    old, new = digests(base), digests(edited)
    changed = set(new) - set(old)
    assert 1 <= len(changed) <= 2
    assert len(new) - 3 <= len(set(new) & set(old))
    inserted = base[:mid] + rng.randbytes(4 * KIB) + base[mid:]
    assert len(set(digests(inserted)) - set(old)) <= 3


def test_append_changes_only_the_tail() -> None:
    rng = random.Random(2)
    base = rng.randbytes(32 * MIB)
    old = lengths(base)
    new = lengths(base + rng.randbytes(4 * KIB))
    # every chunk but the old last one (cut by the end of input) is cut at the same place
    assert new[: len(old) - 1] == old[:-1]
    assert sum(new[len(old) - 1:]) == old[-1] + 4 * KIB


def test_deterministic_and_independent_of_read_sizes(tmp_path: object) -> None:
    data = random.Random(3).randbytes(3 * MIB + 12345)
    ref = list(C.cut_points(data, params=SMALL))
    assert list(C.cut_points(data, params=SMALL)) == ref

    class Dribble:
        """Returns at most 1000 bytes per read, and has no readinto."""

        def __init__(self, b: bytes) -> None:
            self.f = io.BytesIO(b)

        def read(self, n: int) -> bytes:
            return self.f.read(min(n, 1000))

    for native in (True, False):
        got = [(c.offset, c.length) for c in C.chunks(Dribble(data), params=SMALL, native=native)]  # type: ignore[arg-type]
        assert got == ref


def test_chunks_stream_from_a_descriptor_with_digests_and_limit(tmp_path: object) -> None:
    import pathlib

    path = pathlib.Path(str(tmp_path)) / "big.bin"
    data = random.Random(4).randbytes(20 * MIB + 1)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        got = [(c.offset, c.length, c.digest, bytes(c.data)) for c in C.chunks(fd)]
        os.lseek(fd, 0, os.SEEK_SET)
        limited = [(c.offset, c.length) for c in C.chunks(fd, limit=9 * MIB)]
    finally:
        os.close(fd)
    assert [(o, ln) for o, ln, _, _ in got] == list(C.cut_points(data))
    for o, ln, digest, chunk in got:
        assert chunk == data[o:o + ln]
        assert digest == hashlib.sha256(data[o:o + ln]).digest()
    assert limited == list(C.cut_points(data[: 9 * MIB]))


def test_fallback_stream_equals_native_stream() -> None:
    data = random.Random(5).randbytes(700_001)
    a = [(c.offset, c.length, c.digest) for c in C.chunks(io.BytesIO(data), params=SMALL, native=True)]
    b = [(c.offset, c.length, c.digest) for c in C.chunks(io.BytesIO(data), params=SMALL, native=False)]
    assert a == b and len(a) > 10


def test_empty_input_has_no_chunks() -> None:
    assert list(C.chunks(io.BytesIO(b""))) == []
    assert list(C.cut_points(b"")) == []


@pytest.mark.parametrize("kw", [
    {"min_size": 2048, "avg_size": 6000, "max_size": 32768},  # avg not a power of two
    {"min_size": 9000, "avg_size": 8192, "max_size": 32768},  # min > avg
    {"min_size": 2048, "avg_size": 8192, "max_size": 4096},  # max < avg
    {"min_size": 2049, "avg_size": 8192, "max_size": 32768},  # odd
    {"min_size": 16, "avg_size": 16, "max_size": 32},  # no mask that small
])
def test_bad_params_are_refused(kw: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        Params(**kw)


@pytest.mark.parametrize("size", [0, 1, 2 * KIB, 32 * KIB + 1, 128 * KIB + 7, 3 * MIB + 12345])
@pytest.mark.parametrize("limit", [None, 100 * KIB])
def test_pipelined_chunks_equal_the_plain_ones(size: int, limit: int | None) -> None:
    """Same chunks, offsets and digests as chunks(), across block boundaries (SMALL windows make a 3 MiB input
    span many blocks), with and without a limit, from a source without readinto."""
    data = random.Random(size).randbytes(size)

    class Dribble(io.RawIOBase):
        def readinto(self, b: memoryview) -> int:  # type: ignore[override]
            return src.readinto(b[:777])  # short reads

    for native in (True, False):
        src = io.BytesIO(data)
        want = [(c.offset, c.length, c.digest, bytes(c.data))
                for c in C.chunks(io.BytesIO(data), params=SMALL, native=native, limit=limit)]
        got = [(c.offset, c.length, c.digest, bytes(c.data))
               for c in C.chunks_pipelined(Dribble(), params=SMALL, native=native, limit=limit)]
        assert got == want
    assert len(want) == (0 if not size else len(list(C.cut_points(data[:limit], params=SMALL))))


def test_pipelined_chunks_from_a_descriptor_are_the_format_chunks(tmp_path: object) -> None:
    import pathlib

    path = pathlib.Path(str(tmp_path)) / "big.bin"
    data = random.Random(6).randbytes(30 * MIB + 3)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        got = [(c.offset, c.length, c.digest) for c in C.chunks_pipelined(fd, limit=25 * MIB)]
    finally:
        os.close(fd)
    assert [(o, ln) for o, ln, _ in got] == list(C.cut_points(data[: 25 * MIB]))
    assert all(d == hashlib.sha256(data[o:o + ln]).digest() for o, ln, d in got)


def test_closing_a_pipelined_stream_early_stops_its_threads(tmp_path: object) -> None:
    import threading

    data = random.Random(7).randbytes(40 * MIB)
    before = threading.active_count()
    stream = C.chunks_pipelined(io.BytesIO(data))
    first = next(stream)
    assert first.offset == 0 and first.digest == hashlib.sha256(data[: first.length]).digest()
    stream.close()
    assert threading.active_count() == before  # nothing reads the source after close()


def test_a_read_error_in_the_pipeline_reaches_the_caller() -> None:
    class Broken(io.RawIOBase):
        calls = 0

        def readinto(self, b: memoryview) -> int:  # type: ignore[override]
            Broken.calls += 1
            if Broken.calls > 3:
                raise OSError(5, "I/O error")
            b[:1000] = b"x" * 1000
            return 1000

    with pytest.raises(OSError, match="I/O error"):
        list(C.chunks_pipelined(Broken(), params=SMALL))
