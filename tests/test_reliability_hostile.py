"""Hostile checkpoints, through the whole app: someone who can write to the store plants a snapshot; a fresh node
must still start, refuse every hostile entry with a message in ``status()["warnings"]``, restore the honest
ones, and write nothing outside its root and scratch.

tests/test_snapshot_restore.py covers the entry checks at the ``fractfs.snapshot.restore`` level; these tests
add what only the app shows: ``init()`` survives, the messages reach ``status()``, the deploy bundle's own
symlinks and the ``[dirs]`` links are not written through, and a manifest built to exhaust memory is refused.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import zlib
from pathlib import Path

import pytest
from helpers import Node
from test_reliability_support import (
    file_entry,
    newest_seq,
    put_object,
    put_pack,
    raw_manifest,
    snapshot_tree,
    temp_files,
)

from fractfs.errors import CorruptCheckpointError
from fractfs.snapshot.format import FORMAT_NAME, SnapName, decode_manifest
from fractfs.stores import PosixStore

CONFIG = """\
[dirs]
paths = ["data/blobs"]
[local]
patterns = ["manifest.json"]
[ignore]
patterns = ["*.tmp"]
"""

STATUS = """
st = fractfs.init()
out = {"warnings": st["warnings"], "restore": st["restore"], "initialized": st["initialized"]}
fractfs.shutdown(final_sync=False)
print(json.dumps(out))
"""


def _outside(tmp_path: Path, node: Node) -> dict[str, tuple[object, ...]]:
    """Everything the app may not touch: all of tmp_path but its root, scratch and checkpoint area."""
    return snapshot_tree(tmp_path, skip=(node.root, node.scratch, Path(node.volume) / "_checkpoint"))


def _legit_snapshot(node: Node) -> None:
    node.run("""
        fractfs.init()
        os.makedirs("state", exist_ok=True)
        open("state/a.txt", "w").write("alpha")
        open("notes.txt", "w").write("honest")
        open("data/blobs/manifest.json", "w").write('{"v": 1}')
        fractfs.sync_now()
        fractfs.shutdown(final_sync=False)
    """)


def test_hostile_snapshot_is_refused_and_the_app_starts(tmp_path: Path, plain_volume: Path) -> None:
    canary = tmp_path / "canary"
    canary.mkdir()
    # the deploy bundle itself ships a symlink that leads out of the root: nothing may be written through it
    node = Node(tmp_path / "node", plain_volume, CONFIG, bundle={"bundle-link": "->../../canary"})
    _legit_snapshot(node)

    store = PosixStore(plain_volume / "_checkpoint")
    payload, good, setuid = b"pwned\n", b"fine\n", b"#!/bin/sh\necho hi\n"
    pid, (bad, ok, suid) = put_pack(store, [payload, good, setuid])
    pack_len = len(payload) + len(good) + len(setuid)
    big_oid = put_object(store, b"x" * 4096)
    hostile = {
        # path tricks
        "../escape": file_entry("../escape", pid, bad),
        "/abs": file_entry(str(canary / "abs"), pid, bad),
        "a/../../escape2": file_entry("a/../../escape2", pid, bad),
        "nul": file_entry("nul\x00byte", pid, bad),
        "area": {"area": "../root", "path": "x", "type": "dir", "mode": 0o755},
        "scratch-up": file_entry("../up", pid, bad, area="scratch"),
        # writing through symlinks that already exist on disk: the bundle's, and the [dirs] link to the Volume
        "bundle-link/payload": file_entry("bundle-link/payload", pid, bad),
        "data/blobs/planted": file_entry("data/blobs/planted", pid, bad),
        # writing through symlinks of the same snapshot that lead out (the links themselves are data and are
        # restored verbatim, see below)
        "evil-abs/payload": file_entry("evil-abs/payload", pid, bad),
        "chain/payload": file_entry("chain/payload", pid, bad),
        # lies about the content
        "dup": file_entry("dup", pid, bad),
        "huge-pack": file_entry("huge-pack", pid, (0, 10**15, hashlib.sha256(payload).hexdigest())),
        "huge-object": {"area": "root", "path": "huge-object", "type": "file", "mode": 0o644, "size": 10**15,
                        "mtime_ns": 1, "sha256": big_oid, "object": big_oid},
        "wrong-hash": file_entry("wrong-hash", pid, (bad[0], bad[1], hashlib.sha256(b"other").hexdigest())),
        "truncated-pack": file_entry("truncated-pack", pid, (pack_len - 3, 10, "0" * 64)),
        "missing-pack": file_entry("missing-pack", "ab" * 32, (0, 5, "1" * 64)),
        "bad-type": {"area": "root", "path": "fifo", "type": "fifo", "mode": 0o644},
    }
    entries = [
        {"area": "root", "path": "evil-rel", "type": "symlink", "target": "../../canary", "mtime_ns": 1},
        {"area": "root", "path": "evil-abs", "type": "symlink", "target": str(canary), "mtime_ns": 1},
        {"area": "root", "path": "chain", "type": "symlink", "target": "c/up/..", "mtime_ns": 1},
    ] + list(hostile.values()) + [
        file_entry("dup", pid, ok),
        {"area": "root", "path": "c", "type": "dir", "mode": 0o755},
        {"area": "root", "path": "c/up", "type": "symlink", "target": "..", "mtime_ns": 1},
        # honest neighbours that must still be restored
        file_entry("good/file", pid, ok),
        {"area": "root", "path": "good/link", "type": "symlink", "target": "file", "mtime_ns": 1},
        file_entry("setuid.sh", pid, suid, mode=0o4755),
        file_entry("notes.txt", pid, ok),
    ]
    seq = newest_seq(store)
    hostile_name = raw_manifest(store, seq + 1, entries)
    future = raw_manifest(store, seq + 2, [], version=2)  # a newer format this fractfs cannot read

    node.wipe()
    before = _outside(tmp_path, node)
    out = node.run(STATUS)

    assert out["initialized"] is True
    assert out["restore"]["snapshot_id"] == hostile_name.id
    assert out["restore"]["fell_back_from"] == [future.id]
    warnings = "\n".join(out["warnings"])
    assert future.id in warnings
    for what in hostile:
        needle = {"/abs": str(canary / "abs"), "nul": "nul", "area": "'../root'", "scratch-up": "../up",
                  "bad-type": "fifo"}.get(what, what)
        assert needle in warnings, f"no warning names the hostile entry {what!r}:\n{warnings}"
    # nothing outside the root and scratch changed; in particular nothing went through the bundle's link
    assert _outside(tmp_path, node) == before
    assert list(canary.iterdir()) == []
    assert not (Path(node.volume) / "data/blobs/planted").exists()
    for name, target in (("evil-rel", "../../canary"), ("evil-abs", str(canary)), ("chain", "c/up/..")):
        assert os.readlink(node.root / name) == target, name  # a symlink is data: restored verbatim
    for name in ("dup", "huge-pack", "huge-object", "wrong-hash",
                 "truncated-pack", "missing-pack"):
        assert not os.path.lexists(node.root / name), name
    # the honest entries are there, set-uid dropped; the bundle's own files untouched
    assert (node.root / "good/file").read_bytes() == good
    assert (node.root / "good/link").read_bytes() == good
    assert (node.root / "setuid.sh").stat().st_mode & 0o7777 == 0o755
    assert (node.root / "notes.txt").read_bytes() == good
    assert os.readlink(node.root / "bundle-link") == "../../canary"
    assert temp_files(node.root, node.scratch) == []


def _bomb(size: int) -> bytes:
    """A gzip stream of ``size`` bytes of JSON whitespace: about 1 KiB per MiB on the store.

    Built fast by repeating one deflate block: after a sync flush, the block that encodes a MiB of spaces
    only refers back to earlier spaces, so it is valid at any position in the stream.
    """
    chunk = b" " * (1 << 20)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = comp.compress(chunk) + comp.flush(zlib.Z_SYNC_FLUSH)
    block = comp.compress(chunk) + comp.flush(zlib.Z_SYNC_FLUSH)
    tail = comp.flush(zlib.Z_FINISH)
    n = size // len(chunk)
    crc = 0
    for _ in range(n):
        crc = zlib.crc32(chunk, crc)
    return (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + head + block * (n - 1) + tail
            + struct.pack("<II", crc, size & 0xFFFFFFFF))


# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork+exec, and the test process
# itself held the hostile bytes it built
RSS = STATUS.replace("print(json.dumps(out))", """
hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")][0]
out["maxrss_mb"] = int(hwm.split()[1]) // 1024
print(json.dumps(out))""")


def test_manifest_bomb_is_refused_without_exhausting_memory(tmp_path: Path, plain_volume: Path) -> None:
    node = Node(tmp_path / "node", plain_volume, CONFIG)
    _legit_snapshot(node)
    store = PosixStore(plain_volume / "_checkpoint")
    seq = newest_seq(store)
    bomb = _bomb(1 << 30)  # 1 GiB of whitespace in about 1 MiB
    assert len(bomb) < 2 << 20
    name = raw_manifest(store, seq + 1, [], data=bomb)
    node.wipe()
    out = node.run(RSS)
    assert out["restore"]["fell_back_from"] == [name.id]
    assert (node.root / "notes.txt").read_text() == "honest"
    assert out["maxrss_mb"] < 400, f"inflating the bomb took {out['maxrss_mb']} MB"


@pytest.mark.parametrize("doc", [
    {"format": FORMAT_NAME, "version": 1, "seq": 1, "created_ns": "x", "node": 1, "parent": None, "entries": []},
    {"format": FORMAT_NAME, "version": 1, "seq": 999, "created_ns": 1, "node": "n", "parent": None,
     "entries": []},
    {"format": "something-else", "version": 1},
    [],
    {"format": FORMAT_NAME, "version": 1, "seq": 1, "created_ns": 1, "node": "n", "parent": None,
     "entries": {"not": "a list"}},
], ids=["mistyped-header", "seq-differs-from-name", "foreign-format", "not-an-object", "entries-not-a-list"])
def test_malformed_manifest_falls_back_with_a_message(tmp_path: Path, plain_volume: Path, doc: object) -> None:
    node = Node(tmp_path / "node", plain_volume, CONFIG)
    _legit_snapshot(node)
    store = PosixStore(plain_volume / "_checkpoint")
    seq = newest_seq(store)
    if isinstance(doc, dict) and doc.get("seq") == 1:
        doc["seq"] = seq + 1
    import json

    data = gzip.compress(json.dumps(doc).encode(), mtime=0)
    name = SnapName(seq + 1, hashlib.sha256(data).hexdigest())
    store.put(name.key, data)
    node.wipe()
    out = node.run(STATUS)
    assert out["restore"]["fell_back_from"] == [name.id]
    assert any(name.id in w for w in out["warnings"])
    assert (node.root / "notes.txt").read_text() == "honest"


# -- issue 16, point 3: a few bytes on the Volume must not brick a node ---------------------------------------

def _gz_doc(seq: int, entries_json: bytes) -> bytes:
    head = ('{"format": "%s", "version": 1, "seq": %d, "created_ns": 1, "node": "attacker", "parent": null, '
            '"entries": ' % (FORMAT_NAME, seq)).encode()
    return gzip.compress(head + entries_json + b"}", mtime=0)


def test_deeply_nested_manifest_falls_back_to_the_previous_snapshot(tmp_path: Path, plain_volume: Path) -> None:
    # the 521-byte manifest: 100 000 nested arrays raised RecursionError out of init()
    node = Node(tmp_path / "node", plain_volume, CONFIG)
    _legit_snapshot(node)
    store = PosixStore(plain_volume / "_checkpoint")
    data = _gz_doc(newest_seq(store) + 1, b"[" * 100_000 + b"]" * 100_000)
    assert len(data) < 600
    name = raw_manifest(store, newest_seq(store) + 1, [], data=data)
    node.wipe()
    out = node.run(STATUS)
    assert out["initialized"] is True
    assert out["restore"]["fell_back_from"] == [name.id]
    assert any(name.id in w for w in out["warnings"]), out["warnings"]
    with pytest.raises(CorruptCheckpointError, match="nested too deeply"):
        decode_manifest(name, data)
    assert (node.root / "notes.txt").read_text() == "honest"


def test_out_of_range_numbers_refuse_only_their_entry(tmp_path: Path, plain_volume: Path) -> None:
    # the 295-byte manifest had mtime_ns = 10**30: OverflowError, and no honest entry was restored
    node = Node(tmp_path / "node", plain_volume, CONFIG)
    _legit_snapshot(node)
    store = PosixStore(plain_volume / "_checkpoint")
    pid, (ok, bad) = put_pack(store, [b"fine\n", b"pwned\n"])
    hostile = {
        "mtime-huge": file_entry("mtime-huge", pid, bad, mtime_ns=10**30),
        "mtime-negative-huge": file_entry("mtime-negative-huge", pid, bad, mtime_ns=-(10**30)),
        "mode-huge": file_entry("mode-huge", pid, bad, mode=10**30),
        "offset-huge": file_entry("offset-huge", pid, (10**30, bad[1], bad[2])),
        "size-huge": file_entry("size-huge", pid, (bad[0], 10**30, bad[2])),
        "link-mtime": {"area": "root", "path": "link-mtime", "type": "symlink", "target": "good",
                       "mtime_ns": 2**63},
        "dir-mode": {"area": "root", "path": "dir-mode", "type": "dir", "mode": 2**64},
        "long-target": {"area": "root", "path": "long-target", "type": "symlink", "target": "x" * 4097,
                        "mtime_ns": 1},
    }
    entries = list(hostile.values()) + [
        file_entry("good", pid, ok),
        file_entry("old", pid, ok, mtime_ns=-86_400 * 10**9),  # 1969: a legitimate negative mtime
        {"area": "root", "path": "sticky", "type": "dir", "mode": 0o7777},
    ]
    name = raw_manifest(store, newest_seq(store) + 1, entries)
    node.wipe()
    out = node.run(STATUS)
    assert out["initialized"] is True and out["restore"]["snapshot_id"] == name.id
    warnings = "\n".join(out["warnings"])
    for what in hostile:
        assert what in warnings, f"no warning names {what!r}:\n{warnings}"
        assert not os.path.lexists(node.root / what), what
    assert (node.root / "good").read_bytes() == b"fine\n"
    assert (node.root / "old").stat().st_mtime_ns == -86_400 * 10**9
    # set-gid and sticky bits of a directory are not restored (a set-gid dir hands its group to new files)
    assert (node.root / "sticky").stat().st_mode & 0o7777 == 0o777


def test_a_forged_newest_name_does_not_stop_later_checkpoints(tmp_path: Path, plain_volume: Path) -> None:
    # the 7-byte file: every later checkpoint failed with "sequence space exhausted"
    node = Node(tmp_path / "node", plain_volume, CONFIG)
    _legit_snapshot(node)
    store = PosixStore(plain_volume / "_checkpoint")
    honest = newest_seq(store)
    forged = "snapshots/999999999999-" + "0" * 64 + ".json.gz"
    store.put(forged, b"garbage")
    out = node.run("""
        fractfs.init()
        stored = []
        for i in range(3):
            open("notes.txt", "w").write(f"round {i}")
            stored.append(fractfs.sync_now())
        fractfs.shutdown(final_sync=False)
        print(json.dumps({"stored": stored}))
    """)
    assert out["stored"] == [["notes.txt"]] * 3
    from fractfs.snapshot.catalog import list_names

    seqs = [n.seq for n in list_names(store)]
    assert seqs[-4:] == [honest + 1, honest + 2, honest + 3, 999999999999]  # numbered from valid ones
    node.wipe()
    assert node.run(STATUS)["initialized"] is True
    assert (node.root / "notes.txt").read_text() == "round 2"


def test_an_entry_in_a_huge_sparse_pack_reads_only_its_bytes(tmp_path: Path, plain_volume: Path) -> None:
    # the issue: a 5-byte entry at the start of a sparse 1 GiB pack read the whole pack (2 GB RSS)
    node = Node(tmp_path / "node", plain_volume, CONFIG)
    _legit_snapshot(node)
    store = PosixStore(plain_volume / "_checkpoint")
    payload = b"hello"
    pid = "cd" * 32
    path = plain_volume / "_checkpoint" / "packs" / pid[:2] / pid
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(payload)
        f.truncate(1 << 30)
    oid = "ef" * 32  # an object of 1 GiB (sparse) that an entry claims is 5 bytes
    opath = plain_volume / "_checkpoint" / "objects" / oid[:2] / oid
    opath.parent.mkdir(parents=True, exist_ok=True)
    with open(opath, "wb") as f:
        f.truncate(1 << 30)
    zeros = hashlib.sha256(b"\0" * 5).hexdigest()
    sha = hashlib.sha256(payload).hexdigest()
    entries = [
        file_entry("five", pid, (0, 5, sha)),
        file_entry("deep-five", pid, (700 << 20, 5, zeros)),
        file_entry("claims-a-gig", pid, (0, 1 << 30, sha)),
        {"area": "root", "path": "object-lies", "type": "file", "mode": 0o644, "size": 5, "mtime_ns": 1,
         "sha256": oid, "object": oid},
    ]
    raw_manifest(store, newest_seq(store) + 1, entries)
    node.wipe()
    out = node.run(RSS)
    assert out["initialized"] is True
    assert (node.root / "five").read_bytes() == payload
    assert (node.root / "deep-five").read_bytes() == b"\0" * 5
    warnings = "\n".join(out["warnings"])
    assert "claims-a-gig" in warnings and "object-lies" in warnings, warnings
    assert not (node.root / "claims-a-gig").exists() and not (node.root / "object-lies").exists()
    assert out["maxrss_mb"] < 300, f"restore took {out['maxrss_mb']} MB"
    assert temp_files(node.root, node.scratch) == []
    # nothing the size of the pack landed on the node's disk either
    assert sum(p.stat().st_blocks * 512 for p in node.base.rglob("*") if p.is_file()) < 64 << 20


def _time_and_rss(node: Node) -> dict[str, object]:
    out: dict[str, object] = node.run(RSS.replace("st = fractfs.init()", """
