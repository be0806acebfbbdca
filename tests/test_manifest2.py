"""Format v2 manifests (columnar codec) and packs (index-hashed ids): round trips, and every bad entry or
damaged structure caught."""
from __future__ import annotations

import gzip
import hashlib
import json
from typing import Any, Callable

import pytest

from fractfs.errors import CorruptCheckpointError
from fractfs.snapshot import format as v1
from fractfs.snapshot import manifest2 as M
from fractfs.snapshot import pack2
from fractfs.snapshot.manifest2 import ChunkRef, Entry2, Header

P1 = "a" * 64
P2 = "b" * 64


def sha(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def sample() -> list[Entry2]:
    big = tuple(ChunkRef(P2 if i % 2 else P1, i * 100, 1 << 20, sha(f"c{i}")) for i in range(3))
    return [
        Entry2("root", "a.txt", "f", 0o644, 5, 11, None, False, (ChunkRef(P1, 0, 5, sha("a")),)),
        Entry2("root", "dir", "d", 0o755, 0, 0),
        Entry2("root", "dir/big.db", "f", 0o600, 3 << 20, 12, None, True, big),
        Entry2("root", "dir/empty", "f", 0o644, 0, 13),
        Entry2("root", "dir/link", "l", 0, 0, 14, "../a.txt"),
        Entry2("root", "dir/sub/deep/x", "f", 0o4755, 7, -5, None, False, (ChunkRef(P2, 9, 7, sha("x")),)),
        Entry2("root", "caf\u00e9/\udcff-not-utf8", "f", 0o644, 1, 15, None, False, (ChunkRef(P1, 5, 1, sha("e")),)),
        Entry2("scratch", "pinned", "f", 0o644, 2, 16, None, False, (ChunkRef(P1, 6, 2, sha("p")),)),
    ]


HDR = Header(seq=7, created_ns=123, node="host:1:ab", parent=None)


def tamper(blob: bytes, edit: Callable[[dict[str, Any]], None]) -> bytes:
    doc = json.loads(gzip.decompress(blob))
    edit(doc)
    return gzip.compress(json.dumps(doc).encode(), mtime=0)


def index_of(m: M.Manifest2, path: str) -> int:
    return m.paths.index(path)


def test_round_trip_and_deterministic_bytes() -> None:
    ents = sample()
    blob = M.encode(HDR, ents)
    assert M.encode(HDR, list(reversed(ents))) == blob, "entry order must not change the bytes"
    m = M.decode(blob, expect_seq=7)
    assert m.refused == {}
    assert sorted(ents, key=lambda e: (e.area, e.path)) == list(m.entries())
    assert m.header == HDR
    assert m.referenced_packs() == {P1, P2}
    doc = json.loads(gzip.decompress(blob))
    assert doc["version"] == 2 and doc["files"] == 6 and doc["bytes"] == 5 + (3 << 20) + 7 + 1 + 2
    assert gzip.decompress(blob).isascii()


def test_content_id() -> None:
    one = (ChunkRef(P1, 0, 5, sha("a")),)
    assert M.content_id(one) == sha("a")
    two = (ChunkRef(P1, 0, 5, sha("a")), ChunkRef(P1, 5, 5, sha("b")))
    assert M.content_id(two) == hashlib.sha256(bytes.fromhex(sha("a")) + bytes.fromhex(sha("b"))).hexdigest()


def test_v1_reader_refuses_v2_as_a_newer_version() -> None:
    blob = M.encode(HDR, sample())
    name = v1.parse_snapshot_key(f"snapshots/{7:012d}-{hashlib.sha256(blob).hexdigest()}.json.gz")
    assert name is not None
    with pytest.raises(v1.UnknownFormatError, match="version 2"):
        v1.decode_manifest(name, blob)


def test_v2_reader_refuses_v1_and_reports_newer_versions() -> None:
    name, blob = v1.encode_manifest(v1.Manifest(seq=3, created_ns=1, node="n", parent=None, entries=[]))
    with pytest.raises(CorruptCheckpointError, match="not 2"):
        M.decode(blob)
    newer = tamper(M.encode(HDR, sample()), lambda d: d.update(version=3))
    with pytest.raises(v1.UnknownFormatError, match="newer"):
        M.decode(newer)


def _set(col: str, key: str, value: Any, at: int) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        doc[col][key][at] = value
    return edit


# (description, how to break entry "dir/big.db" or its neighbours, the path that must be refused)
def _entry(doc: dict[str, Any], path: str) -> int:
    dirs = doc["dirs"]["path"]
    names = doc["entries"]["name"]
    parent, _, name = path.rpartition("/")
    for i, (d, n) in enumerate(zip(doc["entries"]["dir"], names)):
        if dirs[d] == parent and n == name:
            return i
    raise KeyError(path)


def _edit_entry(key: str, value: Any, path: str = "dir/big.db") -> Callable[[dict[str, Any]], None]:
    return lambda doc: doc["entries"][key].__setitem__(_entry(doc, path), value)


def _edit_chunk(key: str, value: Any, path: str = "a.txt") -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        i = _entry(doc, path)
        k = sum(doc["entries"]["nchunks"][:i])
        doc["chunks"][key][k] = value
    return edit


def _set_target(value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda doc: doc["entries"]["targets"].__setitem__(0, value)


def _set_kind(path: str, kind: str) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        i = _entry(doc, path)
        k = doc["entries"]["kind"]
        doc["entries"]["kind"] = k[:i] + kind + k[i + 1:]
    return edit


BAD_ENTRIES = [
    ("name ..", _edit_entry("name", ".."), "dir/.."),
    ("name .", _edit_entry("name", "."), "dir/."),
    ("name with slash", _edit_entry("name", "x/y"), "dir/x/y"),
    ("empty name", _edit_entry("name", ""), "dir/"),
    ("name with NUL", _edit_entry("name", "a\x00b"), "dir/a\x00b"),
    ("name over 255 bytes", _edit_entry("name", "\u00e9" * 128), "dir/" + "\u00e9" * 128),
    ("name not a string", _edit_entry("name", 5), None),
    ("mode too big", _edit_entry("mode", 0o10000), "dir/big.db"),
    ("negative mode", _edit_entry("mode", -1), "dir/big.db"),
    ("mode a bool", _edit_entry("mode", True), "dir/big.db"),
    ("negative size", _edit_entry("size", -1), "dir/big.db"),
    ("size not the chunk sum", _edit_entry("size", (3 << 20) + 1), "dir/big.db"),
    ("size a float", _edit_entry("size", 3.0 * (1 << 20)), "dir/big.db"),
    ("mtime beyond int64", _edit_entry("mtime_ns", 1 << 63), "dir/big.db"),
    ("mtime a string", _edit_entry("mtime_ns", "1"), "dir/big.db"),
    ("dir index out of range", _edit_entry("dir", 99), None),
    ("dir index negative", _edit_entry("dir", -1), None),
    ("chunk length 0", _edit_chunk("length", 0), "a.txt"),
    ("chunk longer than max_size", _edit_chunk("length", M.MAX_CHUNK + 1), "a.txt"),
    ("chunk length not the size", _edit_chunk("length", 4), "a.txt"),
    ("negative chunk offset", _edit_chunk("offset", -1), "a.txt"),
    ("pack index out of range", _edit_chunk("pack", 9), "a.txt"),
    ("pack index a bool", _edit_chunk("pack", False), "a.txt"),
    ("empty symlink target", _set_target(""), "dir/link"),
    ("NUL in symlink target", _set_target("a\x00"), "dir/link"),
    ("symlink target not a string", _set_target(None), "dir/link"),
    ("unknown kind", _set_kind("a.txt", "x"), "a.txt"),
    ("directory with content", _set_kind("a.txt", "d"), "a.txt"),
    ("file with a size but no chunks", _edit_entry("size", 5, "dir/empty"), "dir/empty"),
]


@pytest.mark.parametrize("why,edit,path", BAD_ENTRIES, ids=[b[0] for b in BAD_ENTRIES])
def test_a_bad_entry_is_refused_alone(why: str, edit: Callable[[dict[str, Any]], None], path: str | None) -> None:
    good = M.decode(M.encode(HDR, sample()))
    m = M.decode(tamper(M.encode(HDR, sample()), edit))
    assert len(m.refused) == 1, m.refused
    (i,) = m.refused
    if path is not None:
        assert m.paths[i] == path
    # everything else restores as before
    assert len(list(m.entries())) == len(good) - 1


def test_bad_directory_rows_refuse_their_entries() -> None:
    for bad in ("/abs", "dir/../x", "dir//x", "", "dir/./x", "a\x00"):
        def edit(doc: dict[str, Any], bad: str = bad) -> None:
            doc["dirs"]["path"][doc["dirs"]["path"].index("dir/sub/deep")] = bad
        m = M.decode(tamper(M.encode(HDR, sample()), edit))
        if bad == "":  # legal (the area root), but then x sits at the top: fine
            assert m.refused == {} and "x" in m.paths
            continue
        assert [m.paths[i] for i in m.refused] == [f"{bad}/x"], bad
    m = M.decode(tamper(M.encode(HDR, sample()), _set("dirs", "area", 5, 0)))
    assert m.refused and all(m.entry_area[i] == 0 for i in m.refused)
    assert "directory row names no area" in m.refused.values()


def test_duplicates_refuse_every_copy_sorted_or_not() -> None:
    ents = sample()
    dup = ents[0]._replace(mode=0o600)
    m = M.decode(M.encode(HDR, [*ents, dup]))
    assert sorted(m.paths[i] for i in m.refused) == ["a.txt", "a.txt"]

    def unsort(doc: dict[str, Any]) -> None:  # move the last entry first: the decoder's dict path
        e = doc["entries"]
        for k in ("dir", "name", "mode", "size", "mtime_ns", "nchunks"):
            e[k].insert(0, e[k].pop())
        e["kind"] = e["kind"][-1] + e["kind"][:-1]
        c = doc["chunks"]
        for k in ("pack", "offset", "length"):
            c[k].insert(0, c[k].pop())
        c["sha256"] = c["sha256"][-64:] + c["sha256"][:-64]
    m = M.decode(tamper(M.encode(HDR, [*ents, dup]), unsort))
    assert sorted(m.paths[i] for i in m.refused) == ["a.txt", "a.txt"]
    assert len(list(m.entries())) == len(ents) - 1


def test_entries_below_a_file_or_symlink_are_refused() -> None:
    ents = [e for e in sample() if e.path != "dir"]
    shadow = Entry2("root", "dir/sub", "l", 0, 0, 1, "/etc")
    m = M.decode(M.encode(HDR, [*ents, shadow]))
    assert [m.paths[i] for i in m.refused] == ["dir/sub/deep/x"]
    # a directory entry turned into a file shadows everything under it
    m = M.decode(tamper(M.encode(HDR, sample()), _set_kind("dir", "f")))
    assert sorted(m.paths[i] for i in m.refused) == ["dir/big.db", "dir/empty", "dir/link", "dir/sub/deep/x"]
    assert m.refused[index_of(m, "dir/sub/deep/x")].startswith("below a path")


STRUCTURE = [
    ("chunk table one short", lambda d: d["chunks"]["offset"].pop()),
    ("kind string too short", lambda d: d["entries"].update(kind=d["entries"]["kind"][:-1])),
    ("name column missing", lambda d: d["entries"].pop("name")),
    ("entries not an object", lambda d: d.update(entries=[])),
    ("upper-case hex", lambda d: d["chunks"].update(sha256=d["chunks"]["sha256"].upper())),
    ("hex one short", lambda d: d["chunks"].update(sha256=d["chunks"]["sha256"][:-1])),
    ("more chunks claimed than stored", _edit_entry("nchunks", 99)),
    ("chunk count negative", _edit_entry("nchunks", -1)),
    ("chunks left over", _edit_entry("nchunks", 2)),
    ("other chunking parameters", lambda d: d["chunking"].update(avg_size=1 << 21)),
    ("bad pack id", lambda d: d["packs"].__setitem__(0, "zz")),
    ("bad area name", lambda d: d["areas"].__setitem__(0, "../x")),
    ("seq not an int", lambda d: d.update(seq="7")),
    ("not our format", lambda d: d.update(format="other")),
    ("sqlite index out of range", lambda d: d["entries"].update(sqlite=[99])),
    ("targets column too long", lambda d: d["entries"]["targets"].append("x")),
]


@pytest.mark.parametrize("why,edit", STRUCTURE, ids=[s[0] for s in STRUCTURE])
def test_damaged_structure_damages_the_manifest(why: str, edit: Callable[[dict[str, Any]], None]) -> None:
    with pytest.raises(CorruptCheckpointError):
        M.decode(tamper(M.encode(HDR, sample()), edit))


def test_damaged_bytes() -> None:
    blob = M.encode(HDR, sample())
    for bad in (blob[:-1], blob + b"x", blob + blob, b"not gzip", gzip.compress(b"[1,2]"),
                gzip.compress(b"{\xff}")):
        with pytest.raises(CorruptCheckpointError):
            M.decode(bad)
    with pytest.raises(CorruptCheckpointError, match="sequence"):
        M.decode(blob, expect_seq=8)
    bomb = gzip.compress(b" " * (M.MIN_DECOMPRESSED_LIMIT + 1) + b"{}", compresslevel=9)
    with pytest.raises(CorruptCheckpointError, match="more than"):
        M.decode(bomb)


def test_referenced_packs_skip_refused_entries() -> None:
    m = M.decode(tamper(M.encode(HDR, sample()), _edit_entry("mode", -1, "dir/sub/deep/x")))
    assert m.referenced_packs() == {P1, P2}  # P2 is still used by big.db
    only = [e for e in sample() if e.path in ("a.txt", "dir/sub/deep/x")]
    m = M.decode(tamper(M.encode(HDR, only), _edit_entry("mode", -1, "dir/sub/deep/x")))
    assert m.referenced_packs() == {P1}


def test_empty_manifest() -> None:
    m = M.decode(M.encode(HDR, []))
    assert len(m) == 0 and list(m.entries()) == [] and m.referenced_packs() == set()


# -- packs -------------------------------------------------------------------------------------------------

def _pack(members: list[bytes]) -> tuple[str, bytes, list[int]]:
    w = pack2.PackWriter()
    offsets = [w.add(hashlib.sha256(b).digest(), b) for b in members]
    pack_id, parts = w.seal()
    return pack_id, b"".join(parts), offsets


def test_pack_id_is_the_hash_of_its_index_and_members_are_found() -> None:
    members = [b"alpha", b"", b"bravo" * 1000, b"alpha"]
    pack_id, blob, offsets = _pack(members)
    assert offsets == [0, 5, 5, 0], "a repeated member is stored once"
    idx_len = pack2.read_trailer(blob[-pack2.TRAILER.size:], len(blob))
    index = blob[-pack2.TRAILER.size - idx_len:-pack2.TRAILER.size]
    assert pack_id == hashlib.sha256(index).hexdigest()
    got = pack2.parse_index(index, len(blob), pack_id)
    assert [(m.offset, m.length) for m in got] == [(0, 5), (5, 0), (5, 5000)]
    for m in got:
        assert hashlib.sha256(blob[m.offset:m.offset + m.length]).digest() == m.sha256
    # the id does not depend on anything but members and order
    assert _pack(members)[0] == pack_id and _pack(members[::-1])[0] != pack_id


def test_damaged_packs_are_refused() -> None:
    pack_id, blob, _ = _pack([b"one", b"two"])
    tail = blob[-pack2.TRAILER.size:]
    with pytest.raises(pack2.PackError, match="magic"):
        pack2.read_trailer(b"X" + tail[1:], len(blob))
    with pytest.raises(pack2.PackError, match="flags"):
        pack2.read_trailer(pack2.TRAILER.pack(pack2.MAGIC, 2, 1, 80), len(blob))
    with pytest.raises(pack2.PackError, match="inconsistent"):
        pack2.read_trailer(pack2.TRAILER.pack(pack2.MAGIC, 3, 0, 80), len(blob))
    with pytest.raises(pack2.PackError, match="inconsistent"):
        pack2.read_trailer(tail, 50)
    with pytest.raises(pack2.PackError):
        pack2.read_trailer(tail[:-1], len(blob))
    index = blob[6:-pack2.TRAILER.size]
    with pytest.raises(pack2.PackError, match="pack id"):
        pack2.parse_index(index, len(blob), "0" * 64)
    with pytest.raises(pack2.PackError, match="add up"):
        pack2.parse_index(index, len(blob) + 1, pack_id)