import time as _t
_t0 = _t.monotonic()
st = fractfs.init()
_took = _t.monotonic() - _t0""").replace("print(json.dumps(out))", 'out["took"] = _took\nprint(json.dumps(out))'),
        timeout=300)
    return out


@pytest.mark.parametrize("kind", ["dirs", "zeros", "empty-objects"])
def test_a_manifest_with_millions_of_entries_is_refused_before_the_work(tmp_path: Path, plain_volume: Path,
                                                                        kind: str) -> None:
    # the issue: 5 million entries took 34 s and 3.8 GB RSS
    node = Node(tmp_path / "node", plain_volume, CONFIG)
    _legit_snapshot(node)
    store = PosixStore(plain_volume / "_checkpoint")
    seq = newest_seq(store) + 1
    if kind == "dirs":  # 5 million real entries: inflates 100x past its stored size
        entry = b'{"area":"root","path":"d","type":"dir","mode":493},'
        data, why = _gz_doc(seq, b"[" + entry * 5_000_000 + b"0]"), "inflates to more than"
    elif kind == "zeros":  # cheap values: parsed (small), then too many entries
        data, why = _gz_doc(seq, b"[" + b"0," * 5_000_000 + b"0]"), "5000001 entries, over the limit of 1000000"
    else:  # 39 MB of "{}," inside the inflate limit: would parse into 13 million dicts
        data, why = _gz_doc(seq, b"[" + b"{}," * 13_000_000 + b"{}]"), "JSON values, over the limit of 24000000"
    name = raw_manifest(store, seq, [], data=data)
    with pytest.raises(CorruptCheckpointError, match=why):
        decode_manifest(name, data)
    node.wipe()
    out = _time_and_rss(node)
    assert out["initialized"] is True
    assert out["restore"]["fell_back_from"] == [name.id]
    assert any(name.id in w for w in out["warnings"])
    assert (node.root / "notes.txt").read_text() == "honest"
    assert out["maxrss_mb"] < 400, out  # type: ignore[operator]
    assert out["took"] < 60, out  # type: ignore[operator]


def test_a_path_of_320000_components_is_refused_in_linear_time(tmp_path: Path, plain_volume: Path) -> None:
    # the issue: one such path took 314 s (quadratic)
    node = Node(tmp_path / "node", plain_volume, CONFIG)
    _legit_snapshot(node)
    store = PosixStore(plain_volume / "_checkpoint")
    pid, (ok,) = put_pack(store, [b"fine\n"])
    deep = "/".join(["a"] * 320_000)
    entries = [file_entry(deep, pid, ok), file_entry("/".join(["b"] * 3000), pid, ok),
               file_entry("c" * 256, pid, ok), file_entry("good", pid, ok)]
    raw_manifest(store, newest_seq(store) + 1, entries)
    node.wipe()
    out = _time_and_rss(node)
    assert out["initialized"] is True
    warnings = "\n".join(out["warnings"])
    assert warnings.count("path longer than 4096 bytes") == 2, warnings
    assert "path component longer than 255 bytes" in warnings, warnings
    assert (node.root / "good").read_bytes() == b"fine\n"
    assert not (node.root / "a").exists() and not (node.root / "b").exists()
    assert out["took"] < 30, out  # type: ignore[operator]
